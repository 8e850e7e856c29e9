"""A clip from one picture, as A1111's AnimateDiff extension draws it in img2img ("img2gif").

Given one init picture (not frames), frame i does not start from the picture itself but from

    alpha_i * z_first + beta_i * z_last + (1 - alpha_i - beta_i) * noise_i

(z: the encoded pictures; alpha_i = max(0, 1 - i**latent_power / latent_scale); beta_i the same for an optional last
frame, counted back from the end; where alpha + beta > 1 both are scaled to sum to 1), and then the denoising
strength's noise is added as for any img2img. With the extension's defaults (power 1, scale 32) frame 0 is the
picture and frame 15 keeps 53 % of it, so the motion module is free to move what the picture shows.

The blend is made where diffusers' video-to-video pipeline adds noise to the encoded frames (its scheduler's
`add_noise`, which it calls with (batch, frames, channels, height, width)); the pipeline is given the picture for
every frame and, with a last frame, that picture as the last. The blend's noise is drawn once from the clip's
generator, so FreeInit's passes start from the same blended latents, as the extension's do.
"""

from __future__ import annotations

import torch
from diffusers.utils.torch_utils import randn_tensor


def fade(frames: int, power: float, scale: float) -> torch.Tensor:
    """max(0, 1 - i**power / scale) for i = 0 .. frames - 1: how much of the picture frame i starts from."""
    i = torch.arange(frames, dtype=torch.float64)
    return (1 - i ** power / scale).clamp(min=0).float()


def weights(frames: int, power: float, scale: float, last: tuple[float, float] | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, beta): each frame's share of the first picture and of the last one (zeros without a last frame),
    scaled to sum to at most 1 as the extension does."""
    alpha = fade(frames, power, scale)
    if last is None:
        return alpha, torch.zeros(frames)
    beta = fade(frames, *last).flip(0)
    total = alpha + beta
    over = total > 1
    alpha[over], beta[over] = alpha[over] / total[over], beta[over] / total[over]
    return alpha, beta


def start_from_picture(scheduler, alpha: torch.Tensor, beta: torch.Tensor, generator: torch.Generator) -> None:
    """Make `scheduler`'s add_noise blend the encoded frames (the picture for every frame, the last picture as the
    last one when `beta` has weight) with noise by `alpha` and `beta` before adding the strength's noise."""
    add_noise = scheduler.add_noise
    blended: dict[str, torch.Tensor] = {}

    def add_noise_to_blend(samples, noise, timesteps):
        if "start" not in blended:  # once: every FreeInit pass encodes the same pictures
            a, b = (w.to(samples.device, samples.dtype).view(1, -1, 1, 1, 1) for w in (alpha, beta))
            first, last = samples[:, :1], samples[:, -1:]
            eps = randn_tensor(samples.shape, generator=generator, device=samples.device, dtype=samples.dtype)
            blended["start"] = a * first + b * last + (1 - a - b) * eps
        return add_noise(blended["start"], noise, timesteps)
    scheduler.add_noise = add_noise_to_blend
