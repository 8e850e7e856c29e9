"""`raw`: the image already is a control map (made elsewhere, or by `personae detect`)."""

from __future__ import annotations

from PIL import Image

from personae.data.control.base import ControlType


def _as_is(image: Image.Image, options: dict[str, float], where: str) -> Image.Image:
    return image


RAW = ControlType("raw", _as_is, "the image is used as the control map unchanged (needs --controlnet raw=MODEL)",
                  a1111_module="none", default_model=None)
