"""Control maps written on their own (`personae detect`), and the demo's ControlNet step."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from personae.config.generate import ControlRef, GenerateSettings
from personae.data.control import detect_control
from personae.data.samples import BACKGROUNDS, draw_star
from personae.errors import UserError
from personae.events import EventHandler, Message, ignore
from personae.inference.img2img import open_image
from personae.jobs.generate import run_generate
from personae.media.png import save_png
from personae.outputs import check_file_output
from personae.staging import explain_disk_full


def run_detect(control_type: str, image: str | Path, out: str | Path, options: dict[str, float] | None = None,
               overwrite: bool = False) -> Path:
    """Draw the control map of `image` and write it to `out` (a PNG; an existing file only with `overwrite`)."""
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


def make_demo_control(model_dir: str | Path, out_dir: str | Path,
                      on_event: EventHandler = ignore) -> tuple[str, str, list[Path]]:
    """The demo's ControlNet step: a tiny ControlNet, a canny map, one image with and one without control.

    Returns (title, text, images) for the demo's index. Canny needs no MediaPipe, so the
    demo runs on a plain install.
    """
    from personae.models.controlnet import write_tiny_controlnet

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    on_event(Message("writing the tiny ControlNet"))
    controlnet = write_tiny_controlnet(out / "tiny-controlnet", base=model_dir, seed=0)
    photo = out / "control-source.png"
    draw_star(64, BACKGROUNDS["blue"], 0.7, (0, 0)).save(photo)
    control_map = run_detect("canny", photo, out / "control-canny.png")
    base = GenerateSettings(model=str(model_dir), prompt="a photo of a star", steps=8, seed=7, width=64, height=64)
    plain = run_generate(base, out / "generated", on_event)
    controlled = run_generate(base.model_copy(update={"controls": [
        ControlRef(type="canny", image=str(photo), model=str(controlnet))]}), out / "generated", on_event)
    changed = np.abs(np.asarray(_rgb(plain[0]), np.int16) - np.asarray(_rgb(controlled[0]), np.int16)).mean()
    text = (f"`personae detect canny` drew the edge map of a star; `personae generate --control canny:"
            f"{photo.name} --controlnet canny={controlnet.name}` used it with a tiny ControlNet (seed 7, 8 steps): "
            f"without control (left of the pair) and with it (mean pixel change {changed:.1f}). The PNG's "
            "infotext carries A1111's \"ControlNet 0\" entry.")
    return "ControlNet", text, [photo, control_map, plain[0], controlled[0]]


def _rgb(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")
