"""Using a model: txt2img (and later img2img, ControlNet, animation), samplers by A1111 name, prompts."""
