"""The SDE samplers' noise (DPM++ SDE, DPM++ 2M SDE, DPM++ 3M SDE), drawn as A1111 draws it.

k-diffusion's BrownianTreeNoiseSampler (diffusers ships the same class, used here), which A1111 gives these
samplers with the images' seeds ("batch determinism"): one torchsde Brownian tree per image, seeded with the
image's seed, between the schedule's lowest and highest sigma; the noise of a step from sigma to sigma_next is the
tree's increment over that interval divided by its square root. So a picture's noise does not depend on the batch
it was drawn in.

torchsde draws its normals with a generator on the device of the latents. A1111 on an NVIDIA GPU therefore gets
CUDA's numbers here, whatever its RNG setting says; with `source` GPU or NV the tree's draws are CUDA's numbers
computed on the CPU (inference/rng.gpu_randn), with CPU torch's own CPU generator (ComfyUI's choice).
"""

from __future__ import annotations

import contextvars
import warnings
from collections.abc import Sequence
from contextlib import contextmanager

import torch
from diffusers.schedulers.scheduling_dpmsolver_sde import BrownianTreeNoiseSampler
from torchsde._brownian import brownian_interval

from personae.inference.rng import gpu_randn

_SOURCE: contextvars.ContextVar[str] = contextvars.ContextVar("personae_brownian_source", default="CPU")


def _route() -> None:
    """torchsde's one normal draw (a generator of `seed`, then randn) gives CUDA's numbers while a tree of a GPU
    source draws; every other caller's draws are untouched. Idempotent."""
    original = brownian_interval._randn
    if getattr(original, "personae_routed", False):
        return

    def _randn(size, dtype, device, seed):
        if _SOURCE.get() == "CPU":
            return original(size, dtype, device, seed)
        return gpu_randn(int(seed), 0, size).to(device=device, dtype=dtype)

    _randn.personae_routed = True
    brownian_interval._randn = _randn


@contextmanager
def _drawing(source: str):
    token = _SOURCE.set(source)
    try:
        yield
    finally:
        _SOURCE.reset(token)


class BrownianNoise:
    """noise(sigma, sigma_next): unit-variance noise for a step, one Brownian tree per image of `x`'s batch:
    diffusers' BrownianTreeNoiseSampler (k-diffusion's, which A1111 uses), drawn from `source`."""

    def __init__(self, x: torch.Tensor, sigma_min, sigma_max, seeds: Sequence[int], source: str = "CPU"):
        _route()
        self.source = source
        with _drawing(source):
            self.sampler = BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=[int(s) for s in seeds])

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        with _drawing(self.source), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Should have", UserWarning)  # torchsde: its ends held in float64
            return self.sampler(sigma, sigma_next)
