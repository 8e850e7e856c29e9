"""The training step in named parts, shared by every method's loop (loop.py) and world pretraining.

    gen = seeded(seed, step, tag)                      # every draw of a step comes from (seed, step)
    batch = draw_batch(gen, posteriors, captions, scaling, num_train_timesteps, noise_offset)
    loss = diffusion_loss(unet, noise_scheduler, batch.part(s), embeddings, min_snr_gamma)
    optimizer_step(loss, optimizer, params, max_grad_norm, accelerator)
    after_step(lr_schedule, ema, params)

- batch: the random inputs of one optimizer step, drawn for the whole global batch (every process
  slices its part, so the process count does not change what is computed);
- loss: the denoising objective (epsilon or v-prediction as the scheduler says, min-SNR weighting);
- step: gradients to weights (backward, clipping, the optimizer), then the schedule and EMA.
Saving (checkpoint, exports, record) is saving.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_snr

from personae.errors import UserError


@dataclass
class Batch:
    latents: torch.Tensor  # clean latents z, scaled by the VAE's scaling factor
    noise: torch.Tensor
    timesteps: torch.Tensor
    captions: list[str] = field(default_factory=list)  # empty when the caller encodes its own (world pretraining)
    masks: torch.Tensor | None = None  # (n, 1, h, w) loss weights at the latents' size (data.masked_loss)

    def part(self, rows: slice) -> Batch:
        masks = self.masks[rows] if self.masks is not None else None
        return Batch(self.latents[rows], self.noise[rows], self.timesteps[rows], self.captions[rows], masks)

    def to(self, device) -> Batch:
        masks = self.masks.to(device) if self.masks is not None else None
        return Batch(self.latents.to(device), self.noise.to(device), self.timesteps.to(device), self.captions, masks)


def seeded(*parts: int) -> torch.Generator:
    """A CPU generator seeded from the parts (seed, step, tag...): the same parts, the same draws."""
    return torch.Generator("cpu").manual_seed(int(np.random.SeedSequence(list(parts)).generate_state(1)[0]))


def draw_noise(gen: torch.Generator, shape: tuple[int, ...], num_train_timesteps: int,
               noise_offset: float = 0.0, min_timestep: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise (plus a per-channel offset, the "noise offset" trick) and a timestep per example, uniform over
    min_timestep .. num_train_timesteps - 1 (a lower num_train_timesteps leaves the noisiest steps out)."""
    noise = torch.randn(shape, generator=gen)
    if noise_offset:
        noise = noise + noise_offset * torch.randn((shape[0], shape[1], 1, 1), generator=gen)
    timesteps = torch.randint(min_timestep, num_train_timesteps, (shape[0],), generator=gen)
    return noise, timesteps


