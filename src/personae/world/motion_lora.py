"""The LoRA that lets the frozen world UNet read the motion words, trained with the motion modules.

    add_motion_lora(pipe.unet, WorldMotion().lora, seed=0)      # before the motion UNet is built from it
    write_motion_lora(model, out / LORA_FILE, WorldMotion().lora, steps=1500, base="world")

The motion words of a clip's caption are not world tokens: the frozen UNet's noise prediction hardly changes with
them (docs/world.md, "World motion"), so motion modules alone cannot tell "moving left" from "moving right". A peft
LoRA on the image UNet's cross-attention key and value projections (AnimateDiff v3's "domain adapter" place) learns,
at a lower rate than the motion modules, to carry what the caption says into the UNet. It is added to the image
UNet by full module name (the motion modules' attention layers have the same short names), carried into the motion
UNet by `inference/animate.py: motion_unet`, and written as a kohya / A1111 LoRA that `personae animate --lora`
loads the same way.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from personae.methods.lora_files import kohya_metadata, peft_to_kohya, write_kohya
from personae.methods.lora_layers import layer_alphas, targeted
from personae.world.motion_settings import MotionLoraSection


def add_motion_lora(unet, c: MotionLoraSection, seed: int) -> list[str]:
    """peft's LoRA on the image UNet's layers `c.target_modules` names (full names: no motion module yet), its
    down matrices drawn from `seed`, its up matrices at zero (the untrained LoRA changes nothing). Returns the
    adapted modules' names."""
    modules = sorted(targeted(unet, c.target_modules))
    if not modules:
        raise ValueError(f"lora.target_modules {c.target_modules} name no layer of the UNet")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        unet.add_adapter(LoraConfig(r=c.rank, lora_alpha=c.alpha, target_modules=modules,
                                    init_lora_weights="gaussian"))
    return modules


def lora_parameters(model) -> list[torch.nn.Parameter]:
    """The LoRA's weights in a (motion) UNet, in a fixed order."""
    return [p for name, p in model.named_parameters() if ".lora_A." in name or ".lora_B." in name]


def write_motion_lora(model, path: Path, c: MotionLoraSection, steps: int, base: str) -> Path:
    """The LoRA in `model` (the motion UNet, whose image layers keep the image UNet's names) as a kohya file."""
    state = get_peft_model_state_dict(model)
    tensors = peft_to_kohya(state, None, layer_alphas(model))
    meta = kohya_metadata(rank=c.rank, alpha=c.alpha, steps=steps, base_model=Path(base).name, trigger="",
                          name="world-motion-lora", te_trained=False,
                          extra={"ss_training_comment": "trained with personae world motion, beside its motion "
                                                        "adapter: load both (--motion-adapter DIR --lora FILE)"})
    return write_kohya(path, tensors, meta)
