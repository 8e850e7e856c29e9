"""The shapes world: small procedural images in which every property can be checked exactly.

    image = render("circle", "red", "blue", "close-up", offset=(0.0, 0.0))
    caption("circle", "red", "blue", "close-up")  # "a red circle on a blue background, close-up"
    for image, text, attrs in world_samples(seed=0, count=8): ...

One shape in one colour on a plain background, at one of three sizes that double as
shot types (close-up, medium shot, full shot), moved by a random sub-pixel offset. The
shape's coverage of each pixel is rendered 8x supersampled and box-filtered, and the
image is the exact blend `background + coverage * (colour - background)`, so the
checker (world/check.py) can recover the coverage map and read the shape,
size and position back. Some shapes (`HELD_OUT`) never appear in pretraining: they are
the subjects users teach the pretrained model. No torch here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageDraw

from personae.world.vocab import (  # noqa: F401  (re-exported: the world's words, with its pictures)
    BACKGROUNDS,
    BAND_HEIGHT,
    BAND_PERIOD,
    BAND_PHASE,
    COLOURS,
    EVAL_PROMPTS,
    EXTRA_WORDS,
    HELD_OUT,
    MARGIN,
    SHAPES,
    SIDE,
    SIZES,
    STYLES,
    TRAINED,
    Attributes,
)

SUPERSAMPLE = 8  # coverage is drawn at SIDE * SUPERSAMPLE and box-filtered down


def _regular(n: int, rotation: float, inner: float | None = None) -> list[tuple[float, float]]:
    """Points of a regular polygon (or a star when `inner` is given) around 0, outer radius 1."""
    count = n * 2 if inner else n
    points = []
    for i in range(count):
        r = inner if inner and i % 2 else 1.0
        a = rotation + 2 * math.pi * i / count
        points.append((r * math.cos(a), r * math.sin(a)))
    return points


def _heart() -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * math.pi, 120, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return list(zip(x.tolist(), y.tolist()))


def _fit(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Scale and move points so their box is exactly [-1, 1] on both axes (every shape fills its square box)."""
    p = np.asarray(points, dtype=float)
    lo, hi = p.min(0), p.max(0)
    return [tuple(v) for v in ((p - lo) / (hi - lo) * 2 - 1).tolist()]


CROSS_ARM = 0.36  # half-width of a cross arm, as a fraction of the half side
RING_INNER = 0.55  # inner radius of a ring, as a fraction of the outer one
_POLYGONS = {
    "square": [(-1, -1), (1, -1), (1, 1), (-1, 1)],
    "triangle": [(0, -1), (1, 1), (-1, 1)],
    "diamond": [(0, -1), (1, 0), (0, 1), (-1, 0)],
    "cross": [(-CROSS_ARM, -1), (CROSS_ARM, -1), (CROSS_ARM, -CROSS_ARM), (1, -CROSS_ARM), (1, CROSS_ARM),
              (CROSS_ARM, CROSS_ARM), (CROSS_ARM, 1), (-CROSS_ARM, 1), (-CROSS_ARM, CROSS_ARM), (-1, CROSS_ARM),
              (-1, -CROSS_ARM), (-CROSS_ARM, -CROSS_ARM)],
    "star": _fit(_regular(5, -math.pi / 2, inner=0.45)),
    "heart": _fit(_heart()),
}


def coverage(shape: str, box: float, centre: tuple[float, float], side: int = SIDE) -> np.ndarray:
    """The share of each pixel (0..1, float32, side x side) that the shape covers.

    `box` is the side of the shape's square box in pixels, `centre` its centre in pixel
    coordinates (side / 2 is the middle of the image)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    s = SUPERSAMPLE
    canvas = Image.new("L", (side * s, side * s), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy, r = centre[0] * s, centre[1] * s, box * s / 2

    def to_canvas(points):
        return [(cx + x * r, cy + y * r) for x, y in points]

    if shape in ("circle", "ring"):
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        if shape == "ring":
            ri = r * RING_INNER
            draw.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=0)
    else:
        draw.polygon(to_canvas(_POLYGONS[shape]), fill=255)
    mask = np.asarray(canvas, dtype=np.float32) / 255.0
    return mask.reshape(side, s, side, s).mean(axis=(1, 3))


def blend(alpha: np.ndarray, colour: str, background: str) -> Image.Image:
    """background + alpha * (colour - background), rounded to 8-bit RGB."""
    fg = np.asarray(COLOURS[colour], dtype=np.float32)
    bg = np.asarray(COLOURS[background], dtype=np.float32)
    pixels = bg + alpha[..., None] * (fg - bg)
    return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), "RGB")


def max_offset(size: str, side: int = SIDE) -> float:
    """How far (pixels) the shape's centre may move from the middle while keeping MARGIN to the border."""
    return max(0.0, (side - SIZES[size]) / 2 - MARGIN)


