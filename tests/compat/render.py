"""Render every export the way an older (or newer) stack loads it: plain diffusers, no personae.

Run by tests/test_old_stack.py with the main stack's python and with the old stack's:
    python render.py CASES.json OUT.npz
CASES.json: [{"name", "model" (folder or single file), "config" (folder, for single files),
"loras": [file or folder], "embeddings": [[file, token or null]], "prompt", optionally "controlnet" (folder) with
"control_image" (the control map, a PNG), and "size" (px, default 64)}]. Each case is
rendered with DDIM, 3 steps, CFG 5, seed 0, fp32; OUT.npz holds one image per case and
OUT.json what each stack reported (versions, text-encoder weights missing on load).
"""

import json
import os
import sys
import warnings

import numpy as np
import torch
from PIL import Image

warnings.filterwarnings("ignore")


def load(case):
    from diffusers import ControlNetModel, DDIMScheduler, StableDiffusionControlNetPipeline, StableDiffusionPipeline
    from transformers import CLIPTextModel

    missing = []
    kwargs = dict(safety_checker=None, requires_safety_checker=False, torch_dtype=torch.float32)
    if case.get("controlnet"):
        controlnet = ControlNetModel.from_pretrained(case["controlnet"], torch_dtype=torch.float32)
        pipe = StableDiffusionControlNetPipeline.from_pretrained(case["model"], controlnet=controlnet,
                                                                 local_files_only=True, **kwargs)
    elif case["model"].endswith(".safetensors"):
        pipe = StableDiffusionPipeline.from_single_file(case["model"], config=case["config"], local_files_only=True,
                                                        **kwargs)
    else:
        pipe = StableDiffusionPipeline.from_pretrained(case["model"], local_files_only=True, **kwargs)
        _, info = CLIPTextModel.from_pretrained(case["model"] + "/text_encoder", output_loading_info=True)
        missing = sorted(info["missing_keys"])
    for lora in case.get("loras", []):
        # offline, older diffusers wants the folder and the file's name apart
        folder, name = (lora, "pytorch_lora_weights.safetensors") if os.path.isdir(lora) else os.path.split(lora)
        pipe.load_lora_weights(folder, weight_name=name)
    for path, token in case.get("embeddings", []):
        pipe.load_textual_inversion(path, token=token)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe, missing


def header_configs(case):
    """Build a peft LoraConfig from each part of a diffusers-layout LoRA's adapter header (older peft rejects
    fields it does not know): "ok" or the error."""
    from peft import LoraConfig
    from safetensors import safe_open

    results = []
    for lora in case.get("loras", []):
        path = os.path.join(lora, "pytorch_lora_weights.safetensors") if os.path.isdir(lora) else lora
        with safe_open(path, framework="pt") as fh:
            header = (fh.metadata() or {}).get("lora_adapter_metadata")
        if not header:
            continue
        parts = {}
        for key, value in json.loads(header).items():
            part, _, field = key.partition(".")
            parts.setdefault(part, {})[field] = value
        for part, fields in parts.items():
            try:
                LoraConfig(**fields)
                results.append(f"{part}: ok")
            except Exception as exc:  # noqa: BLE001 - reported to the test
                results.append(f"{part}: {type(exc).__name__}: {exc}")
    return results


def main(cases_file, out_file):
    import diffusers
    import peft
    import transformers

    torch.set_num_threads(1)
    cases = json.loads(open(cases_file).read())
    images, report = {}, {"versions": {"diffusers": diffusers.__version__, "transformers": transformers.__version__,
                                       "peft": peft.__version__, "torch": torch.__version__}, "missing": {}, "headers": {}}
    for case in cases:
        pipe, missing = load(case)
        report["missing"][case["name"]] = missing[:5]
        report["headers"][case["name"]] = header_configs(case)
        control = {"image": Image.open(case["control_image"]).convert("RGB")} if case.get("controlnet") else {}
        side = case.get("size", 64)
        with torch.no_grad():
            images[case["name"]] = pipe(case["prompt"], negative_prompt="", num_inference_steps=3, guidance_scale=5.0,
                                        height=side, width=side, generator=torch.Generator().manual_seed(0),
                                        output_type="np", **control).images[0]
    np.savez(out_file, **images)
    open(out_file[:-4] + ".json", "w").write(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
