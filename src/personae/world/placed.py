"""Shapes placed anywhere on the canvas, at any size, with their control maps: the world ControlNet's data.

    placed = Placed("ring", "red", "blue", box=10.0, centre=(8.5, 22.0))
    placed.image(), placed.caption(), control_map(placed, "canny")   # picture, prompt, control map

`scene.render` draws one of three box sides at an offset given as a fraction of `max_offset`
(its outputs stay as they are: the world's tests depend on them); a ControlNet must place a
shape where its control map says, so here the box side is any value and the centre any pixel
position that keeps `MARGIN` free to the border (the checker reads the background there). Two control types, as `personae generate --control` reads them:
`canny` (the picture's edges, drawn by the same code as `personae detect canny`) and
`silhouette` (the shape's exact coverage, white on black: a `raw` control map).

The held-out split: the ControlNet trains on `CONTROL_SHAPES` in `TRAIN_COMBOS`; it is measured
on `EVAL_SHAPES` (never in its training) in `EVAL_COMBOS` (shape colour on background pairs never
in its training) at positions drawn from another seed. No torch here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from personae.world.scene import BACKGROUNDS, COLOURS, MARGIN, SIDE, SIZES, Attributes, blend, caption, coverage

CONTROL_TYPES = ("canny", "silhouette")  # the maps the world ControlNet reads
GENERATE_TYPE = {"canny": "canny", "silhouette": "raw"}  # the `personae generate --control TYPE:IMAGE` type of each
CONTROL_SHAPES = ("circle", "square", "triangle", "cross")  # shapes of the ControlNet's training pairs
EVAL_SHAPES = ("ring", "diamond")  # pretrained shapes the ControlNet never sees in training: it is measured on them
EVAL_COMBOS = (  # (shape colour, background) pairs never in the ControlNet's training: every background, 6 colours
    ("white", "red"), ("black", "green"), ("yellow", "blue"), ("blue", "yellow"), ("green", "red"), ("red", "blue"),
)
TRAIN_COMBOS = tuple((c, b) for b in BACKGROUNDS for c in COLOURS if c != b and (c, b) not in EVAL_COMBOS)
EVAL_SEED = 1_000_003  # positions of the measured controls: a stream no training seed shares


@dataclass(frozen=True)
class Placed:
    """One shape at a box side (px) and centre (px, (SIDE/2, SIDE/2) is the middle)."""

    shape: str
    colour: str
    background: str
    box: float
    centre: tuple[float, float]

    @property
    def size(self) -> str:
        """The size class (shot) nearest the box side on a log scale, as the checker reads it."""
        return min(SIZES, key=lambda s: abs(math.log(self.box / SIZES[s])))

    def coverage(self) -> np.ndarray:
        return coverage(self.shape, self.box, self.centre)

    def image(self) -> Image.Image:
        return blend(self.coverage(), self.colour, self.background)

    def caption(self) -> str:
        return caption(self.shape, self.colour, self.background, self.size)

    def attributes(self) -> Attributes:
        return Attributes(self.background, self.colour, self.shape, self.size,
                          (self.centre[0] / SIDE, self.centre[1] / SIDE))


def centre_range(box: float) -> tuple[float, float]:
    """Lowest and highest centre coordinate (px) that keeps the box MARGIN away from every border."""
    return MARGIN + box / 2, SIDE - MARGIN - box / 2


def random_placed(rng: np.random.Generator, shapes: tuple[str, ...] = CONTROL_SHAPES,
                  combos: tuple[tuple[str, str], ...] = TRAIN_COMBOS, box_range: tuple[float, float] = (9.0, 26.0)
                  ) -> Placed:
    """Uniform over shape and (colour, background) pair, the box side log-uniform in `box_range`, the centre
    uniform over every position the box fits at."""
    shape = shapes[rng.integers(len(shapes))]
    colour, background = combos[rng.integers(len(combos))]
    box = float(math.exp(rng.uniform(math.log(box_range[0]), math.log(box_range[1]))))
    lo, hi = centre_range(box)
    centre = (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
    return Placed(shape, colour, background, box, centre)


def eval_placed(count: int = 64, seed: int = EVAL_SEED) -> list[Placed]:
    """The measured controls: held-out shapes, held-out colour pairs, each size class, positions from `seed`.
    Control i: shape i mod 2, size class i mod 3, colour pair i mod 6; its centre uniform where the box fits."""
    rng = np.random.default_rng(seed)
    sizes = list(SIZES)
    out = []
    for i in range(count):
        box = SIZES[sizes[i % len(sizes)]]
        lo, hi = centre_range(box)
        centre = (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
        colour, background = EVAL_COMBOS[i % len(EVAL_COMBOS)]
        out.append(Placed(EVAL_SHAPES[i % len(EVAL_SHAPES)], colour, background, box, centre))
    return out


def subject_placed(count: int = 32, shape: str = "star", colour: str = "white", seed: int = EVAL_SEED + 1,
                   boxes: tuple[float, ...] = (SIZES["close-up"], SIZES["medium shot"])) -> list[Placed]:
    """Controls for a taught subject: `shape` in `colour` on every background it allows, at `boxes` (a star at
    full shot, 10 px, does not survive the world's VAE), positions from `seed`."""
    rng = np.random.default_rng(seed)
    backgrounds = [b for b in BACKGROUNDS if b != colour]
    out = []
    for i in range(count):
        box = boxes[i % len(boxes)]
        lo, hi = centre_range(box)
        centre = (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
        out.append(Placed(shape, colour, backgrounds[i % len(backgrounds)], box, centre))
    return out


def silhouette(placed: Placed, alpha: np.ndarray | None = None) -> Image.Image:
    """The shape's coverage (`alpha` when the caller has it), white on black (RGB), rounded to 8 bits."""
    grey = np.round((placed.coverage() if alpha is None else alpha) * 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[..., None], 3, axis=2), "RGB")


def control_map(placed: Placed, kind: str) -> Image.Image:
    """The control map of a placed shape: `canny` edges of its picture, as `personae detect canny` draws them
    (default thresholds), or its `silhouette`."""
    return training_pair(placed, (kind,))[1][kind]


def training_pair(placed: Placed, kinds: tuple[str, ...] = CONTROL_TYPES) -> tuple[Image.Image, dict[str, Image.Image]]:
    """The picture and its control maps, the shape's coverage drawn once."""
    from personae.data.control import detect_control

    unknown = [k for k in kinds if k not in CONTROL_TYPES]
    if unknown:
        raise ValueError(f"unknown control type {unknown[0]!r}; known: {', '.join(CONTROL_TYPES)}")
    alpha = placed.coverage()
    image = blend(alpha, placed.colour, placed.background)
    maps = {"canny": lambda: detect_control("canny", image), "silhouette": lambda: silhouette(placed, alpha)}
    return image, {kind: maps[kind]() for kind in kinds}


def control_source(placed: Placed, kind: str) -> Image.Image:
    """What a user passes to `personae generate --control TYPE:IMAGE` for this control: the picture itself for
    canny (generate draws its edges), the silhouette for raw."""
    return placed.image() if kind == "canny" else silhouette(placed)
