"""Each image's random numbers, as AUTOMATIC1111 draws them: its "Random number generator source" (CPU, GPU,
NV) and its "Eta noise seed delta" (ENSD).

A1111 gives every image a generator of its own, seeded with the image's seed: the first draw is the starting
noise, later draws the noise an ancestral or SDE sampler adds at each step (its ImageRNG). With ENSD set, the
step noise comes instead from a generator seeded with seed + ENSD (the "ENSD: 31337" of many shared pictures).
Where the numbers come from:

    CPU   torch's CPU generator (personae's default; the same numbers on every machine)
    GPU   what an NVIDIA GPU's torch.randn draws, A1111's default: most A1111 pictures carry no "RNG" key and
          were drawn this way. personae computes those numbers on the CPU (below), so they reproduce anywhere.
    NV    A1111's name for the same numbers computed off the GPU; personae draws GPU and NV alike.

CUDA's torch.randn runs Philox4x32-10 (Salmon et al. 2011) with the element's index as the subsequence and one
counter step per call, then Box-Muller (curand's float version: sin of the pair's angle). That holds while the
tensor fits in the threads the GPU runs at once (torch gives each element a thread of its own up to then: every
size up to 512 x 512 on any recent NVIDIA GPU, larger ones on larger GPUs; beyond, each GPU splits the work its
own way), which is also what A1111's NV source assumes.
tests/test_rng.py checks Philox against Random123's published answers and the whole draw against a CUDA print.

Diffusers draws every number through `randn_tensor`; `route(pipe)` sends the calls that carry an ImageGenerator
to it, in the pipeline's module, its scheduler's and the VAE's, and leaves every other call as it was.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from functools import wraps
from typing import Literal

import numpy as np
import torch

RngSource = Literal["CPU", "GPU", "NV"]
SOURCES: tuple[str, ...] = ("CPU", "GPU", "NV")

_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)  # Philox4x32's multipliers
_W0, _W1 = np.uint32(0x9E3779B9), np.uint32(0xBB67AE85)  # its Weyl key increments
_LOW = np.uint64(0xFFFFFFFF)


def philox4x32_10(counter: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Philox4x32 with 10 rounds: counter (4, n) and key (2, n) uint32 -> (4, n) uint32."""
    c = counter.astype(np.uint32).copy()
    k = key.astype(np.uint32).copy()
    for round_ in range(10):
        if round_:
            k[0] += _W0
            k[1] += _W1
        p0 = c[0].astype(np.uint64) * _M0
        p1 = c[2].astype(np.uint64) * _M1
        c = np.stack([(p1 >> np.uint64(32)).astype(np.uint32) ^ c[1] ^ k[0], (p1 & _LOW).astype(np.uint32),
                      (p0 >> np.uint64(32)).astype(np.uint32) ^ c[3] ^ k[1], (p0 & _LOW).astype(np.uint32)])
    return c


def _box_muller(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """curand's Box-Muller for floats, its first output (the sine one)."""
    inv = float(np.float32(2.3283064e-10))  # curand's CURAND_2POW32_INV and _2PI, as float constants
    inv_2pi = float(np.float32(2.3283064e-10) * np.float32(6.2831855))
    u = x.astype(np.float64) * inv + inv / 2
    v = y.astype(np.float64) * inv_2pi + inv_2pi / 2
    return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32)


def gpu_randn(seed: int, offset: int, shape: Sequence[int]) -> torch.Tensor:
    """The float32 numbers an NVIDIA GPU's torch.randn(shape) gives as call number `offset` (0 first) after
    torch.manual_seed(seed)."""
    n = int(np.prod(shape))
    counter = np.zeros((4, n), dtype=np.uint32)
    counter[0] = offset & 0xFFFFFFFF
    counter[1] = offset >> 32
    counter[2] = np.arange(n, dtype=np.uint32)
    seed %= 2**64
    key = np.empty((2, n), dtype=np.uint32)
    key[0], key[1] = seed & 0xFFFFFFFF, seed >> 32
    out = philox4x32_10(counter, key)
    return torch.from_numpy(_box_muller(out[0], out[1]).reshape(tuple(shape)))


