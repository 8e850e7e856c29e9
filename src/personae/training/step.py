"""The training step in named parts, shared by every method's loop (loop.py) and world pretraining.

    gen = seeded(seed, step, tag)                      # every draw of a step comes from (seed, step)
    batch = draw_batch(gen, posteriors, captions, scaling, num_train_timesteps, noise_offset, min_timestep,
                       multires_iterations, multires_discount, ip_noise_gamma, ip_noise_random)
    loss = diffusion_loss(unet, noise_scheduler, batch.part(s), embeddings, min_snr_gamma, LossShape(...))
    optimizer_step(loss, optimizer, params, max_grad_norm, accelerator)
    after_step(lr_schedule, ema, params)

- batch: the random inputs of one optimizer step, drawn for the whole global batch (every process
  slices its part, so the process count does not change what is computed): latents, noise (offset,
  multi-resolution), timesteps, input perturbation;
- loss: the denoising objective (epsilon or v-prediction as the scheduler says; l2, l1, huber or
  smooth L1; min-SNR, debiased and v-as-epsilon weighting, each as kohya's sd-scripts computes it);
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
    perturbation: torch.Tensor | None = None  # input perturbation: noised into the input, not in the target

    def part(self, rows: slice) -> Batch:
        def cut(x):
            return x[rows] if x is not None else None

        return Batch(self.latents[rows], self.noise[rows], self.timesteps[rows], self.captions[rows], cut(self.masks),
                     cut(self.perturbation))

    def to(self, device) -> Batch:
        def move(x):
            return x.to(device) if x is not None else None

        return Batch(self.latents.to(device), self.noise.to(device), self.timesteps.to(device), self.captions,
                     move(self.masks), move(self.perturbation))


@dataclass(frozen=True)
class LossShape:
    """How prediction errors become the loss, beyond min-SNR (kohya's --loss_type, --huber_c, --huber_schedule,
    --debiased_estimation_loss, --scale_v_pred_loss_like_noise_pred); the default is the plain squared error."""
    loss_type: str = "l2"  # l2 | l1 | huber | smooth_l1
    huber_c: float = 0.1
    huber_schedule: str = "snr"  # snr | exponential | constant
    debiased_estimation: bool = False
    scale_v_pred_like_noise: bool = False
    # the SNR per timestep the weights read; None: the noise scheduler's (kohya keeps the schedule's SNR from before
    # --zero_terminal_snr rescales it, so no weight divides by the last step's zero)
    snr: torch.Tensor | None = None


def seeded(*parts: int) -> torch.Generator:
    """A CPU generator seeded from the parts (seed, step, tag...): the same parts, the same draws."""
    return torch.Generator("cpu").manual_seed(int(np.random.SeedSequence(list(parts)).generate_state(1)[0]))


def draw_noise(gen: torch.Generator, shape: tuple[int, ...], num_train_timesteps: int,
               noise_offset: float = 0.0, min_timestep: int = 0, multires_iterations: int = 0,
               multires_discount: float = 0.3, *, offset_random: bool = False, adaptive_noise_scale: float = 0.0,
               latents: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise (plus a per-channel offset, the "noise offset" trick) and a timestep per example, uniform over
    min_timestep .. num_train_timesteps - 1 (a lower num_train_timesteps leaves the noisiest steps out); then,
    with `multires_iterations`, the coarser noise layers of `pyramid_noise` (drawn after the timesteps, so the
    timesteps are those of the same seed without them).

    The offset as kohya's apply_noise_offset makes it: with `offset_random` its strength is drawn uniform in
    [0, noise_offset) once per batch (--noise_offset_random_strength); with `adaptive_noise_scale` each example's
    channel adds that times the absolute mean of its (scaled) `latents` over the image, the sum clamped at 0
    (--adaptive_noise_scale)."""
    noise = torch.randn(shape, generator=gen)
    if noise_offset:
        offset = float(torch.rand((), generator=gen)) * noise_offset if offset_random else noise_offset
        if adaptive_noise_scale and latents is not None:
            offset = (offset + adaptive_noise_scale * latents.mean(dim=(2, 3), keepdim=True).abs()).clamp_min(0.0)
        noise = noise + offset * torch.randn((shape[0], shape[1], 1, 1), generator=gen)
    timesteps = torch.randint(min_timestep, num_train_timesteps, (shape[0],), generator=gen)
    if multires_iterations:
        noise = pyramid_noise(gen, noise, multires_iterations, multires_discount)
    return noise, timesteps


