"""--lowvram with the CPU standing for the GPU, for the tests of the offload switches."""

import torch


def streamed_on_the_cpu(*modules) -> None:
    """Let --lowvram's streamed modules run with the CPU standing for the GPU. diffusers' sequential offload names
    the device "cpu:0", and torch gives `Parameter.to("cpu:0")` of a CPU weight back as a plain tensor copy (a GPU
    weight moved to "cuda:0" stays a Parameter), which accelerate's next offload then fails on (in
    set_module_tensor_to_device). The same device by its plain name, "cpu", leaves the weights Parameters."""
    from accelerate.hooks import AlignDevicesHook, SequentialHook

    for module in modules:
        for part in module.modules():
            hook = getattr(part, "_hf_hook", None)
            for one in hook.hooks if isinstance(hook, SequentialHook) else [hook]:
                if isinstance(one, AlignDevicesHook) and one.execution_device is not None:
                    assert torch.device(one.execution_device) in (torch.device("cpu"), torch.device("cpu:0"))
                    one.execution_device = torch.device("cpu")
