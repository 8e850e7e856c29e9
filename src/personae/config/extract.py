"""Settings of `personae extract` (kohya's networks/extract_lora_from_models.py), declared once: the CLI options and
their `--help` are generated from these fields (cli/options.py)."""

from __future__ import annotations

from typing import Literal

from personae.config.base import Strict
from personae.config.fields import setting


class ExtractSettings(Strict):
    version: int = setting(1, "settings file version", cli=False)
    base: str = setting(description="the model TUNED was trained from: a diffusers folder, a single file or a "
                                    "downloaded hub id (the LoRA is TUNED - BASE)", metavar="MODEL")
    rank: int = setting(4, "the LoRA's rank (kohya --dim): the attention, projection and feed-forward layers, and "
                           "the text encoder's", ge=1)
    conv_rank: int | None = setting(None, "also the resnets' 3x3 convolutions (and their 1x1 shortcuts and time "
                                          "projections), the 3x3 ones at this rank: a LoCon (kohya --conv_dim; "
                                          "default: none)", ge=1)
    clamp_quantile: float = setting(0.99, "each layer's factors are clamped to this quantile of their values, "
                                          "cutting rare outliers (kohya --clamp_quantile; 1: no clamping)",
                                    gt=0.0, le=1.0)
    min_diff: float = setting(0.01, "text encoders whose weights differ by at most this are taken as the same, and "
                                    "the LoRA covers the UNet alone (kohya --min_diff)", ge=0.0)
    save_precision: Literal["fp32", "fp16", "bf16"] = setting("fp32", "the file's tensor type (kohya "
                                                                      "--save_precision; fp16 halves the file)")
    device: Literal["cpu", "cuda"] = setting("cpu", "where the SVDs run (kohya --device)")
    allow_pickle: bool = setting(False, "read .ckpt / .bin models (only their tensors, never code)")