class ImageGenerator(torch.Generator):
    """One image's generator: a CPU torch.Generator seeded with the image's seed (what any code that does not go
    through `randn` draws from), and `randn`, which draws as A1111 would for the image: from `source`, the first
    draw from the seed, later ones from seed + `ensd` when that is set. Make them with `image_generator`."""

    source: str
    image_seed: int
    ensd: int
    draws: int
    first: Callable[[tuple[int, ...]], torch.Tensor] | None
    _after: torch.Generator | None

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        if self.draws == 0 and self.first is not None:  # a starting noise of its own (A1111's variation seeds):
            self._draw(shape)  # the stream still moves past the draw it replaces, as A1111's does
            return self.first(tuple(shape))
        return self._draw(shape)

    def _draw(self, shape: Sequence[int]) -> torch.Tensor:
        first, self.draws = self.draws == 0, self.draws + 1
        if self.source == "CPU":
            if first or not self.ensd:
                return torch.randn(tuple(shape), generator=self)
            if self._after is None:
                self._after = torch.Generator("cpu").manual_seed((self.image_seed + self.ensd) % 2**64)
            return torch.randn(tuple(shape), generator=self._after)
        if first or not self.ensd:
            return gpu_randn(self.image_seed, self.draws - 1, shape)
        return gpu_randn(self.image_seed + self.ensd, self.draws - 2, shape)


def image_generator(seed: int, source: str = "CPU", ensd: int = 0,
                    first: Callable[[tuple[int, ...]], torch.Tensor] | None = None) -> ImageGenerator:
    """`first(shape)`: the starting noise, when it is not simply the seed's first draw."""
    if source not in SOURCES:
        raise ValueError(f"unknown RNG source {source!r}; one of {', '.join(SOURCES)}")
    g = ImageGenerator("cpu")
    g.manual_seed(seed % 2**64)
    g.source, g.image_seed, g.ensd, g.draws, g.first, g._after = source, int(seed), int(ensd), 0, first, None
    return g


def image_generators(seeds: Sequence[int], source: str = "CPU", ensd: int = 0) -> list[ImageGenerator]:
    return [image_generator(s, source, ensd) for s in seeds]


def _aside(g: ImageGenerator, shape: tuple[int, ...]) -> torch.Tensor:
    """A draw that leaves the image's stream alone: a fresh CPU generator of its seed."""
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(g.image_seed % 2**64))


def _routed(original, aside: bool):
    @wraps(original)
    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None, **kwargs):
        many = isinstance(generator, list)
        gens = generator if many else [generator]
        if not gens or not all(isinstance(g, ImageGenerator) for g in gens):
            return original(shape, generator=generator, device=device, dtype=dtype, layout=layout, **kwargs)
        shape = tuple(shape)
        draw = (lambda g, s: _aside(g, s)) if aside else (lambda g, s: g.randn(s))
        # as A1111: float32 numbers, then the model's number format
        noise = torch.cat([draw(g, (1, *shape[1:])) for g in gens]) if many else draw(gens[0], shape)
        return noise.to(device=device or "cpu", dtype=dtype or torch.float32)

    randn_tensor.personae_routed = True
    return randn_tensor


VAE_MODULE = "diffusers.models.autoencoders.vae"


def route(*objects) -> None:
    """Send the random draws of these diffusers objects (pipelines, schedulers) to the image generators they are
    given. The VAE's sample of an encoded picture (img2img, inpainting, the hires fix's redraw of an upscaled
    picture) draws aside, from a fresh generator of the seed: A1111 encodes without touching the image's
    generator, whose first draw is the img2img noise. Idempotent; calls without an ImageGenerator are untouched."""
    for name in {type(o).__module__ for o in objects if o is not None} | {VAE_MODULE}:
        module = sys.modules.get(name)
        current = getattr(module, "randn_tensor", None)
        if current is not None and not getattr(current, "personae_routed", False):
            module.randn_tensor = _routed(current, aside=name == VAE_MODULE)
