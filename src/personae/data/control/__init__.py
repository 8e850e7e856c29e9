"""Control maps for ControlNet: one module per type, one registry line each (no torch here).

    control = detect_control("canny", photo, {"low": 50})   # a PIL image: white edges on black

A type names how a photo becomes the picture a ControlNet was trained on (edges, face
landmarks, a pose skeleton), the A1111 preprocessor ("Module") it matches, and the
public ControlNet that reads it, used when the user names no model. Weights come from
packages only (OpenCV, MediaPipe 0.10.21), so every type works offline.
Depth and the learned lineart / soft-edge detectors are absent on purpose: no registry package ships their models;
A1111's model-free preprocessors are here (model_free.py).
"""

from __future__ import annotations

from PIL import Image

from personae.data.control import canny, face, inpaint, model_free, pose, raw, shuffle
from personae.data.control.base import ControlType
from personae.errors import UserError, did_you_mean

CONTROL_TYPES: dict[str, ControlType] = {t.name: t for t in [
    canny.CANNY,
    face.FACE,
    pose.POSE,
    raw.RAW,
    shuffle.SHUFFLE,
    *model_free.TYPES,
    inpaint.INPAINT,
    inpaint.INPAINT_ONLY,
]}


def get_control_type(name: str) -> ControlType:
    """A control type by name; an unknown one is an error that lists the valid types."""
    found = CONTROL_TYPES.get(name.strip().lower())
    if found is None:
        raise UserError(f'Unknown control type "{name}".{did_you_mean(name, CONTROL_TYPES)}',
                        "Valid types: " + ", ".join(CONTROL_TYPES) + ".")
    return found


def detect_control(name: str, image: Image.Image, options: dict[str, float] | None = None,
                   where: str = "the image", seed: int = 0) -> Image.Image:
    """The control map of `image` for control type `name` (an RGB image of the same size); `seed`: the numpy seed
    a seeded type draws from (shuffle.numpy_seed of the picture's seed)."""
    control_type = get_control_type(name)
    options = control_type.check_options(options or {})
    if control_type.seeded:
        return control_type.detect(image.convert("RGB"), options, where, seed)
    return control_type.detect(image.convert("RGB"), options, where)


def option_values(items, where: str) -> dict[str, float]:
    """Preprocessor options typed as KEY=NUMBER items (detect's --option, the web UI's options field)."""
    options = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        try:
            number = float(value)
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            raise UserError(f'{where} "{str(item).strip()}" is not KEY=NUMBER.', "Write it as low=50.")
        options[key.strip()] = number
    return options


def processed_map(name: str, photo: Image.Image, res: int, options: dict[str, float] | None = None,
                  where: str = "the image", seed: int = 0) -> Image.Image:
    """A1111's preprocessing of `photo` for control type `name`: scaled to `res` on its short side (and padded to a
    multiple of 64, for the preprocessors the extension pads for), the map cut back; a type the extension runs on the
    photo as it is gets it so; the "none" module (raw) and inpaint take the photo as the map itself."""
    import numpy as np

    from personae.data.control.fit import processor_input

    control_type = get_control_type(name)
    if control_type.a1111_module == "none" or control_type.masked:  # inpaint: its mask is marked at generation
        return photo.convert("RGB")
    if not control_type.scaled:  # the preprocessor takes the photo as it is (tile_resample, invert, recolor)
        return detect_control(name, photo, options, where=where, seed=seed).convert("RGB")
    padded, unpad = processor_input(photo, res)
    image = padded if control_type.padded else unpad(padded)
    made = np.asarray(detect_control(name, Image.fromarray(image), options, where=where, seed=seed).convert("RGB"))
    return Image.fromarray(unpad(made) if control_type.padded else made)


__all__ = ["CONTROL_TYPES", "ControlType", "detect_control", "get_control_type", "option_values", "processed_map"]
