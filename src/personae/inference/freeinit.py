"""FreeInit for clips, as A1111's AnimateDiff extension runs it: the clip is drawn several times, each time from the
low frequencies of the last one's result and the high frequencies of its first noise.

FreeInit (Wu et al., 2023) starts each pass from

    z = sqrt(abar_T) * x0 + sqrt(1 - abar_T) * noise     (x0: the last pass's latents, T: the last training step)
    x = IFFT(LPF * FFT(z) + (1 - LPF) * FFT(noise))      (over frames, height and width)

where LPF is a low-pass filter in the clip's 3-D frequency space ("butterworth" of order 4, "gaussian", "ideal" or
"box", with spatial and temporal stop frequencies d_s and d_t). As the extension does (and unlike diffusers'
FreeInitMixin, which draws fresh noise for the high frequencies and re-noises in the scaled space of the
scheduler's first sigma, which is wrong for the k-diffusion samplers), the high frequencies are the first pass's own
noise and every pass starts from unit-variance noise that the sampler scales as it scales any: the same formula
for DDIM and for A1111's k-diffusion samplers.

The passes go through the same pipeline call; the noise is caught and replaced where the pipeline makes it: its
`prepare_latents` for a clip from text (with or without ControlNet), its scheduler's `add_noise` for a clip started
from frames (img2img: the new noise is added to the encoded frames at the run's first sigma, as the extension's
img2img does). Only the last pass is decoded.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from personae.inference.sigmas import ModelSigmas

FILTERS = ("butterworth", "gaussian", "ideal", "box")


def low_pass_filter(frames: int, height: int, width: int, method: str = "butterworth", d_s: float = 0.25,
                    d_t: float = 0.25) -> torch.Tensor:
    """The (frames, height, width) low-pass mask, centred (for fftshift-ed spectra), as the extension builds it."""
    if method not in FILTERS:
        raise ValueError(f"unknown FreeInit filter {method!r}")
    if d_s == 0 or d_t == 0:
        return torch.zeros(frames, height, width)
    if method == "box":  # an approximate ideal filter: a box around the centre
        mask = torch.zeros(frames, height, width)
        s, t = round(int(height // 2) * d_s), round(frames // 2 * d_t)
        mask[frames // 2 - t:frames // 2 + t, height // 2 - s:height // 2 + s, width // 2 - s:width // 2 + s] = 1.0
        return mask
    t = (2 * torch.arange(frames, dtype=torch.float64) / frames - 1) * (d_s / d_t)
    h = 2 * torch.arange(height, dtype=torch.float64) / height - 1
    w = 2 * torch.arange(width, dtype=torch.float64) / width - 1
    d_square = t[:, None, None] ** 2 + h[None, :, None] ** 2 + w[None, None, :] ** 2
    if method == "butterworth":
        mask = 1 / (1 + (d_square / d_s ** 2) ** 4)
    elif method == "gaussian":
        mask = torch.exp(-d_square / (2 * d_s ** 2))
    else:  # "ideal", with the extension's (and diffusers') threshold of 2 d_s on the squared distance
        mask = (d_square <= d_s * 2).double()
    return mask.float()


def frequency_mix(low: torch.Tensor, high: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`low`'s frequencies inside the mask and `high`'s outside, over the last three dimensions (frames, height,
    width)."""
    dims = (-3, -2, -1)
    low_f = torch.fft.fftshift(torch.fft.fftn(low.float(), dim=dims), dim=dims)
    high_f = torch.fft.fftshift(torch.fft.fftn(high.float(), dim=dims), dim=dims)
    mixed = low_f * mask + high_f * (1 - mask)
    return torch.fft.ifftn(torch.fft.ifftshift(mixed, dim=dims), dim=dims).real


def reinitialize(x0: torch.Tensor, noise: torch.Tensor, alphabar_last: float, mask: torch.Tensor) -> torch.Tensor:
    """The next pass's unit-variance noise: `x0` diffused to the last training step with `noise`, its low frequencies
    kept and its high ones `noise`'s (all three as (batch, channels, frames, height, width))."""
    diffused = math.sqrt(alphabar_last) * x0.float() + math.sqrt(1 - alphabar_last) * noise.float()
    return frequency_mix(diffused, noise, mask).to(noise.dtype)


def last_alphabar(scheduler) -> float:
    """alphabar at the scheduler's last training step (DDIM's and the k-samplers' configs alike)."""
    sigma = ModelSigmas(dict(scheduler.config)).sigmas[-1].item()
    return 1 / (1 + sigma ** 2)


def free_init_passes(pipe, scheduler, iterations: int, method: str, d_s: float, d_t: float, video: bool,
                     call: Callable[[int, str], object]):
    """Run `call(pass, output_type)` `iterations` times, each pass after the first starting from FreeInit's noise;
    returns the last pass's output (decoded: output_type "pil"). `video`: the call starts from frames (the noise is
    caught in the scheduler's add_noise), else from text (in the pipeline's prepare_latents)."""
    state: dict[str, torch.Tensor] = {}

    def next_noise() -> torch.Tensor | None:
        if "x0" not in state:
            return None
        x0 = state.pop("x0")
        mask = low_pass_filter(*x0.shape[-3:], method=method, d_s=d_s, d_t=d_t).to(x0.device)
        return reinitialize(x0, state["noise"], last_alphabar(scheduler), mask)

    if video:
        add_noise = scheduler.add_noise

        def caught(samples, noise, timesteps):  # diffusers' video-to-video noises (batch, frames, channels, h, w)
            given = next_noise()
            state.setdefault("noise", noise.detach().permute(0, 2, 1, 3, 4).clone())
            if given is not None:
                noise = given.permute(0, 2, 1, 3, 4).to(noise.dtype)
            return add_noise(samples, noise, timesteps)
        scheduler.add_noise = caught
    else:
        prepare = pipe.prepare_latents

        def caught(*args, **kwargs):
            given = next_noise()
            if given is not None:  # unit-variance noise, which prepare_latents scales by the first sigma
                kwargs = {**kwargs, "latents": given}
                if len(args) > 8:
                    args = args[:8]
            latents = prepare(*args, **kwargs)
            state.setdefault("noise", (latents / pipe.scheduler.init_noise_sigma).detach().clone())
            return latents
        pipe.prepare_latents = caught
    try:
        for i in range(iterations):
            last = i == iterations - 1
            out = call(i, "pil" if last else "latent")
            if not last:
                state["x0"] = out.frames
        return out
    finally:
        if video:
            scheduler.add_noise = add_noise  # what it was (a clip from a picture blends there first)
        else:
            del pipe.prepare_latents
