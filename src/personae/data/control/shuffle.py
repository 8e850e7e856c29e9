"""`shuffle`: the photo's content scattered by a smooth random warp, the map ControlNet 1.1's shuffle model
(control_v11e_sd15_shuffle) reads to carry a picture's colours and textures, not its layout, into a new one.

As A1111's ControlNet extension draws it (its "shuffle" preprocessor, lllyasviel's ContentShuffleDetector): two
noise fields, each a grid of uniform random numbers one per 256 px (plus a border of one) enlarged bicubically and
cut to the picture, stretched to 0..1; one gives every pixel the column it is taken from, the other its row, read
bilinearly. The random numbers are numpy's legacy generator, seeded as the extension seeds it before each unit's
preprocessor: (seed + variation seed) & 0xFFFFFFFF, where a variation seed left at -1 counts as the seed itself
(A1111's set_numpy_seed). So `--seed 7` draws with numpy seed 14, and a PNG gives its map back from its seed.
The extension runs it on the photo scaled to "Processor Res" without the padding other preprocessors get.
Our own code, written from that description.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from personae.data.control.base import ControlType

CELL = 256  # pixels per random number of the warp


def numpy_seed(seed: int, subseed: int = -1) -> int:
    """The seed the extension gives numpy before a unit's preprocessor runs, for a picture's seed and variation
    seed (-1: none was given)."""
    return (seed + (seed if subseed < 0 else subseed)) & 0xFFFFFFFF


def _noise_disk(rng: np.random.RandomState, height: int, width: int) -> np.ndarray:
    """A smooth field of 0..1 over height x width: a coarse uniform grid enlarged bicubically, its middle cut out."""
    import cv2

    coarse = rng.uniform(low=0, high=1, size=(height // CELL + 2, width // CELL + 2, 1))
    field = cv2.resize(coarse, (width + 2 * CELL, height + 2 * CELL), interpolation=cv2.INTER_CUBIC)
    field = field[CELL:CELL + height, CELL:CELL + width]
    field = field - field.min()
    return field / field.max()


def content_shuffle(image: Image.Image, options: dict[str, float], where: str, seed: int = 0) -> Image.Image:
    """The map of `image` for numpy seed `seed` (see numpy_seed)."""
    import cv2

    pixels = np.asarray(image.convert("RGB"))
    height, width = pixels.shape[:2]
    rng = np.random.RandomState(seed)  # the state np.random.seed(seed) gives the global generator
    columns = _noise_disk(rng, height, width) * float(width - 1)
    rows = _noise_disk(rng, height, width) * float(height - 1)
    flow = np.stack([columns, rows], axis=2).astype(np.float32)
    return Image.fromarray(cv2.remap(pixels, flow, None, cv2.INTER_LINEAR))


SHUFFLE = ControlType("shuffle", content_shuffle,
                      "the photo's content scattered by a random warp drawn from the seed (ControlNet 1.1 shuffle)",
                      a1111_module="shuffle", default_model="lllyasviel/control_v11e_sd15_shuffle",
                      seeded=True, padded=False)
