"""Render AnimateDiff clips the way plain diffusers (no personae) loads a motion adapter folder, a kohya LoRA and an
A1111 embedding, in whichever stack runs it.

Run by tests/test_old_stack.py with the main stack's python and with the old stack's:
    python animate.py CASES.json OUT.npz
CASES.json: [{"name", "model" (folder), "adapter" (folder), "loras": [file], "embeddings": [[file, token]],
"prompt", "seed", "steps", "frames", optional "context" and "stride" for FreeNoise windows}]. Each clip: DDIM on
AnimateDiff's linear schedule (as diffusers' AnimateDiff docs set it), CFG 4, the model's native size, fp32.
OUT.npz holds one (frames, h, w, 3) array per case, OUT.json the stack's versions.
"""

import json
import os
import sys
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")


def load(case):
    from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter

    adapter = MotionAdapter.from_pretrained(case["adapter"], torch_dtype=torch.float32)
    pipe = AnimateDiffPipeline.from_pretrained(case["model"], motion_adapter=adapter, torch_dtype=torch.float32,
                                               local_files_only=True)
    for lora in case.get("loras", []):
        folder, name = os.path.split(lora)  # offline, older diffusers wants the folder and the file's name apart
        pipe.load_lora_weights(folder, weight_name=name)
    for path, token in case.get("embeddings", []):
        pipe.load_textual_inversion(path, token=token)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, beta_schedule="linear", clip_sample=False,
                                               timestep_spacing="linspace", steps_offset=1)
    if case.get("context"):  # longer clips in overlapping windows (FreeNoise), as `personae animate` draws them
        pipe.enable_free_noise(context_length=case["context"], context_stride=case["stride"])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main(cases_file, out_file):
    import diffusers
    import peft
    import transformers

    torch.set_num_threads(1)
    clips = {}
    for case in json.loads(open(cases_file).read()):
        pipe = load(case)
        with torch.no_grad():
            out = pipe(case["prompt"], negative_prompt="", num_frames=case["frames"], guidance_scale=4.0,
                       num_inference_steps=case["steps"], generator=torch.Generator().manual_seed(case["seed"]),
                       output_type="np")
        clips[case["name"]] = np.asarray(out.frames[0])
    np.savez(out_file, **clips)
    versions = {"diffusers": diffusers.__version__, "transformers": transformers.__version__,
                "peft": peft.__version__, "torch": torch.__version__}
    open(out_file[:-4] + ".json", "w").write(json.dumps({"versions": versions}, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