def sample_latents(params: list[torch.Tensor], draws: torch.Tensor, scaling: float) -> torch.Tensor:
    """z = scaling * (mean + std * eps) for stacked VAE posterior parameters (mean and log-variance, as
    `latent_dist.parameters` holds them), with eps drawn by the caller instead of inside diffusers'
    DiagonalGaussianDistribution.sample."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    posterior = DiagonalGaussianDistribution(torch.stack(params))
    return (posterior.mean + posterior.std * draws) * scaling


def draw_batch(gen: torch.Generator, posteriors: list[torch.Tensor], captions: list[str], scaling: float,
               num_train_timesteps: int, noise_offset: float = 0.0, min_timestep: int = 0) -> Batch:
    """A batch from VAE posteriors (one per example): a latent sample, noise and timesteps, drawn in that order."""
    channels, *size = posteriors[0].shape
    shape = (len(posteriors), channels // 2, *size)
    eps = torch.randn(shape, generator=gen)
    noise, timesteps = draw_noise(gen, shape, num_train_timesteps, noise_offset, min_timestep)
    return Batch(sample_latents(posteriors, eps, scaling), noise, timesteps, list(captions))


def per_example_mse(prediction: torch.Tensor, target: torch.Tensor, masks: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """Each example's mean squared error; with `masks` ((n, 1, h, w) weights in [0, 1]) the mean over the masked
    pixels: sum(mask * error) / sum(mask) over pixels and channels, so a pixel outside the mask adds nothing and
    a small subject weighs as much as a large one."""
    error = F.mse_loss(prediction.float(), target.float(), reduction="none")
    if masks is None:
        return error.mean(dim=(1, 2, 3))
    weights = masks.float().expand_as(error)
    return (error * weights).sum(dim=(1, 2, 3)) / weights.sum(dim=(1, 2, 3)).clamp_min(1e-8)


def diffusion_loss(unet, noise_scheduler, batch: Batch, embeddings: torch.Tensor,
                   min_snr_gamma: float | None = None) -> torch.Tensor:
    """Mean squared error of the UNet's prediction on the noised latents: noise for epsilon models, the
    velocity for v-prediction ones; with the batch's masks, over the masked pixels only; with `min_snr_gamma`,
    each example weighted by min(SNR, gamma) / SNR (/ (SNR + 1) for v-prediction), as in the min-SNR paper and
    diffusers' scripts."""
    v_prediction = noise_scheduler.config.prediction_type == "v_prediction"
    noisy = noise_scheduler.add_noise(batch.latents, batch.noise, batch.timesteps)
    target = noise_scheduler.get_velocity(batch.latents, batch.noise, batch.timesteps) if v_prediction else batch.noise
    prediction = unet(noisy, batch.timesteps, encoder_hidden_states=embeddings).sample
    per_example = per_example_mse(prediction, target, batch.masks)
    if min_snr_gamma:
        snr = compute_snr(noise_scheduler, batch.timesteps)
        per_example = per_example * snr.clamp(max=min_snr_gamma) / (snr + 1 if v_prediction else snr)
    return per_example.mean()


def optimizer_step(loss: torch.Tensor, optimizer, params: list[torch.Tensor], max_grad_norm: float = 0.0,
                   accelerator=None, frozen: list[torch.Tensor] = ()) -> None:
    """Backward, clip the gradient norm (0: no clipping), step, clear. Under an accelerator's gradient
    accumulation, clipping waits for the micro-batch that syncs and the wrapped optimizer skips the others.
    `frozen` parameters (a phase that does not train them) lose their gradient before clipping, so the
    optimizer skips them whole: no update, no weight decay, no moment change."""
    if accelerator is None:
        loss.backward()
    else:
        accelerator.backward(loss)
    for p in frozen:
        p.grad = None
    if max_grad_norm and (accelerator is None or accelerator.sync_gradients):
        clip = accelerator.clip_grad_norm_ if accelerator is not None else torch.nn.utils.clip_grad_norm_
        clip(params, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def after_step(lr_schedule, ema, params: list[torch.Tensor]) -> None:
    """Once per optimizer step, after it: the learning-rate schedule moves on and the EMA takes the new weights."""
    lr_schedule.step()
    if ema is not None:
        ema.step(params)


def check_finite(loss: float, step: int, last_checkpoint: Callable[[], str | None], fix: str) -> None:
    """A loss that is NaN or infinite ends the run, saying what is left to go back to (`last_checkpoint()`)."""
    if math.isfinite(loss):
        return
    last = last_checkpoint()
    kept = f"The last good checkpoint is {last}." if last else "No checkpoint was written."
    raise UserError(f"The loss became {loss} at step {step}: training diverged. {kept}", fix)


def check_weights(params: list[torch.Tensor], step: int, last_checkpoint: Callable[[], str | None], fix: str) -> None:
    """Trained weights that hold NaN or infinity end the run before anything is saved or sampled from them (the
    loss of the step that broke them was still finite)."""
    with torch.no_grad():
        if all(bool(torch.isfinite(p).all()) for p in params):
            return
    check_finite(float("nan"), step, last_checkpoint, fix)
