"""How well a ControlNet places the world's shapes: generate through `personae generate`'s own code, read back.

    session = open_session(str(WORLD_DIR), device="cpu")
    scores = measure_placement(session, "./world-controlnet", eval_placed(64), "canny", folder=tmp)
    scores.shares   # {"placed": 0.97, "centre": .., "size": .., "colour": .., "background": .., "prompt": ..}

Every control is a file handed to `txt2img` as a `--control TYPE:IMAGE --controlnet TYPE=DIR` unit
(for canny the picture, whose edges generate draws; for the silhouette a `raw` map), the prompt is
the placed shape's caption, image i has seed `seed + i`. The checker reads each image back:
**centre** within `tolerance` px of the control's, **size** class right, shape **colour** and
**background** as the prompt says; **placed** = centre and size, **prompt** = colour and background.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from personae.config.generate import ControlRef, GenerateSettings
from personae.inference.txt2img import txt2img
from personae.outputs import Kind
from personae.world.check import check
from personae.world.placed import GENERATE_TYPE, Placed, control_map, control_source
from personae.world.scene import SIDE

TOLERANCE = 2.0  # px between the centre read back and the control's
CONTROL_EVAL = Kind("world-control-eval", "a world ControlNet measurement", "personae world control-eval",
                   layout=("table.md", "results.json", "controls/*", "sheets/*"))
KEYS = ("placed", "centre", "size", "colour", "background", "prompt", "all", "shape")


@dataclass
class PlacementScores:
    rows: list[dict] = field(default_factory=list)  # one per image: what was asked, what was read, which agree
    images: list[Image.Image] = field(default_factory=list)

    @property
    def shares(self) -> dict[str, float]:
        n = max(len(self.rows), 1)
        return {key: sum(r[key] for r in self.rows) / n for key in KEYS}

    @property
    def mean_distance(self) -> float:
        return float(np.mean([r["distance"] for r in self.rows])) if self.rows else math.nan


def score(image: Image.Image, placed: Placed, tolerance: float = TOLERANCE) -> dict:
    """One image read back against the placed shape its control and prompt asked for."""
    found = check(image)
    distance = math.hypot(found.position[0] * SIDE - placed.centre[0], found.position[1] * SIDE - placed.centre[1])
    row = {"shape_asked": placed.shape, "asked": [round(v, 2) for v in placed.centre], "box": round(placed.box, 2),
           "read": [round(v * SIDE, 2) for v in found.position], "distance": round(distance, 2),
           "size_read": found.size, "shape_read": found.shape,
           "centre": distance <= tolerance, "size": found.size == placed.size,
           "colour": found.colour == placed.colour, "background": found.background == placed.background,
           "shape": found.shape == placed.shape}
    row["placed"] = row["centre"] and row["size"]
    row["prompt"] = row["colour"] and row["background"]
    row["all"] = row["placed"] and row["prompt"]
    return row


def write_controls(placements: list[Placed], kind: str, folder: Path) -> list[Path]:
    """The files generate reads (`control-{kind}-NN.png`), and beside each its map (`map-{kind}-NN.png`)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, placed in enumerate(placements):
        path = folder / f"control-{kind}-{i:02d}.png"
        control_source(placed, kind).save(path)
        control_map(placed, kind).save(folder / f"map-{kind}-{i:02d}.png")
        paths.append(path)
    return paths


def generate_placed(session, controlnet: str | None, placements: list[Placed], kind: str, folder: Path,
                    weight: float = 1.0, start: float = 0.0, end: float = 1.0, steps: int = 20, cfg: float = 7.0,
                    seed: int = 0, prompts: list[str] | None = None, loras=None) -> list[Image.Image]:
    """One image per placement, as `personae generate --control TYPE:FILE:WEIGHT --controlnet TYPE=DIR
    --control-start START --control-end END` makes it (`controlnet` None: no control at all)."""
    paths = write_controls(placements, kind, folder) if controlnet else [None] * len(placements)
    prompts = prompts or [p.caption() for p in placements]
    images = []
    for i, (path, prompt) in enumerate(zip(paths, prompts)):
        unit = ControlRef(type=GENERATE_TYPE[kind], image=str(path), model=controlnet, weight=weight,
                          pixel_perfect=True) if path else None
        controls = [unit] if unit else []
        settings = GenerateSettings(model=session.source.location, prompt=prompt, seed=seed + i, steps=steps, cfg=cfg,
                                    controls=controls, control_start=start, control_end=end, device="cpu")
        images.append(txt2img(settings, session, loras=loras)[0].image)
    return images


def measure_placement(session, controlnet: str | None, placements: list[Placed], kind: str, folder: Path,
                      **options) -> PlacementScores:
    """Generate (see `generate_placed`) and read every image back against its placement."""
    images = generate_placed(session, controlnet, placements, kind, folder, **options)
    return PlacementScores([score(image, placed) for image, placed in zip(images, placements)], images)


def max_difference(a: list[Image.Image], b: list[Image.Image]) -> int:
    """The largest difference of any pixel value (0..255) between two lists of images."""
    return max(int(np.abs(np.asarray(x, dtype=np.int16) - np.asarray(y, dtype=np.int16)).max()) for x, y in zip(a, b))


def sheet(rows: list[list[Image.Image]], gap: int = 1) -> Image.Image:
    """Rows of equally sized images, `gap` px apart on white."""
    side = rows[0][0].width
    width = max(len(r) for r in rows) * (side + gap) - gap
    out = Image.new("RGB", (width, len(rows) * (side + gap) - gap), "white")
    for y, row in enumerate(rows):
        for x, image in enumerate(row):
            out.paste(image.convert("RGB"), (x * (side + gap), y * (side + gap)))
    return out


