"""`personae generate`: settings in, PNGs with A1111 metadata out; and reading settings back from a PNG."""

from __future__ import annotations

import json
import re
from pathlib import Path

from personae.config.base import parse_settings
from personae.config.generate import GenerateSettings
from personae.errors import UserError
from personae.events import EventHandler, Message, ignore
from personae.inference.txt2img import GeneratedImage, txt2img
from personae.media.png import parse_parameters, read_png_text, save_png

_NUMBERED = re.compile(r"^(\d{5})-")


def next_index(out_dir: Path) -> int:
    """A1111 numbers images 00000-<seed>.png onwards; continue after what the folder holds."""
    numbers = [int(m.group(1)) for p in out_dir.glob("*.png") if (m := _NUMBERED.match(p.name))]
    return max(numbers, default=-1) + 1


def save_images(images: list[GeneratedImage], out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = next_index(out)
    return [save_png(img.image, out / f"{start + i:05d}-{img.seed}.png", img.parameters, img.png_text())
            for i, img in enumerate(images)]


def run_generate(settings: GenerateSettings, out_dir: str | Path, on_event: EventHandler = ignore) -> list[Path]:
    paths = save_images(txt2img(settings, on_event=on_event), out_dir)
    on_event(Message(f"wrote {len(paths)} image{'s' * (len(paths) != 1)} to {Path(out_dir)}"))
    return paths


def _from_infotext(text: str) -> dict:
    """Generate settings from A1111 infotext (a PNG made by A1111 or another tool)."""
    prompt, negative, p = parse_parameters(text)
    prompt = re.sub(r"\s*<lora:[^>]+>", "", prompt)  # LoRAs are files here: pass them with --lora
    data: dict = {"prompt": prompt, "negative": negative}
    if "Steps" in p:
        data["steps"] = int(p["Steps"])
    if "CFG scale" in p:
        data["cfg"] = float(p["CFG scale"])
    if "Seed" in p:
        data["seed"] = int(p["Seed"])
    if "Size" in p and "x" in p["Size"]:
        data["width"], data["height"] = (int(v) for v in p["Size"].split("x"))
    if "Denoising strength" in p:
        data["strength"] = float(p["Denoising strength"])
    if "Clip skip" in p:
        data["clip_skip"] = int(p["Clip skip"])
    if "Sampler" in p:
        sampler, schedule = p["Sampler"], p.get("Schedule type", "")
        if schedule and schedule.lower() not in ("automatic", "") and schedule.lower() not in sampler.lower():
            sampler = f"{sampler} {schedule}"
        data["sampler"] = sampler
    return data


def settings_from_png(path: str | Path) -> dict:
    """The settings stored in a PNG: personae's own chunk if present, else A1111's `parameters`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--from-png: {path} does not exist.")
    try:
        text = read_png_text(path)
    except OSError as exc:
        raise UserError(f"--from-png: {path} is not a readable PNG ({exc}).") from None
    if "personae" in text:
        data = json.loads(text["personae"])
        data.pop("allow_pickle", None)  # a file never widens what the user allowed on the command line
        parse_settings(GenerateSettings, data, f"the settings stored in {path}")  # validate early
        return data
    if "parameters" in text:
        return _from_infotext(text["parameters"])
    raise UserError(f"{path} carries no generation settings (no `parameters` text chunk).",
                    "Use a PNG written by personae, AUTOMATIC1111 or another tool that stores A1111 infotext.")
