"""Control maps written on their own (`personae detect`)."""

from __future__ import annotations

import random
from pathlib import Path

from personae.data.control import CONTROL_TYPES, detect_control, get_control_type, processed_map
from personae.data.control.shuffle import numpy_seed
from personae.errors import UserError
from personae.inference.img2img import open_image
from personae.media.png import save_png
from personae.outputs import check_file_output
from personae.staging import explain_disk_full


def run_detect(control_type: str, image: str | Path, out: str | Path, options: dict[str, float] | None = None,
               overwrite: bool = False, seed: int | None = None, res: int | None = None) -> Path:
    """Draw the control map of `image` and write it to `out` (a PNG; an existing file only with `overwrite`);
    `seed`: a random map's (shuffle), taken as `personae generate --seed SEED` takes it (the map itself is drawn at
    the photo's own size here, at the unit's processor resolution there); `res`: the map made as generate makes it
    for a unit of that Processor Res (--control-res), before it is fitted to the picture."""
    kind = get_control_type(control_type)  # the arguments are checked in the order they are given: TYPE first
    if seed is not None and not kind.seeded:
        raise UserError(f"--seed: the {kind.name} map is not random, so it has no seed.",
                        "Leave --seed out (it is for: " + ", ".join(n for n, t in CONTROL_TYPES.items() if t.seeded)
                        + ").")
    if res is not None and not 64 <= res <= 4096:
        raise UserError(f"--res {res}: Processor Res goes from 64 to 4096 (A1111's slider: 64 to 2048).")
    if seed is not None and not -1 <= seed < 2**64:
        raise UserError(f"--seed {seed}: a seed is a whole number from 0 to 2**64 - 1 (-1: random), as generate's.")
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UserError(f"{out}: the control map is written as a PNG; give the output a .png name.")
    check_file_output(out, overwrite)
    photo = open_image(str(image), "image")
    if kind.seeded and (seed is None or seed < 0):
        seed = random.randrange(2**32)  # as generate picks one
    drawn_from = numpy_seed(seed) if kind.seeded else 0
    if res is not None:  # as generate makes a unit's map (scaled, padded, cut back) for that Processor Res
        control_map = processed_map(control_type, photo, res, options, where=str(image), seed=drawn_from)
    else:
        control_map = detect_control(control_type, photo, options, where=str(image), seed=drawn_from)
    check_file_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    said = [f"Control map: {control_type}", *(f"{k}: {v:g}" for k, v in (options or {}).items()),
            *([f"Seed: {seed}"] if kind.seeded else []), *([f"Processor Res: {res}"] if res else []),
            f"Source: {Path(image).name}"]
    with explain_disk_full(out):
        return save_png(control_map, out, ", ".join(said))
