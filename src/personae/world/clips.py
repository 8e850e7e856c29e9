"""Clips of the shapes world: one shape moving left, right, up, down, growing (a dolly in) or still, with the
motion named in the caption: the world motion adapter's data, and how its clips are read back.

    clip = random_clip(np.random.default_rng(0))
    clip.caption()    # "a red circle on a blue background, medium shot, moving left"
    clip.frames()     # 16 pictures, drawn exactly as world/placed.py draws a shape at any position and size
    score_clip(frames, clip)   # identity in every frame, the track, and whether it moves as asked

The motion words ("moving", "left", "growing", "still", ...) are not words of the world tokenizer (pretraining
never used them): it splits them into character tokens whose embeddings the pretraining never trained (random, as
initialised, and fixed in the shipped text encoder). The caption's first part is the world caption the model
knows, and the text encoder is causal, so its tokens' states are what pretraining saw; the motion words change only
the states after them (theirs and the padding's), which the UNet's cross-attention reads. The motion adapter
learns to read that difference: nothing of the model is changed, so the shipped world model runs every clip.

Moving clips keep the size class (medium shot or full shot: a close-up has 2 px to move) and travel along one
axis a share of all the room there is; a growing clip's box grows log-linearly from a full shot (~10 px) to
beyond a close-up (~24 px) around a fixed centre, captioned with the size in between ("medium shot"); a still
clip is any size anywhere. The held-out split is placed.py's: training clips use `TRAIN_COMBOS`, the measured
clips the colour pairs of `EVAL_COMBOS`, which no training clip shows. No torch here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from personae.world.check import check_box
from personae.world.placed import EVAL_COMBOS, EVAL_SEED, TRAIN_COMBOS, Placed, centre_range
from personae.world.scene import SIZES, TRAINED, caption

MOTIONS = ("left", "right", "up", "down", "growing", "still")
MOTION_WORDS = {"left": "moving left", "right": "moving right", "up": "moving up", "down": "moving down",
                "growing": "growing", "still": "still"}
# the motion condition's target (inference/motion_condition.py): (dx, dy, growth), image axes (y down)
MOTION_VECTORS = {"left": (-1.0, 0.0, 0.0), "right": (1.0, 0.0, 0.0), "up": (0.0, -1.0, 0.0), "down": (0.0, 1.0, 0.0),
                  "growing": (0.0, 0.0, 1.0), "still": (0.0, 0.0, 0.0)}
AXIS = {"left": (0, -1), "right": (0, 1), "up": (1, -1), "down": (1, 1)}  # (axis: 0 = x, 1 = y; sign in pixels)
MOVING_SIZES = ("medium shot", "full shot")  # sizes with room to move (a close-up box has 2 px each way)
TRAVEL = (0.5, 1.0)  # a moving clip travels this share of the room its box has on its axis (drawn uniform)
GROW_FROM, GROW_TO = (9.5, 11.0), (22.0, 25.0)  # a growing clip's first and last box side (px), drawn uniform
GROWING_SIZE = "medium shot"  # the size word of a growing clip: the size its box passes halfway
FRAMES = 16

# reading a clip back (score_clip)
MIN_TRAVEL = 3.0  # px the shape must move along the asked axis, first frame to last
SLACK = 1.0  # px a moving shape may step back between two frames (the checker reads generated frames to ~0.3 px)
MIN_GROWTH = 1.4  # last box side / first for a growing clip
GROW_SLACK = 0.06  # share the box may shrink between two frames of a growing clip
STILL_DRIFT = 1.5  # px a still shape's centre may wander from its first frame
STILL_SIZE = 0.15  # share a still shape's box may change


@dataclass(frozen=True)
class Clip:
    """One shape through `len(boxes)` frames: its box side (px) and centre (px) in each."""

    shape: str
    colour: str
    background: str
    motion: str
    size: str  # the caption's size word
    boxes: tuple[float, ...]
    centres: tuple[tuple[float, float], ...]

    def caption(self) -> str:
        return f"{caption(self.shape, self.colour, self.background, self.size)}, {MOTION_WORDS[self.motion]}"

    def placed(self) -> list[Placed]:
        return [Placed(self.shape, self.colour, self.background, b, c) for b, c in zip(self.boxes, self.centres)]

    def frames(self) -> list[Image.Image]:
        return [p.image() for p in self.placed()]


def _line(start: float, end: float, frames: int) -> list[float]:
    return [start + (end - start) * i / (frames - 1) for i in range(frames)]


def make_clip(rng: np.random.Generator, shape: str, colour: str, background: str, motion: str,
              frames: int = FRAMES, size: str | None = None) -> Clip:
    """A clip of `motion`: sizes, travel and positions drawn from `rng` (see the module's description); `size`
    fixes a moving or still clip's size word (a growing clip's is always `GROWING_SIZE`)."""
    if motion == "growing":
        boxes = [math.exp(v) for v in _line(math.log(rng.uniform(*GROW_FROM)), math.log(rng.uniform(*GROW_TO)), frames)]
        lo, hi = centre_range(max(boxes))
        centre = (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
        return Clip(shape, colour, background, motion, GROWING_SIZE, tuple(boxes), (centre,) * frames)
    sizes = MOVING_SIZES if motion in AXIS else tuple(SIZES)
    drawn = sizes[rng.integers(len(sizes))]  # drawn even when given, so the rest of the clip draws the same
    size = size or drawn
    if size not in sizes:
        raise ValueError(f"a {motion} clip is one of {', '.join(sizes)}, not {size!r}")
    box = SIZES[size]
    lo, hi = centre_range(box)
    if motion == "still":
        centre = (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
        return Clip(shape, colour, background, motion, size, (box,) * frames, (centre,) * frames)
    axis, sign = AXIS[motion]
    travel = float(rng.uniform(*TRAVEL)) * (hi - lo)
    start = float(rng.uniform(lo, hi - travel))
    track = _line(start, start + travel, frames)
    if sign < 0:
        track = [lo + hi - v for v in track]  # the same travel mirrored: from high to low
    other = float(rng.uniform(lo, hi))
    centres = [(v, other) if axis == 0 else (other, v) for v in track]
    return Clip(shape, colour, background, motion, size, (box,) * frames, tuple(centres))


def random_clip(rng: np.random.Generator, shapes: tuple[str, ...] = TRAINED,
                combos: tuple[tuple[str, str], ...] = TRAIN_COMBOS, frames: int = FRAMES) -> Clip:
    """Uniform over motion, shape and (colour, background) pair."""
    motion = MOTIONS[rng.integers(len(MOTIONS))]
    shape = shapes[rng.integers(len(shapes))]
    colour, background = combos[rng.integers(len(combos))]
    return make_clip(rng, shape, colour, background, motion, frames)


def eval_clips(count: int = 32, seed: int = EVAL_SEED, frames: int = FRAMES) -> list[Clip]:
    """The measured clips: clip i moves as MOTIONS[i mod 6], its shape and held-out colour pair drawn from `seed`."""
    rng = np.random.default_rng([seed, 19])
    out = []
    for i in range(count):
        shape = TRAINED[rng.integers(len(TRAINED))]
        colour, background = EVAL_COMBOS[rng.integers(len(EVAL_COMBOS))]
        out.append(make_clip(rng, shape, colour, background, MOTIONS[i % len(MOTIONS)], frames))
    return out


def direction_right(motion: str, centres: list[tuple[float, float]], boxes: list[float]) -> bool:
    """Does a track (centres and box sides read from the frames, px) move as `motion` asks?"""
    if motion in AXIS:
        axis, sign = AXIS[motion]
        along = [sign * c[axis] for c in centres]  # increasing when the shape moves the asked way
        steps = np.diff(along)
        return along[-1] - along[0] >= MIN_TRAVEL and bool(np.all(steps >= -SLACK))
    if motion == "growing":
        ratios = np.asarray(boxes[1:]) / np.asarray(boxes[:-1])
        return boxes[-1] / boxes[0] >= MIN_GROWTH and bool(np.all(ratios >= 1 - GROW_SLACK))
    drift = max(math.hypot(c[0] - centres[0][0], c[1] - centres[0][1]) for c in centres)
    return drift <= STILL_DRIFT and max(boxes) / min(boxes) <= 1 + STILL_SIZE


def jitter(centres: list[tuple[float, float]]) -> float:
    """Mean length (px) of the track's second differences: 0 for a shape that stays or moves at a steady speed,
    about 1.7x the spread of its positions for frames drawn independently."""
    c = np.asarray(centres, dtype=np.float64)
    return float(np.hypot(*np.diff(c, n=2, axis=0).T).mean()) if len(c) > 2 else 0.0


def score_clip(frames: list[Image.Image], clip: Clip) -> dict:
    """Every frame read by the exact checker: identity (shape, colour and background as asked in every frame), the
    same reading in every frame (consistent, asked or not), the track, and whether it moves as asked."""
    reads = [check_box(frame) for frame in frames]
    attrs = [a for a, _ in reads]
    boxes = [max(b, 1e-6) for _, b in reads]
    centres = [(a.position[0] * frames[0].width, a.position[1] * frames[0].height) for a in attrs]
    identity_frames = [a.shape == clip.shape and a.colour == clip.colour and a.background == clip.background
                       for a in attrs]
    consistent = len({(a.shape, a.colour, a.background) for a in attrs}) == 1
    row = {"caption": clip.caption(), "motion": clip.motion, "frames": len(frames),
           "identity": all(identity_frames), "identity_frames": sum(identity_frames), "consistent": consistent,
           "direction": direction_right(clip.motion, centres, boxes),
           "jitter": round(jitter(centres), 3), "track": [[round(x, 2), round(y, 2)] for x, y in centres],
           "boxes": [round(b, 2) for b in boxes],
           "shapes_read": sorted({a.shape for a in attrs})}
    row["both"] = row["identity"] and row["direction"]
    return row


SCORE_KEYS = ("identity", "direction", "both", "consistent")


def shares(rows: list[dict]) -> dict:
    """Share of clips per key, share of frames with identity, and the direction share per motion."""
    n = max(len(rows), 1)
    out = {key: round(sum(r[key] for r in rows) / n, 4) for key in SCORE_KEYS}
    out["jitter"] = round(float(np.mean([r["jitter"] for r in rows])), 3) if rows else 0.0
    out["identity_frames"] = round(sum(r["identity_frames"] for r in rows) / max(sum(r["frames"] for r in rows), 1), 4)
    asked = [m for m in MOTIONS if any(r["motion"] == m for r in rows)]
    out["by_motion"] = {m: f"{sum(r['direction'] for r in rows if r['motion'] == m)}/"
                           f"{sum(r['motion'] == m for r in rows)}" for m in asked}
    return out