WINDOWS = (("whole", 0.0, 1.0), ("first 30 %", 0.0, 0.3), ("last 30 %", 0.7, 1.0))  # A1111's Guidance Start / End


def _row(name: str, kind: str, weight: float, start: float, end: float, scores: PlacementScores) -> dict:
    return {"run": name, "control": kind, "weight": weight, "guidance": [start, end],
            **{k: round(v, 4) for k, v in scores.shares.items()}, "mean_distance": round(scores.mean_distance, 2),
            "images": scores.rows}


def measure_controlnet(controlnet: str, model: str, out: Path, count: int = 64,
                       kinds: tuple[str, ...] = ("canny", "silhouette"), steps: int = 20, cfg: float = 7.0,
                       subject_lora: str | None = None, on_event=None) -> dict:
    """The table of docs/world.md: `count` held-out controls per control type, drawn with generate's sampler at each
    guidance window (weight 1), with no control, and at weight 0 (compared pixel by pixel with no control); with
    `subject_lora` (a LoRA that taught the star) also `count` white stars placed by each control type, the LoRA on.
    Writes OUT/table.md, OUT/results.json, OUT/controls/ (what generate read) and OUT/sheets/."""
    from personae.events import Message, ignore
    from personae.inference.session import open_session
    from personae.world.placed import eval_placed

    on_event = on_event or ignore
    out = Path(out)
    (out / "sheets").mkdir(parents=True, exist_ok=True)
    session = open_session(model, device="cpu")
    placements = eval_placed(count)
    options = dict(steps=steps, cfg=cfg)
    rows, differences = [], {}
    plain = measure_placement(session, None, placements, kinds[0], out / "controls", **options)
    rows.append(_row("no control (the model's own)", "-", 0.0, 0.0, 1.0, plain))
    for kind in kinds:
        for name, start, end in WINDOWS:
            scores = measure_placement(session, controlnet, placements, kind, out / "controls", start=start, end=end,
                                       **options)
            rows.append(_row(f"{kind}, guidance {name}", kind, 1.0, start, end, scores))
            on_event(Message(f"{rows[-1]['run']}: placed {scores.shares['placed']:.0%}, "
                             f"prompt {scores.shares['prompt']:.0%}"))
            if name == "whole":
                maps = [control_map(p, kind) for p in placements]
                rows_of = [maps[:16], scores.images[:16], maps[16:32], scores.images[16:32]]
                sheet(rows_of).save(out / "sheets" / f"{kind}.png")
        off = generate_placed(session, controlnet, placements, kind, out / "controls", weight=0.0, **options)
        differences[kind] = max_difference(off, plain.images)
    sheet([plain.images[:16], plain.images[16:32]]).save(out / "sheets" / "no-control.png")
    if subject_lora:
        rows += _subject_rows(model, controlnet, subject_lora, out, count, kinds, options, on_event)
    result = {"controlnet": controlnet, "model": model, "controls": count, "steps": steps, "cfg": cfg,
              "sampler": GenerateSettings.model_fields["sampler"].default, "tolerance_px": TOLERANCE, "rows": rows,
              "weight_0_max_pixel_difference": differences}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "table.md").write_text(table_markdown(result))
    return result


def _subject_rows(model: str, controlnet: str, lora: str, out: Path, count: int, kinds, options: dict,
                  on_event) -> list[dict]:
    """The taught star (a LoRA, on at weight 1) placed by each control type, and on its own."""
    from personae.events import Message
    from personae.inference.session import open_session
    from personae.world.placed import subject_placed

    session = open_session(model, device="cpu", loras=[(lora, 1.0)])
    stars = subject_placed(count)
    rows = [_row("star (LoRA), no control", "-", 0.0, 0.0, 1.0,
                 measure_placement(session, None, stars, kinds[0], out / "controls", **options))]
    for kind in kinds:
        scores = measure_placement(session, controlnet, stars, kind, out / "controls" / "star", **options)
        rows.append(_row(f"star (LoRA), {kind}", kind, 1.0, 0.0, 1.0, scores))
        on_event(Message(f"{rows[-1]['run']}: placed {scores.shares['placed']:.0%}, star {scores.shares['shape']:.0%}"))
        maps = [control_map(p, kind) for p in stars]
        sheet([maps[:16], scores.images[:16]]).save(out / "sheets" / f"star-{kind}.png")
    return rows


def table_markdown(result: dict) -> str:
    head = ("| run | placed (centre within 2 px and size) | centre | size | colour | background | prompt (colour and "
            "background) | all | shape | mean distance (px) |\n|---|---|---|---|---|---|---|---|---|---|\n")
    lines = [f"| {r['run']} | {r['placed']:.0%} | {r['centre']:.0%} | {r['size']:.0%} | {r['colour']:.0%} | "
             f"{r['background']:.0%} | {r['prompt']:.0%} | {r['all']:.0%} | {r['shape']:.0%} | {r['mean_distance']:.2f} |"
             for r in result["rows"]]
    off = ", ".join(f"{k} {v}" for k, v in result["weight_0_max_pixel_difference"].items())
    return (f"{result['controls']} held-out controls per row ({result['sampler']}, {result['steps']} steps, CFG "
            f"{result['cfg']:g}).\n\n" + head + "\n".join(lines) +
            f"\n\nweight 0 against no control, largest pixel difference (0-255): {off}\n")
