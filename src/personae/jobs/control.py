"""Control maps written on their own (`personae detect`)."""

from __future__ import annotations

from pathlib import Path

from personae.data.control import detect_control, get_control_type
from personae.errors import UserError
from personae.inference.img2img import open_image
from personae.media.png import save_png
from personae.outputs import check_file_output
from personae.staging import explain_disk_full


def run_detect(control_type: str, image: str | Path, out: str | Path, options: dict[str, float] | None = None,
               overwrite: bool = False) -> Path:
    """Draw the control map of `image` and write it to `out` (a PNG; an existing file only with `overwrite`)."""
    get_control_type(control_type)  # the arguments are checked in the order they are given: TYPE first
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UserError(f"{out}: the control map is written as a PNG; give the output a .png name.")
    check_file_output(out, overwrite)
    photo = open_image(str(image), "image")
    control_map = detect_control(control_type, photo, options, where=str(image))
    check_file_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = ", ".join(f"{k}: {v:g}" for k, v in (options or {}).items())
    with explain_disk_full(out):
        return save_png(control_map, out, f"Control map: {control_type}" + (f", {settings}" if settings else "") +
                        f", Source: {Path(image).name}")
