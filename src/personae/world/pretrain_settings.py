"""Settings of `personae world pretrain`: defaults are the full run that made the shipped model.

    personae world pretrain ./world --set unet.steps=2000 --set seed=1

Two phases: the VAE alone on world images, then the UNet and the text encoder together on
the VAE's latents of a fixed, seeded set of images. Same settings and thread count, same
weights (unless `time_budget_minutes` cuts the UNet phase short, which it reports).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from personae.config.base import Strict


class VaePhase(Strict):
    steps: int = Field(6000, ge=1)  # optimizer steps of the VAE phase (about 9 minutes at batch 16)
    batch_size: int = Field(16, ge=1)  # at equal compute, batch 16 reconstructs shapes better than 64 (78 % vs 69 %)
    learning_rate: float = Field(2e-3, gt=0)
    lr_scheduler: Literal["constant", "cosine"] = "cosine"
    # weight of the KL term (summed over the latent) next to the pixel MSE (a mean over pixels). SD's 1e-6
    # sits next to a pixel *sum*; 1e-5 here kept the posterior noise at a third of the latents' spread, and
    # the decoder blurred 10 px shapes into blobs; 1e-7 halved the reconstruction error.
    kl_weight: float = Field(1e-7, ge=0)


class UnetPhase(Strict):
    steps: int = Field(5500, ge=1)  # optimizer steps of the UNet + text encoder phase (about 42 minutes, 1 thread)
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(1e-3, gt=0)  # UNet and text encoder alike
    lr_scheduler: Literal["constant", "constant_with_warmup", "cosine"] = "cosine"
    warmup_steps: int = Field(200, ge=0)
    weight_decay: float = Field(1e-2, ge=0)
    max_grad_norm: float = Field(1.0, ge=0)  # 0 disables clipping
    caption_dropout: float = Field(0.1, ge=0, le=1)  # share of examples trained with the empty caption (for CFG)
    ema_decay: float = Field(0.999, ge=0, lt=1)  # EMA of the weights that are saved and evaluated; 0: none


class EvalSection(Strict):
    every: int = Field(1000, ge=0)  # evaluate every N UNet steps (and always at the end); 0: only at the end
    samples: int = Field(64, ge=16)  # images per evaluation, spread over the 16 fixed prompts
    steps: int = Field(25, ge=1)  # DDIM steps
    cfg: float = Field(4.0, ge=1)  # classifier-free guidance scale


class WorldPretrain(Strict):
    version: int = 1
    seed: int = 0  # weights, data, noise: everything random derives from it
    dataset_size: int = Field(16384, ge=16)  # world images generated, encoded once and trained on
    threads: int = Field(1, ge=1)  # torch threads; results are bit-reproducible at a fixed count
    time_budget_minutes: float | None = Field(60, gt=0)  # stop the UNet phase when the whole run reaches this
    vae: VaePhase = VaePhase()
    unet: UnetPhase = UnetPhase()
    eval: EvalSection = EvalSection()
