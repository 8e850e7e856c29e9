"""A small procedural image set for the offline demo and tests: one subject in varied scenes.

The subject is a yellow five-pointed star with a dark outline; each image places it at a
different size and position on a different background colour, like the varied photos
of one subject that personalization needs. Same arguments, same files.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

BACKGROUNDS = {"blue": (40, 70, 200), "green": (40, 150, 70), "red": (190, 40, 40), "purple": (110, 50, 150),
               "grey": (120, 120, 120), "teal": (30, 140, 140)}


def star_points(cx: float, cy: float, radius: float, rotation: float = -math.pi / 2) -> list[tuple[float, float]]:
    points = []
    for i in range(10):
        r = radius if i % 2 == 0 else radius * 0.45
        angle = rotation + i * math.pi / 5
        points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    return points


def draw_star(size: int, background: tuple[int, int, int], scale: float, offset: tuple[float, float]) -> Image.Image:
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    radius = size * scale / 2
    cx, cy = size / 2 + offset[0] * size, size / 2 + offset[1] * size
    draw.polygon(star_points(cx, cy, radius), fill=(250, 210, 30), outline=(30, 20, 10), width=max(1, size // 40))
    return image


def write_sample_subject(folder: str | Path, count: int = 6, size: int = 128, seed: int = 0,
                         trigger: str = "sks", class_word: str = "star") -> list[Path]:
    """Write `count` PNGs with sidecar captions ("a photo of sks star on a blue background")."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = list(BACKGROUNDS)
    paths = []
    for i in range(count):
        bg = names[i % len(names)]
        image = draw_star(size, BACKGROUNDS[bg], float(rng.uniform(0.55, 0.8)), tuple(rng.uniform(-0.1, 0.1, 2)))
        path = folder / f"{class_word}_{i:02d}.png"
        image.save(path)
        path.with_suffix(".txt").write_text(f"a photo of {trigger} {class_word} on a {bg} background\n")
        paths.append(path)
    return paths


SHOT_SCALES = {"close_up": 0.95, "medium": 0.55, "full": 0.25}


def write_shot_frames(folder: str | Path, per_shot: int = 2, size: int = 128, seed: int = 0) -> list[Path]:
    """Storyboard-style frames sorted into close_up/, medium/ and full/ folders: a pencil-sketch star on
    paper, framed tight, at mid size, or small in the frame (the shot-token recipe's input)."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    paths = []
    for shot, scale in SHOT_SCALES.items():
        (folder / shot).mkdir(parents=True, exist_ok=True)
        for i in range(per_shot):
            image = Image.new("RGB", (size, size), (245, 243, 235))
            draw = ImageDraw.Draw(image)
            cx, cy = size / 2 + rng.uniform(-0.08, 0.08) * size, size / 2 + rng.uniform(-0.08, 0.08) * size
            draw.polygon(star_points(cx, cy, size * scale / 2), outline=(40, 40, 40), width=max(1, size // 40))
            draw.line([(0, size * 0.8), (size, size * 0.8)], fill=(120, 120, 120), width=1)  # a horizon line
            path = folder / shot / f"frame_{i:02d}.png"
            image.save(path)
            path.with_suffix(".txt").write_text("a star, storyboard sketch\n")
            paths.append(path)
    return paths
