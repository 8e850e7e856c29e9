"""Metrics that always work offline: distance to the nearest reference image."""

from __future__ import annotations

import numpy as np
from PIL import Image


def as_array(image: Image.Image, size: tuple[int, int] | None = None) -> np.ndarray:
    """RGB float array in [0, 1], resized to `size` when given."""
    image = image.convert("RGB")
    if size and image.size != size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.float64) / 255.0


def nearest_distances(images: list[Image.Image], references: list[Image.Image]) -> list[float]:
    """Per image: mean absolute pixel difference (0..1) to the closest reference."""
    size = references[0].size
    refs = np.stack([as_array(r, size) for r in references])
    return [float(np.abs(refs - as_array(img, size)[None]).mean(axis=(1, 2, 3)).min()) for img in images]
