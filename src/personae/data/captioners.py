"""Captioners behind one small interface: `caption(images, paths) -> list[str]`.

- "filename" (default, offline): words from the file name, camera prefixes and numbers dropped;
- "none": no caption beyond the template;
- `wd14:FOLDER_OR_HUB_ID`: a WD14-style ONNX tagger (booru tags), run by models/wd14.py;
- a folder or hub id of a BLIP / BLIP-2 / Florence-2 image-to-text model, loaded
  with transformers (a hub id needs network or the local cache; offline it fails fast
  and says to pass a folder).
A new captioner is a class with `name` and `caption`, plus one line in `get_captioner`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

from PIL import Image

# Names cameras, phones and apps give files: they say nothing about the picture. A word that is one of these, or
# one of them glued to a number (IMG1234, DSCN0001, GOPR0001, P1000123, WA0001, image0), marks a camera-style name.
_CAMERA = re.compile(r"^(img|imag|image|dsc|dscn|dscf|dcim|pxl|mvimg|pano|vid|dji|gopr|gp|mg|sam|pict|picture|pic|"
                     r"photo|foto|screenshot|scan|signal|whatsapp|telegram|snapchat|wp|wa|e|p)\d*$", re.I)
_WORDS = {"image", "picture", "pic", "photo", "foto", "screenshot", "scan"}  # kept in a name that says more
# Words that remain of a camera-style name once its numbers are gone ("WhatsApp Image 2024-01-01 at 10.00.00",
# "Copy of IMG_1234", "PXL_20240101_123456.MP", "IMG_..._HDR", "_MG_1234.CR2"): such a name gives no caption.
_CAMERA_FILLER = {"at", "of", "copy", "mp", "hdr", "cr2", "nef", "arw", "raw", "burst", "cover", "edited", "edit",
                  "original", "night", "portrait", "bokeh", "top", "pm", "am", "jpg", "jpeg", "heic", "png", "final"}


class Captioner(Protocol):
    name: str

    def caption(self, images: list[Image.Image], paths: list[Path]) -> list[str]: ...


class NoCaptioner:
    name = "none"

    def caption(self, images, paths):
        return ["" for _ in paths]


def filename_caption(stem: str) -> str:
    """"red_dress-03" -> "red dress"; camera-style names ("IMG_2041", "PXL_20240101_123456789", "WhatsApp Image
    2024-01-01 at 10.00.00", "12345") -> "": they would teach the model a camera's numbering, not the picture."""
    words = [w.lower() for w in re.split(r"[\s_\-.,()\[\]]+", stem) if w]
    camera = any(_CAMERA.match(w) for w in words)
    kept = [w for w in words if (w in _WORDS or not _CAMERA.match(w)) and sum(c.isdigit() for c in w) < 2
            and not re.fullmatch(r"\d+[a-z]?", w)]
    if (camera and all(w in _CAMERA_FILLER or _CAMERA.match(w) for w in kept)) or len("".join(kept)) < 2:
        return ""
    return " ".join(kept)


class FilenameCaptioner:
    """"red_dress-03.jpg" -> "red dress"; "IMG_2041.JPG" -> "" (see `filename_caption`)."""

    name = "filename"

    def caption(self, images, paths):
        return [filename_caption(path.stem) for path in paths]


SIMPLE = {"filename": FilenameCaptioner, "none": NoCaptioner}  # captioners that need no model


def get_captioner(spec: str) -> Captioner:
    """The captioner named `spec` when it needs no model; a model captioner (a folder or hub id) is loaded by
    `personae.models.captioners.load_captioner` and handed to `prepare_dataset` (no model loading here)."""
    if spec in SIMPLE:
        return SIMPLE[spec]()
    raise ValueError(f"captioner {spec!r} needs a model: load it with personae.models.captioners.load_captioner "
                     "and pass it to prepare_dataset(captioner=...)")
