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

from personae.errors import UserError
from personae.hub import require_hub

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


class TransformersCaptioner:
    """Any transformers image-to-text model with a processor (BLIP, BLIP-2, GIT, Florence-2...)."""

    def __init__(self, name_or_path: str, device: str = "cpu", max_new_tokens: int = 40, prompt: str | None = None):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.name = name_or_path
        local = Path(name_or_path).expanduser()
        local_only = local.is_dir()
        if not local_only and (name_or_path.startswith((".", "/", "~")) or local.suffix):
            raise UserError(f'Captioner "{name_or_path}" was not found.', "Pass a model folder or a hub id.")
        if not local_only:
            try:  # the local cache first, else one quick check that the hub answers
                AutoProcessor.from_pretrained(name_or_path, local_files_only=True)
            except OSError:
                require_hub(name_or_path, "captioner", "pass its folder with --captioner ./folder, "
                                                       "or use the offline default --captioner filename.")
        try:
            source = str(local) if local_only else name_or_path
            self.processor = AutoProcessor.from_pretrained(source, local_files_only=local_only)
            self.model = AutoModelForImageTextToText.from_pretrained(source, local_files_only=local_only).to(device).eval()
        except OSError as exc:
            raise UserError(
                f'Captioner "{name_or_path}" could not be loaded ({str(exc).splitlines()[0]}).',
                "With no network, download the model elsewhere and pass its folder with --captioner ./folder, "
                "or use the offline default --captioner filename.",
            ) from None
        self.device, self.max_new_tokens, self.prompt = device, max_new_tokens, prompt
        self._torch = torch

    def caption(self, images, paths):
        kwargs = {"text": [self.prompt] * len(images)} if self.prompt else {}
        inputs = self.processor(images=images, return_tensors="pt", **kwargs).to(self.device)
        with self._torch.no_grad():
            ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        texts = self.processor.batch_decode(ids, skip_special_tokens=True)
        if self.prompt:
            texts = [t[len(self.prompt):] if t.startswith(self.prompt) else t for t in texts]
        return [" ".join(t.split()) for t in texts]


def get_captioner(spec: str) -> Captioner:
    if spec == "filename":
        return FilenameCaptioner()
    if spec == "none":
        return NoCaptioner()
    return TransformersCaptioner(spec)
