"""Settings of `personae world pretrain`: defaults are the full run that made the shipped model.

    personae world pretrain ./world --set unet.steps=2000 --set seed=1

Two phases: the VAE alone on world images, then the UNet and the text encoder together on
the VAE's latents of a fixed, seeded set of images. Same settings and thread count, same
weights (unless `time_budget_minutes` cuts the UNet phase short, which it reports).
"""

from __future__ import annotations

from typing import Literal

from personae.config.base import Strict
from personae.config.fields import setting


class VaePhase(Strict):
    steps: int = setting(6000, "optimizer steps of the VAE phase (about 9 minutes at batch 16)", ge=1)
    # at equal compute, batch 16 reconstructs shapes better than 64 (78 % vs 69 %)
    batch_size: int = setting(16, "images per VAE step", ge=1)
    learning_rate: float = setting(2e-3, "the VAE's learning rate", gt=0)
    lr_scheduler: Literal["constant", "cosine"] = setting("cosine", "the VAE's learning-rate schedule")
    # weight of the KL term (summed over the latent) next to the pixel MSE (a mean over pixels). SD's 1e-6
    # sits next to a pixel *sum*; 1e-5 here kept the posterior noise at a third of the latents' spread, and
    # the decoder blurred 10 px shapes into blobs; 1e-7 halved the reconstruction error.
    kl_weight: float = setting(1e-7, "weight of the KL term next to the pixel MSE", ge=0)


class UnetPhase(Strict):
    steps: int = setting(5500, "optimizer steps of the UNet + text encoder phase (about 42 minutes, 1 thread)", ge=1)
    batch_size: int = setting(64, "latents per UNet step", ge=1)
    learning_rate: float = setting(1e-3, "learning rate of the UNet and the text encoder alike", gt=0)
    lr_scheduler: Literal["constant", "constant_with_warmup", "cosine"] = setting("cosine", "learning-rate schedule")
    warmup_steps: int = setting(200, "steps of linear warm-up", ge=0)
    weight_decay: float = setting(1e-2, "AdamW weight decay", ge=0)
    max_grad_norm: float = setting(1.0, "clip the gradient norm to this (0: no clipping)", ge=0)
    caption_dropout: float = setting(0.1, "share of examples trained with the empty caption (for CFG)", ge=0, le=1)
    ema_decay: float = setting(0.999, "EMA of the weights that are saved and evaluated (0: none)", ge=0, lt=1)


class EvalSection(Strict):
    every: int = setting(1000, "evaluate every N UNet steps (and always at the end); 0: only at the end", ge=0)
    samples: int = setting(64, "images per evaluation, spread over the 16 fixed prompts", ge=16)
    steps: int = setting(25, "DDIM steps of the evaluation images", ge=1)
    cfg: float = setting(4.0, "CFG scale of the evaluation images", ge=1)


class WorldPretrain(Strict):
    version: int = setting(1, "settings file version")
    seed: int = setting(0, "weights, data, noise: everything random derives from it")
    dataset_size: int = setting(16384, "world images generated, encoded once and trained on", ge=16)
    threads: int = setting(1, "torch threads (the command sets them); weights are bit-reproducible at a fixed count",
                           ge=1)
    time_budget_minutes: float | None = setting(60, "stop the UNet phase when the whole run reaches this", gt=0)
    vae: VaePhase = setting(VaePhase(), "the VAE phase")
    unet: UnetPhase = setting(UnetPhase(), "the UNet + text encoder phase")
    eval: EvalSection = setting(EvalSection(), "the evaluations during the UNet phase")
