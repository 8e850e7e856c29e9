"""Settings of `personae merge` (A1111's Checkpoint Merger, and kohya's merge_lora), declared once: the CLI options
and their `--help` are generated from these fields (cli/options.py)."""

from __future__ import annotations

from typing import Literal

from personae.config.addons import LoraRef
from personae.config.base import Strict
from personae.config.fields import setting


class MergeSettings(Strict):
    version: int = setting(1, "settings file version", cli=False)
    method: Literal["weighted-sum", "add-difference", "none"] = setting(
        "weighted-sum", '"Interpolation Method": weighted-sum A x (1 - M) + B x M; add-difference A + (B - C) x M; '
                        "none: A alone (to bake in a VAE or LoRAs, or to save it in fp16)")
    multiplier: float = setting(0.3, '"Multiplier (M)": how much of B (or of B - C) goes in; 0 gives A',
                                ge=-10.0, le=10.0)
    loras: list[LoraRef] = setting([], "a LoRA baked into the result at a strength (kohya's merge_lora, after the "
                                       "models are merged); any file --lora reads; repeatable", flag="--lora")
    vae: str | None = setting(None, '"Bake in VAE": this VAE replaces the result\'s (a diffusers AutoencoderKL folder '
                                    "or a single-file VAE, A1111's models/VAE)", metavar="FILE_OR_FOLDER")
    half: bool = setting(False, '"Save as float16": the result\'s weights in fp16 (half the size)')
    allow_pickle: bool = setting(False, "read .ckpt / .pt / .bin models, LoRAs and VAEs (only their tensors, never "
                                        "code)")
