"""`personae world render OUT`: world pictures with caption files, for training sets and tests.

    result = render_world(WorldRender(shapes=["star"], colours=["white"], by="shot"), "stars")
    # stars/close_up/0000-white-star-on-blue-close_up.png + .txt, ..., stars/render.json

Every combination of the chosen shapes, colours, backgrounds and shots once (a shape never on
a background of its own colour), or `count` of them drawn at random (no combination twice
before every one has come once); positions jittered as in pretraining; drawn flat (the world
model's own pictures) or banded (`style`, vocab.STYLES: a drawing style for a LoRA to learn).
Same settings, same bytes. `render.json` lists each file with what it shows, so
the exact checker (world/check.py) can be held against it. No torch here.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from personae.events import EventHandler, Progress, ignore
from personae.outputs import Kind, staged_output
from personae.staging import atomic_file, write_text
from personae.world.render_settings import SHOT_FOLDERS, WorldRender, parse_combination
from personae.world.scene import SIDE, max_offset, render, render_banded

RECORD = "render.json"
WORLD_PICTURES = Kind("world-render", "rendered world pictures", "personae world render", signature=(RECORD,),
                      layout=(RECORD, "*.png", "*.txt"))
# style -> painter(shape, colour, background, shot, offset) -> a SIDE x SIDE picture; a new style is one line here
# and its name in vocab.STYLES
PAINTERS: dict[str, Callable[..., Image.Image]] = {"flat": render, "banded": render_banded}


@dataclass(frozen=True)
class Picture:
    file: str  # relative to OUT
    shape: str
    colour: str
    background: str
    shot: str  # a world size: close-up, medium shot, full shot
    offset: tuple[float, float]  # the generator's offset (-1..1 of max_offset on each axis)
    position: tuple[float, float]  # the shape's centre as a fraction of the side (check.py's position)
    caption: str


def combinations(settings: WorldRender) -> list[tuple[str, str, str, str]]:
    """(shape, colour, background, shot) of the grid, in a fixed order."""
    left_out = {parse_combination(item) for item in settings.exclude}
    return [(shape, colour, bg, shot) for shot, shape, colour, bg in
            itertools.product(settings.shots, settings.shapes, settings.colours, settings.backgrounds)
            if colour != bg and (shape, colour, bg) not in left_out]


def plan(settings: WorldRender) -> list[Picture]:
    """What `render_world` writes, without drawing anything."""
    rng = np.random.default_rng(settings.seed)
    grid = combinations(settings)
    if settings.count == 0:
        chosen = grid
    else:  # without repeats until every combination is used (then again, in a new order)
        order = np.concatenate([rng.permutation(len(grid)) for _ in range(-(-settings.count // len(grid)))])
        chosen = [grid[i] for i in order[:settings.count]]
    pictures = []
    for i, (shape, colour, bg, shot) in enumerate(chosen):
        offset = tuple(float(v) for v in rng.uniform(-1.0, 1.0, 2)) if settings.jitter else (0.0, 0.0)
        limit = max_offset(shot)
        position = (0.5 + offset[0] * limit / SIDE, 0.5 + offset[1] * limit / SIDE)
        name = f"{i:04d}-{colour}-{shape}-on-{bg}-{SHOT_FOLDERS[shot]}"
        folder = {"none": "", "shot": SHOT_FOLDERS[shot], "shape": shape, "colour": colour, "background": bg}
        file = "/".join(p for p in (folder[settings.by], name) if p) + ".png"
        text = settings.caption.format(colour=colour, shape=shape, background=bg, shot=shot)
        pictures.append(Picture(file, shape, colour, bg, shot, offset, position, " ".join(text.split())))
    return pictures


@dataclass
class RenderResult:
    out: Path
    pictures: list[Picture]


def render_world(settings: WorldRender, out: str | Path, overwrite: bool = False,
                 on_event: EventHandler = ignore) -> RenderResult:
    """Draw the planned pictures into OUT (a new folder, or one this command wrote: --overwrite replaces it)."""
    pictures = plan(settings)
    paint = PAINTERS[settings.style]
    with staged_output(out, WORLD_PICTURES, replace=overwrite) as work:
        for i, p in enumerate(pictures):
            on_event(Progress("render", i, len(pictures)))
            (work / p.file).parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(work / p.file) as tmp:
                paint(p.shape, p.colour, p.background, p.shot, p.offset).save(tmp, format="PNG")
            write_text((work / p.file).with_suffix(".txt"), p.caption + "\n")
        on_event(Progress("render", len(pictures), len(pictures)))
        record = {"version": 1, "made_by": "personae world render", "settings": settings.model_dump(mode="json"),
                  "pictures": [asdict(p) for p in pictures]}
        write_text(work / RECORD, json.dumps(record, indent=1) + "\n")
    return RenderResult(Path(out), pictures)
