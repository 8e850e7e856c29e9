"""Read a shapes-world image back: background, shape colour, shape, size and position, by exact methods.

    attrs = check(Image.open("out/00000.png"))
    agreement(attrs, parse_prompt("a red circle on a blue background, close-up"))  # {"background": True, ...}

No learned classifier, no torch:
  1. background: the median of the border pixels, nearest background colour;
  2. shape colour: the palette colour c for which every pixel is best explained as
     background + a * (c - background) with a in [0, 1] (least squares), which is how the
     generator blends; the fitted a is the shape's coverage map;
  3. shape, size, position: for each shape, a template is rendered by the generator's own
     code with the box side and centre that give the same area and centroid as the
     coverage map (box filtering keeps both exactly), and the shape with the highest soft
     IoU wins; held-out shapes are templates too. Size is the nearest size class to that
     box side (on a log scale), position the template's centre.

The drawing style (`read_style`, docs/world.md "A drawing style") is a reading of its own, so `check` stays
exactly what it was on the world model's flat pictures:
  4. the same coverage map is fitted twice: by the flat templates (step 3), and by the templates kept only on
     the rows of the banded style (vocab.STYLES), with the bands' phase taken from the map's row profile; the
     style is the one whose best template explains the map better (soft IoU), and on a banded picture shape,
     size and position are the banded fit's.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image

from personae.world.scene import (
    BACKGROUNDS,
    BAND_HEIGHT,
    BAND_PERIOD,
    COLOURS,
    SHAPES,
    SIDE,
    SIZES,
    Attributes,
    bands,
    coverage,
)

NONE = "none"  # what `check` reports for the shape, size and colour of an image with no shape in it
MIN_AREA = 3.0  # pixels of coverage below which there is no shape


@lru_cache(maxsize=None)
def _moments(shape: str) -> tuple[float, float, float]:
    """(area as a share of the box, centroid x and y as a share of the half side) of a shape, measured
    on a large rendering."""
    side = 256
    alpha = coverage(shape, side * 0.75, (side / 2, side / 2), side)
    area = float(alpha.sum())
    ys, xs = np.mgrid[0:side, 0:side] + 0.5
    half = side * 0.75 / 2
    cx = float((alpha * xs).sum() / area - side / 2) / half
    cy = float((alpha * ys).sum() / area - side / 2) / half
    return area / (side * 0.75) ** 2, cx, cy


def _nearest(rgb: np.ndarray, names) -> str:
    return min(names, key=lambda n: float(np.sum((np.asarray(COLOURS[n], dtype=np.float64) - rgb) ** 2)))


def _pixels(image) -> np.ndarray:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image = image.convert("RGB")
    if image.size != (SIDE, SIDE):
        image = image.resize((SIDE, SIDE), Image.BOX)
    return np.asarray(image, dtype=np.float64)


def _fit_colour(px: np.ndarray, bg: np.ndarray, background: str) -> tuple[str, np.ndarray]:
    """The shape colour that explains the image best as a blend with the background, and its coverage map."""
    diff = px - bg
    best = None
    for name in COLOURS:
        if name == background:
            continue
        direction = np.asarray(COLOURS[name], dtype=np.float64) - bg
        alpha = np.clip((diff @ direction) / float(direction @ direction), 0.0, 1.0)
        residual = float(np.sum((diff - alpha[..., None] * direction) ** 2))
        if best is None or residual < best[0]:
            best = (residual, name, alpha)
    return best[1], best[2]


def _near_shape(alpha: np.ndarray) -> np.ndarray:
    """Coverage kept only within one pixel of where it is at least a half, so noise far away weighs nothing."""
    core = alpha >= 0.5
    grown = core.copy()
    grown[1:] |= core[:-1]
    grown[:-1] |= core[1:]
    grown[:, 1:] |= grown[:, :-1].copy()
    grown[:, :-1] |= grown[:, 1:].copy()
    return np.where(grown, alpha, 0.0)


def fit_shape(alpha: np.ndarray) -> tuple[str, float, tuple[float, float], float]:
    """(shape, box side in pixels, centre in pixels, soft IoU) of the best-matching template."""
    area = float(alpha.sum())
    ys, xs = np.mgrid[0:SIDE, 0:SIDE] + 0.5
    mx, my = float((alpha * xs).sum() / area), float((alpha * ys).sum() / area)
    best = (NONE, 0.0, (SIDE / 2, SIDE / 2), -1.0)
    for shape in SHAPES:
        share, cx, cy = _moments(shape)
        box = math.sqrt(area / share)
        centre = (mx - cx * box / 2, my - cy * box / 2)
        template = coverage(shape, box, centre, SIDE)
        iou = float(np.minimum(alpha, template).sum() / max(np.maximum(alpha, template).sum(), 1e-9))
        if iou > best[3]:
            best = (shape, box, centre, iou)
    return best


def size_of(box: float) -> str:
    return min(SIZES, key=lambda s: abs(math.log(box / SIZES[s])))


def _coverage_map(image) -> tuple[str, str, np.ndarray]:
    """(background, shape colour, coverage map) of steps 1 and 2."""
    px = _pixels(image)
    # 1. background: the border
    border = np.concatenate([px[0], px[-1], px[1:-1, 0], px[1:-1, -1]])
    background = _nearest(np.median(border, axis=0), BACKGROUNDS)
    bg = np.asarray(COLOURS[background], dtype=np.float64)
    # 2. shape colour and coverage
    colour, alpha = _fit_colour(px, bg, background)
    return background, colour, _near_shape(alpha)


def check(image) -> Attributes:
    """The attributes of a world image (a PIL image or an HxWx3 uint8 array; resized to the world's side)."""
    background, colour, alpha = _coverage_map(image)
    if alpha.sum() < MIN_AREA:
        return Attributes(background, NONE, NONE, NONE)
    # 3. shape by template, then size and position from the winning template
    shape, box, centre, _ = fit_shape(alpha)
    return Attributes(background, colour, shape, size_of(box), (centre[0] / SIDE, centre[1] / SIDE))


def check_box(image) -> tuple[Attributes, float]:
    """`check`'s attributes and the box side (px) of the winning template (0 when there is no shape): a size
    finer than the three classes, for clips whose shape grows."""
    background, colour, alpha = _coverage_map(image)
    if alpha.sum() < MIN_AREA:
        return Attributes(background, NONE, NONE, NONE), 0.0
    shape, box, centre, _ = fit_shape(alpha)
    return Attributes(background, colour, shape, size_of(box), (centre[0] / SIDE, centre[1] / SIDE)), box


def _close_rows(alpha: np.ndarray, length: int = BAND_PERIOD - BAND_HEIGHT + 1) -> np.ndarray:
    """A vertical grey closing (max, then min, over `length` rows): the banded style's gaps filled."""
    n = alpha.shape[0]
    padded = np.pad(alpha, ((length - 1, length - 1), (0, 0)))
    grown = np.max([padded[k:k + n + length - 1] for k in range(length)], axis=0)
    return np.min([grown[k:k + n] for k in range(length)], axis=0)


def band_phase(alpha: np.ndarray) -> int:
    """The phase of the bands (vocab.BAND_PHASE on the generator's pictures) that holds the most coverage."""
    rows, profile = np.arange(alpha.shape[0]), alpha.sum(axis=1)

    def held(phase: int) -> float:
        on = ((rows - phase) % BAND_PERIOD) < BAND_HEIGHT
        return float(profile[on].sum() - profile[~on].sum())

    return max(range(BAND_PERIOD), key=held)


def fit_banded(alpha: np.ndarray) -> tuple[str, float, tuple[float, float], float]:
    """`fit_shape` for the banded style: templates kept on the band rows of the map's phase. The box and centre
    come from the gap-closed map's area and centroid, then a few larger boxes and vertical shifts are tried too
    (a shape whose top or bottom falls in a gap loses those rows)."""
    closed = _close_rows(alpha)
    area = float(closed.sum())
    ys, xs = np.mgrid[0:SIDE, 0:SIDE] + 0.5
    mx, my = float((closed * xs).sum() / area), float((closed * ys).sum() / area)
    rows = bands(SIDE, band_phase(alpha))
    best = (NONE, 0.0, (SIDE / 2, SIDE / 2), -1.0)
    for shape in SHAPES:
        share, cx, cy = _moments(shape)
        for scale in (1.0, 1.1, 1.2):
            box = math.sqrt(area / share) * scale
            for dy in (-1.5, 0.0, 1.5):
                centre = (mx - cx * box / 2, my - cy * box / 2 + dy)
                template = coverage(shape, box, centre, SIDE) * rows
                iou = float(np.minimum(alpha, template).sum() / max(np.maximum(alpha, template).sum(), 1e-9))
                if iou > best[3]:
                    best = (shape, box, centre, iou)
    return best


def read_style(image) -> tuple[str, Attributes]:
    """(style, attributes) of a world image: "flat" or "banded" (vocab.STYLES; "none" when it shows no shape), and
    the attributes read as that style draws them (for a flat picture exactly `check`'s)."""
    background, colour, alpha = _coverage_map(image)
    if alpha.sum() < MIN_AREA:
        return NONE, Attributes(background, NONE, NONE, NONE)
    flat = fit_shape(alpha)
    banded = fit_banded(alpha)
    style, (shape, box, centre, _) = ("banded", banded) if banded[3] > flat[3] else ("flat", flat)
    return style, Attributes(background, colour, shape, size_of(box), (centre[0] / SIDE, centre[1] / SIDE))


ATTRIBUTES = ("background", "colour", "shape", "size")


def agreement(found: Attributes, wanted: Attributes, position_tolerance: float | None = None) -> dict[str, bool]:
    """Which attributes match, plus "all". Position counts only when a tolerance (fraction of the side) is given."""
    result = {name: getattr(found, name) == getattr(wanted, name) for name in ATTRIBUTES}
    if position_tolerance is not None:
        dx = found.position[0] - wanted.position[0]
        dy = found.position[1] - wanted.position[1]
        result["position"] = math.hypot(dx, dy) <= position_tolerance
    result["all"] = all(result.values())
    return result


def accuracy(pairs) -> dict[str, float]:
    """Share of (found, wanted) pairs that agree, per attribute and for all at once."""
    rows = [agreement(f, w) for f, w in pairs]
    if not rows:
        return {}
    return {key: sum(r[key] for r in rows) / len(rows) for key in rows[0]}
