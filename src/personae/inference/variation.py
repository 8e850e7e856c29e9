"""A1111's variation seeds: the starting noise of a seed bent toward another seed's ("Variation seed",
"Variation strength"), so a batch explores pictures near one you like.

    --seed 7 --subseed 100 --subseed-strength 0.2      # "Seed: 7, Variation seed: 100, Variation seed strength: 0.2"

As A1111's create_random_tensors, from the image generators' source (inference/rng.py: CPU, or the GPU's numbers):
noise of the seed and of the variation seed, each (4, H/8, W/8), joined by A1111's slerp, which normalises along dim
1 of that 3-d tensor (the rows), and falls back to a plain mix (its weights as A1111 writes them) when the two are
nearly parallel. With a variation strength, every image of the run keeps the seed and the variation seed counts up
(A1111's all_seeds / all_subseeds), so strength 0 is the seed's picture and 1 the variation seed's. "Resize seed
from" draws the noise at another size and centres it in the seed's noise at this size (A1111's seed_resize_from_w /
_h).
"""

from __future__ import annotations

from functools import partial

import torch

from personae.inference.rng import ImageGenerator, image_generator


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's spherical interpolation from `low` (val 0) to `high` (val 1), norms along dim 1."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)  # A1111's own weights in this branch
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


def seed_noise(seed: int, shape: tuple[int, ...], source: str = "CPU") -> torch.Tensor:
    """The first noise a seed's generator draws (inference/rng.py: CPU, or the GPU's numbers)."""
    return image_generator(seed, source).randn(shape)


def _resized(seed: int, noise: torch.Tensor, shape: tuple[int, int, int], source: str) -> torch.Tensor:
    """A1111's "Resize seed from": noise drawn at another size, put in the middle of the seed's noise at this size
    (cropped to it when larger), so a picture keeps its composition at a new width or height."""
    target = seed_noise(seed, shape, source)
    dx, dy = (shape[2] - noise.shape[2]) // 2, (shape[1] - noise.shape[1]) // 2
    w = noise.shape[2] if dx >= 0 else noise.shape[2] + 2 * dx
    h = noise.shape[1] if dy >= 0 else noise.shape[1] + 2 * dy
    tx, ty, dx, dy = max(dx, 0), max(dy, 0), max(-dx, 0), max(-dy, 0)
    target[:, ty:ty + h, tx:tx + w] = noise[:, dy:dy + h, dx:dx + w]
    return target


def start_latents(seeds: list[int], subseeds: list[int | None], strength: float, shape: tuple[int, int, int],
                  drawn_at: tuple[int, int, int] | None = None, source: str = "CPU") -> torch.Tensor:
    """(n, *shape) starting latents as A1111's create_random_tensors makes them: each seed's noise (drawn at
    `drawn_at` and centred when the seed is resized from another size) bent toward its variation seed's, from
    the RNG source `source`."""
    noise_shape = drawn_at or shape
    out = []
    for seed, subseed in zip(seeds, subseeds):
        noise = seed_noise(seed, noise_shape, source)
        if strength and subseed is not None:
            noise = slerp(strength, noise, seed_noise(subseed, noise_shape, source))
        out.append(_resized(seed, noise, shape, source) if noise_shape != shape else noise)
    return torch.stack(out)


def variation_generators(seeds: list[int], subseeds: list[int | None], strength: float, source: str, ensd: int,
                         drawn_at: tuple[int, int] | None = None) -> list[ImageGenerator]:
    """Each image's generator (inference/rng.py) with its starting noise bent toward its variation seed's and / or
    drawn at `drawn_at` (height, width in latent cells) and centred, at whatever size the pass draws: A1111 makes
    the base pass's and the hires fix's starting noise so alike."""
    def noise(seed: int, subseed: int | None, shape: tuple[int, ...]) -> torch.Tensor:
        drawn = (shape[1], *drawn_at) if drawn_at else None
        return start_latents([seed], [subseed], strength, shape[1:], drawn, source).reshape(shape)

    return [image_generator(s, source, ensd, partial(noise, s, sub)) for s, sub in zip(seeds, subseeds)]
