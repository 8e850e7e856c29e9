"""The demo's world ControlNet: shapes put where a control map says, on the world model and on the taught star.

`personae model world-controlnet` writes the shipped ControlNet; each control is a picture of a held-out shape
(ring, diamond) in a colour pair the ControlNet never trained on, somewhere on the canvas, and `personae generate
--control canny:PICTURE --controlnet canny=...` draws the prompt's shape there. The checker reads every image
back: centre within 2 px of the control's and size class right (placed), colour and background as the prompt says.
The same seeds without control show where the model puts shapes on its own; the DreamBooth star of section
"Teach a star" with the same ControlNet and a star's edges shows that a taught subject follows the control too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from personae.config.generate import ControlRef, GenerateSettings
from personae.events import EventHandler, Message
from personae.jobs.generate import run_generate

CONTROLS = 8
STAR_SIZES = (24.0, 16.0)  # close-up and medium shot: a full-shot (10 px) star does not survive the world's VAE


def _draw(model: Path, controlnet: Path | None, picture: Path | None, prompt: str, seed: int, out: Path,
          on_event: EventHandler, kind: str = "canny") -> Image.Image:
    controls = [ControlRef(type=kind, image=str(picture), model=str(controlnet), pixel_perfect=True)] \
        if controlnet else []  # A1111's Pixel Perfect: the edges made at the picture's own 32 px
    (path,) = run_generate(GenerateSettings(model=str(model), prompt=prompt, seed=seed, controls=controls), out, on_event)
    return Image.open(path)


def world_control(out: Path, model: Path, star_model: Path, index, on_event: EventHandler) -> dict:
    """Section "World ControlNet"; returns the counts it reports."""
    from dataclasses import replace

    from personae.media.grid import labelled_grid, save_image
    from personae.world.control_eval import score
    from personae.world.model import write_world_controlnet
    from personae.world.placed import control_map, eval_placed, silhouette

    on_event(Message("writing the world ControlNet"))
    controlnet = write_world_controlnet(out / "models/world-controlnet")
    folder = out / "world-control"
    (folder / "controls").mkdir(parents=True, exist_ok=True)
    rows = {"map": [], "controlled": [], "own": [], "drawing": [], "inverted": [], "star map": [], "star": []}
    counts = {"placed": 0, "prompt": 0, "own_placed": 0, "drawn_placed": 0, "star_placed": 0, "star_shape": 0}
    for i, placed in enumerate(eval_placed(64)[:CONTROLS]):
        # 1. a held-out shape's picture as the control, its caption as the prompt; the same seed with no control
        picture = folder / "controls" / f"{i:02d}.png"
        placed.image().save(picture)
        controlled = _draw(model, controlnet, picture, placed.caption(), i, folder / "controlled", on_event)
        own = _draw(model, None, None, placed.caption(), i, folder / "own", on_event)
        found, plain = score(controlled, placed), score(own, placed)
        counts["placed"] += found["placed"]
        counts["prompt"] += found["prompt"]
        counts["own_placed"] += plain["placed"]
        # 2. the shape drawn black on white, through A1111's invert preprocessor: the silhouette the ControlNet reads
        drawing = folder / "controls" / f"drawing-{i:02d}.png"
        Image.fromarray(255 - np.asarray(silhouette(placed).convert("RGB"))).save(drawing)
        inverted = _draw(model, controlnet, drawing, placed.caption(), i, folder / "drawn", on_event, kind="invert")
        counts["drawn_placed"] += score(inverted, placed)["placed"]
        # 3. the taught star (DreamBooth) at the same place, from a star's edges
        star = replace(placed, shape="star", colour="white", box=STAR_SIZES[i % len(STAR_SIZES)])
        star_picture = folder / "controls" / f"star-{i:02d}.png"
        star.image().save(star_picture)
        drawn = _draw(star_model, controlnet, star_picture, star.caption(), i, folder / "star", on_event)
        read = score(drawn, star)
        counts["star_placed"] += read["placed"]
        counts["star_shape"] += read["shape_read"] == "star"
        for key, image in (("map", control_map(placed, "canny")), ("controlled", controlled), ("own", own),
                           ("drawing", Image.open(drawing)), ("inverted", inverted),
                           ("star map", control_map(star, "canny")), ("star", drawn)):
            rows[key].append(image)
    labels = ["canny map", "ControlNet", "no control", "drawing", "invert + ControlNet", "star's map",
              "DreamBooth star + ControlNet"]
    save_image(labelled_grid(list(rows.values()), labels, [], cell=64), folder / "sheet.png")
    n = CONTROLS
    index.add("World ControlNet",
              f"`personae model world-controlnet models/world-controlnet`: a ControlNet of the world model "
              "(`personae world controlnet`: ControlNetModel.from_unet of its UNet, zero convolutions, trained on "
              "rendered pairs at any position and size). Each control is a picture of a shape the ControlNet never "
              "trained on (ring, diamond) in a colour pair it never saw, anywhere on the canvas; `personae generate "
              "--control canny:PICTURE --controlnet canny=models/world-controlnet --pixel-perfect` (A1111's Pixel "
              "Perfect: the edges made at the picture's own size) with its caption as the prompt: "
              f"placed {counts['placed']} of {n} (centre within 2 px of the control's, size right), colour and "
              f"background as prompted {counts['prompt']} of {n}; the same seeds without control placed "
              f"{counts['own_placed']} of {n} (without control the seed decides where). The same shapes drawn black "
              "on white, through A1111's invert preprocessor (`--control invert:DRAWING`, white on black: the "
              f"silhouette the ControlNet also reads): placed {counts['drawn_placed']} of {n}. The DreamBooth star (section "
              f"\"Teach a star\") with the same ControlNet and a star's edges: placed {counts['star_placed']} of {n}, "
              f"a star {counts['star_shape']} of {n}. docs/world.md has the measured table (64 held-out controls "
              "per control type, guidance windows, weight 0).", [folder / "sheet.png"])
    return counts
