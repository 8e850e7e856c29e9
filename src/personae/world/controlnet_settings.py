"""Settings of `personae world controlnet OUT`: defaults are the run that made the shipped world ControlNet.

    personae world controlnet ./world-controlnet --set steps=300 --set seed=1

A ControlNet copied from the world model's UNet (zero convolutions, as the ControlNet paper
starts) learns to put the prompt's shape where a control map (canny edges or a silhouette)
says, from rendered pairs at any position and size. Same settings and thread count, same weights.
"""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from personae.config.base import Strict
from personae.config.fields import setting


class ControlEvalSection(Strict):
    every: int = setting(500, "measure every N steps (and always at the end); 0: only at the end", ge=0)
    controls: int = setting(16, "held-out controls per control type in the measurements during training", ge=1)
    steps: int = setting(20, "sampling steps of the measurement images (generate's sampler, DPM++ 2M Karras)", ge=1)
    cfg: float = setting(7.0, "CFG scale of the measurement images (generate's default)", ge=1)


class WorldControlNet(Strict):
    version: int = setting(1, "settings file version")
    seed: int = setting(0, "data, noise and the conditioning layers' weights: everything random derives from it")
    threads: int = setting(1, "torch threads (the command sets them); weights are bit-reproducible at a fixed count",
                           ge=1)
    base: str = setting("world", "the model whose UNet the ControlNet copies: `world` (the shipped model) or a "
                                 "`personae world pretrain` folder")
    dataset_size: int = setting(16384, "rendered (control, picture) pairs, encoded once and trained on", ge=16)
    control_types: list[Literal["canny", "silhouette"]] = setting(
        ["canny", "silhouette"], "control maps trained, each pair drawn with one of them at random")
    box_range: tuple[float, float] = setting((9.0, 26.0), "the shape's box side in px, drawn log-uniform in this range")
    # 3 entries: two stride-2 stages take the 32 px control map to the UNet's 8x8 latents
    conditioning_channels: tuple[int, int, int] = setting(
        (16, 32, 64), "channels of the conditioning embedding (control map -> latent-sized features)")
    steps: int = setting(1500, "optimizer steps (the whole run: 7 minutes of CPU on one thread)", ge=1)
    batch_size: int = setting(32, "pairs per step", ge=1)
    learning_rate: float = setting(1e-3, "the ControlNet's learning rate", gt=0)
    lr_scheduler: Literal["constant", "constant_with_warmup", "cosine"] = setting("cosine", "learning-rate schedule")
    warmup_steps: int = setting(100, "steps of linear warm-up", ge=0)
    max_grad_norm: float = setting(1.0, "clip the gradient norm to this (0: no clipping)", ge=0)
    caption_dropout: float = setting(0.1, "share of pairs trained with the empty caption (for CFG)", ge=0, le=1)
    time_budget_minutes: float | None = setting(30, "stop training when the run reaches this", gt=0)
    eval: ControlEvalSection = setting(ControlEvalSection(), "the measurements during training")

    @field_validator("box_range")
    @classmethod
    def _box_range(cls, value):
        if not 4 <= value[0] <= value[1] <= 28:
            raise ValueError(f"box_range must be two sides with 4 <= low <= high <= 28 px, got {list(value)}")
        return value