def pyramid_noise(gen: torch.Generator, noise: torch.Tensor, iterations: int, discount: float) -> torch.Tensor:
    """Multi-resolution noise as kohya's pyramid_noise_like adds it: layer i is noise drawn at the size divided by
    r**i (r uniform in [2, 4) per layer), upsampled bilinearly and weighted discount**i, until a side reaches 1;
    the sum is scaled back to unit standard deviation over the batch."""
    _, _, height, width = noise.shape
    noise = noise.clone()
    for i in range(iterations):
        r = float(torch.rand((), generator=gen)) * 2 + 2
        h, w = max(1, int(height / r**i)), max(1, int(width / r**i))
        coarse = torch.randn((*noise.shape[:2], h, w), generator=gen)
        noise += F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False) * discount**i
        if h == 1 or w == 1:
            break
    return noise / noise.std()


def sample_latents(params: list[torch.Tensor], draws: torch.Tensor, scaling: float) -> torch.Tensor:
    """z = scaling * (mean + std * eps) for stacked VAE posterior parameters (mean and log-variance, as
    `latent_dist.parameters` holds them), with eps drawn by the caller instead of inside diffusers'
    DiagonalGaussianDistribution.sample."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    posterior = DiagonalGaussianDistribution(torch.stack(params))
    return (posterior.mean + posterior.std * draws) * scaling


def draw_batch(gen: torch.Generator, posteriors: list[torch.Tensor], captions: list[str], scaling: float,
               num_train_timesteps: int, noise_offset: float = 0.0, min_timestep: int = 0,
               multires_iterations: int = 0, multires_discount: float = 0.3, ip_noise_gamma: float = 0.0,
               ip_noise_random: bool = False, offset_random: bool = False, adaptive_noise_scale: float = 0.0) -> Batch:
    """A batch from VAE posteriors (one per example): a latent sample, noise and timesteps, drawn in that order
    (`draw_noise`'s offset options see the latents); then the input perturbation (kohya's --ip_noise_gamma: gamma x
    fresh noise, its strength drawn uniform in [0, gamma) once per batch with `ip_noise_random`)."""
    channels, *size = posteriors[0].shape
    shape = (len(posteriors), channels // 2, *size)
    eps = torch.randn(shape, generator=gen)
    latents = sample_latents(posteriors, eps, scaling)
    noise, timesteps = draw_noise(gen, shape, num_train_timesteps, noise_offset, min_timestep, multires_iterations,
                                  multires_discount, offset_random=offset_random,
                                  adaptive_noise_scale=adaptive_noise_scale, latents=latents)
    perturbation = None
    if ip_noise_gamma:
        strength = float(torch.rand((), generator=gen)) * ip_noise_gamma if ip_noise_random else ip_noise_gamma
        perturbation = strength * torch.randn(shape, generator=gen)
    return Batch(latents, noise, timesteps, list(captions), perturbation=perturbation)


def per_example_loss(prediction: torch.Tensor, target: torch.Tensor, masks: torch.Tensor | None = None,
                     loss_type: str = "l2", huber_c: torch.Tensor | None = None) -> torch.Tensor:
    """Each example's mean error: squared (l2), absolute (l1), or kohya's pseudo-Huber forms with a threshold per
    example (huber: 2c(sqrt(d^2 + c^2) - c), smooth_l1: 2(sqrt(d^2 + c^2) - c)). With `masks` ((n, 1, h, w)
    weights in [0, 1]) the mean over the masked pixels: sum(mask * error) / sum(mask) over pixels and channels,
    so a pixel outside the mask adds nothing and a small subject weighs as much as a large one."""
    difference = prediction.float() - target.float()
    if loss_type == "l2":
        error = difference**2
    elif loss_type == "l1":
        error = difference.abs()
    else:
        c = huber_c.float().to(difference.device).view(-1, *([1] * (difference.ndim - 1)))
        error = torch.sqrt(difference**2 + c**2) - c
        error = 2 * c * error if loss_type == "huber" else 2 * error
    dims = tuple(range(1, error.ndim))
    if masks is None:
        return error.mean(dim=dims)
    weights = masks.float().expand_as(error)
    return (error * weights).sum(dim=dims) / weights.sum(dim=dims).clamp_min(1e-8)


def huber_threshold(noise_scheduler, timesteps: torch.Tensor, huber_c: float, schedule: str) -> torch.Tensor:
    """kohya's huber_c per timestep: constant; exponential (exp(-alpha t), alpha = -ln(c) / T: 1 at t = 0, c at
    t = T); snr ((1 - c) / (1 + sigma_t)^2 + c with sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t): near 1 where
    the latents are nearly clean, c where they are nearly noise)."""
    t = timesteps.cpu()
    if schedule == "constant":
        return torch.full(t.shape, huber_c)
    if schedule == "exponential":
        alpha = -math.log(huber_c) / noise_scheduler.config.num_train_timesteps
        return torch.exp(-alpha * t.float())
    alphas_cumprod = noise_scheduler.alphas_cumprod.cpu()[t].float()
    sigmas = ((1.0 - alphas_cumprod) / alphas_cumprod) ** 0.5
    return (1 - huber_c) / (1 + sigmas) ** 2 + huber_c


def diffusion_loss(unet, noise_scheduler, batch: Batch, embeddings: torch.Tensor,
                   min_snr_gamma: float | None = None, shape: LossShape = LossShape()) -> torch.Tensor:
    """The UNet's prediction error on the noised latents: against the noise for epsilon models, the velocity for
    v-prediction ones; with the batch's masks, over the masked pixels only; the batch's input perturbation goes
    into the noised input only. Then, per example and in kohya's order: `min_snr_gamma` weights by
    min(SNR, gamma) / SNR (/ (SNR + 1) for v-prediction), as in the min-SNR paper and diffusers' scripts;
    `shape.scale_v_pred_like_noise` by SNR / (SNR + 1); `shape.debiased_estimation` by 1 / sqrt(SNR)
    (1 / (SNR + 1) for v-prediction), SNR capped at 1000 for both, as kohya caps it."""
    v_prediction = noise_scheduler.config.prediction_type == "v_prediction"
    noise_in = batch.noise if batch.perturbation is None else batch.noise + batch.perturbation
    noisy = noise_scheduler.add_noise(batch.latents, noise_in, batch.timesteps)
    target = noise_scheduler.get_velocity(batch.latents, batch.noise, batch.timesteps) if v_prediction else batch.noise
    prediction = unet(noisy, batch.timesteps, encoder_hidden_states=embeddings).sample.float()  # the loss in fp32
    huber_c = None
    if shape.loss_type in ("huber", "smooth_l1"):
        huber_c = huber_threshold(noise_scheduler, batch.timesteps, shape.huber_c, shape.huber_schedule)
    per_example = per_example_loss(prediction, target, batch.masks, shape.loss_type, huber_c)
    if min_snr_gamma or shape.debiased_estimation or (shape.scale_v_pred_like_noise and v_prediction):
        snr = (compute_snr(noise_scheduler, batch.timesteps) if shape.snr is None
               else shape.snr[batch.timesteps.cpu()]).to(per_example.device)
        if min_snr_gamma:
            per_example = per_example * snr.clamp(max=min_snr_gamma) / (snr + 1 if v_prediction else snr)
        capped = snr.clamp(max=1000)
        if shape.scale_v_pred_like_noise and v_prediction:
            per_example = per_example * capped / (capped + 1)
        if shape.debiased_estimation:
            per_example = per_example / (capped + 1 if v_prediction else capped.sqrt())
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