def _centre(size: str, offset: tuple[float, float], side: int) -> tuple[float, float]:
    limit = max_offset(size, side)
    return side / 2 + offset[0] * limit, side / 2 + offset[1] * limit


def render(shape: str, colour: str, background: str, size: str, offset: tuple[float, float] = (0.0, 0.0),
           side: int = SIDE) -> Image.Image:
    """One world image. `offset` moves the centre by a fraction (-1..1) of `max_offset(size)` on each axis."""
    if colour == background:
        raise ValueError(f"a {colour} shape on a {background} background would be invisible")
    return blend(coverage(shape, SIZES[size], _centre(size, offset, side), side), colour, background)


def bands(side: int = SIDE, phase: int = BAND_PHASE) -> np.ndarray:
    """The banded style's rows (side x 1, float32): 1 where a band of the shape's colour is, 0 in the gaps."""
    rows = np.arange(side)
    return (((rows - phase) % BAND_PERIOD) < BAND_HEIGHT).astype(np.float32)[:, None]


def render_banded(shape: str, colour: str, background: str, size: str, offset: tuple[float, float] = (0.0, 0.0),
                  side: int = SIDE) -> Image.Image:
    """A world image in the banded style (vocab.STYLES): `render`'s shape, kept only on the band rows."""
    if colour == background:
        raise ValueError(f"a {colour} shape on a {background} background would be invisible")
    return blend(coverage(shape, SIZES[size], _centre(size, offset, side), side) * bands(side), colour, background)


def shape_mask(shape: str, size: str, offset: tuple[float, float] = (0.0, 0.0), side: int = SIDE) -> Image.Image:
    """The shape's exact coverage in `render`'s image of the same shape, size and offset, as an 8-bit grey mask
    (white = the shape): the loss mask of a world training image (data.masked_loss)."""
    alpha = coverage(shape, SIZES[size], _centre(size, offset, side), side)
    return Image.fromarray(np.round(alpha * 255).astype(np.uint8), "L")


def caption(shape: str, colour: str, background: str, size: str) -> str:
    return f"a {colour} {shape} on a {background} background, {size}"


def caption_words() -> list[str]:
    """Every word a world caption or prompt uses (as the CLIP pre-tokenizer splits them: "close-up" is three)."""
    words = list(COLOURS) + list(SHAPES) + list(EXTRA_WORDS) + [",", "-"]
    for size in SIZES:
        words += size.replace("-", " ").split()
    return sorted(set(words))


def random_attributes(rng: np.random.Generator, shapes: tuple[str, ...] = TRAINED) -> tuple[Attributes, tuple[float, float]]:
    """Uniform over shape, background, colour (never the background's), size and offset."""
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    colours = [c for c in COLOURS if c != background]
    colour = colours[rng.integers(len(colours))]
    shape = shapes[rng.integers(len(shapes))]
    size = list(SIZES)[rng.integers(len(SIZES))]
    offset = tuple(float(v) for v in rng.uniform(-1.0, 1.0, 2))
    limit = max_offset(size)
    position = (0.5 + offset[0] * limit / SIDE, 0.5 + offset[1] * limit / SIDE)
    return Attributes(background, colour, shape, size, position), offset


def world_samples(seed: int, count: int | None = None, shapes: tuple[str, ...] = TRAINED
                  ) -> Iterator[tuple[Image.Image, str, Attributes]]:
    """(image, caption, attributes), seeded; held-out shapes are excluded unless `shapes` names them."""
    rng = np.random.default_rng(seed)
    i = 0
    while count is None or i < count:
        attrs, offset = random_attributes(rng, shapes)
        image = render(attrs.shape, attrs.colour, attrs.background, attrs.size, offset)
        yield image, caption(attrs.shape, attrs.colour, attrs.background, attrs.size), attrs
        i += 1


def world_array(seed: int, count: int, shapes: tuple[str, ...] = TRAINED) -> tuple[np.ndarray, list[str], list[Attributes]]:
    """`count` samples as one uint8 array (count, SIDE, SIDE, 3) plus captions and attributes."""
    images, captions, attrs = [], [], []
    for image, text, a in world_samples(seed, count, shapes):
        images.append(np.asarray(image))
        captions.append(text)
        attrs.append(a)
    return np.stack(images), captions, attrs


def parse_prompt(prompt: str) -> Attributes:
    """The attributes a world caption asks for (position: the middle); raises ValueError for other text."""
    text = prompt.strip().lower()
    for size in SIZES:
        if text.endswith(", " + size):
            body = text[: -len(size) - 2]
            break
    else:
        raise ValueError(f"{prompt!r} does not end with a size ({', '.join(SIZES)})")
    words = body.split()
    if len(words) != 7 or words[0] not in ("a", "an") or words[3:5] != ["on", "a"] or words[6] != "background":
        raise ValueError(f"{prompt!r} is not of the form 'a COLOUR SHAPE on a BACKGROUND background, SIZE'")
    return Attributes(background=words[5], colour=words[1], shape=words[2], size=size)
