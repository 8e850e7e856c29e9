"""Settings of `personae world zero-snr OUT`: defaults are the run measured in docs/world.md.

    personae world zero-snr ./world-zero-snr --set steps=300 --set seed=1

The world model's UNet, fine-tuned to predict the velocity (v-prediction) on its noise schedule rescaled to zero
terminal SNR, sampled from the last timestep (trailing spacing): the fix of Lin et al. 2023, "Common Diffusion Noise
Schedules and Sample Steps are Flawed". SD-1.5's schedule keeps 7 % of the clean image at its last step (sqrt of
alpha-bar; the world's motion schedule 4 %), so a model reads the picture's layout from the starting noise and the
prompt cannot move it; a motion adapter learns one direction on this model and not on the shipped one
(docs/world.md, "Teaching the UNet to read the motion words"). Same settings and thread count, same weights.
"""

from __future__ import annotations

from typing import Literal

from personae.config.base import Strict
from personae.config.fields import setting

# what the fine-tune changes in the model's scheduler config; every sampler personae builds reads it from there
ZERO_SNR_SCHEDULE = {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}


class ZeroSnrEvalSection(Strict):
    samples: int = setting(64, "pictures drawn and read by the checker at the end, spread over the 16 fixed prompts",
                           ge=16)
    steps: int = setting(25, "DDIM steps of the pictures", ge=1)
    cfg: float = setting(4.0, "CFG scale of the pictures (the world's evaluation setting)", ge=1)


class WorldZeroSnr(Strict):
    version: int = setting(1, "settings file version")
    seed: int = setting(0, "pictures, noise and timesteps: everything random derives from it")
    threads: int = setting(2, "torch threads (the command sets them); weights are bit-reproducible at a fixed count",
                           ge=1)
    base: str = setting("world", "the model fine-tuned: `world` (the shipped model) or a `personae world pretrain` "
                                 "folder (its UNet learns; the VAE, text encoder and tokenizer are kept)")
    dataset_size: int = setting(4096, "world pictures (other than the pretraining's), encoded once and trained on",
                                ge=16)
    steps: int = setting(1500, "optimizer steps (the whole run: about 10 minutes on 2 threads)", ge=1)
    batch_size: int = setting(64, "latents per step", ge=1)
    learning_rate: float = setting(3e-4, "the UNet's learning rate", gt=0)
    lr_scheduler: Literal["constant", "constant_with_warmup", "cosine"] = setting("constant", "learning-rate schedule")
    warmup_steps: int = setting(0, "steps of linear warm-up", ge=0)
    max_grad_norm: float = setting(1.0, "clip the gradient norm to this (0: no clipping)", ge=0)
    caption_dropout: float = setting(0.1, "share of pictures trained with the empty caption (for CFG)", ge=0, le=1)
    time_budget_minutes: float | None = setting(30, "stop training when the run reaches this", gt=0)
    eval: ZeroSnrEvalSection = setting(ZeroSnrEvalSection(), "the measurement at the end")
