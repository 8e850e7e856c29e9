"""Captioners behind one small interface: `caption(images, paths) -> list[str]`.

- "filename" (default, offline): words from the file name, camera prefixes and numbers dropped;
- "none": no caption beyond the template;
- a folder or hub id of a BLIP / BLIP-2 / Florence-style image-to-text model, loaded
  with transformers (a hub id needs network or the local cache; offline it fails fast
  and says to pass a folder).
A new captioner is a class with `name` and `caption`, plus one line in `get_captioner`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

from PIL import Image

_CAMERA = re.compile(r"^(img|dsc|dscn|dcim|pxl|mvimg|photo|image|screenshot|scan|vid|p)$", re.I)


class Captioner(Protocol):
    name: str

    def caption(self, images: list[Image.Image], paths: list[Path]) -> list[str]: ...


class NoCaptioner:
    name = "none"

    def caption(self, images, paths):
        return ["" for _ in paths]


class FilenameCaptioner:
    """"red_dress-03.jpg" -> "red dress"; "IMG_2041.JPG" -> ""."""

    name = "filename"

    def caption(self, images, paths):
        out = []
        for path in paths:
            words = [w for w in re.split(r"[\s_\-.()\[\]]+", path.stem) if w]
            words = [w for w in words if not w.isdigit() and not _CAMERA.match(w) and not re.fullmatch(r"\d+[a-z]?", w, re.I)]
            out.append(" ".join(words).lower())
        return out


SIMPLE = {"filename": FilenameCaptioner, "none": NoCaptioner}  # captioners that need no model


def get_captioner(spec: str) -> Captioner:
    """The captioner named `spec` when it needs no model; a model captioner (a folder or hub id) is loaded by
    `personae.models.captioners.load_captioner` and handed to `prepare_dataset` (no model loading here)."""
    if spec in SIMPLE:
        return SIMPLE[spec]()
    raise ValueError(f"captioner {spec!r} needs a model: load it with personae.models.captioners.load_captioner "
                     "and pass it to prepare_dataset(captioner=...)")
