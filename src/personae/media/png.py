"""PNG files that carry their generation settings.

The `parameters` text chunk uses AUTOMATIC1111's infotext layout, so A1111's "PNG Info"
tab, ComfyUI and image sites read it:

    <prompt>
    Negative prompt: <negative>
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model: name, ...

personae also stores its full settings as JSON in a `personae` chunk, so `--from-png`
reproduces its own images exactly, including file paths of LoRAs and embeddings.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from personae.staging import atomic_file

_PARAM = re.compile(r'\s*([\w][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def format_number(value: float) -> str:
    """7.0 -> '7', 7.5 -> '7.5' (as A1111 shows CFG scale)."""
    return f"{value:g}"


def format_parameters(prompt: str, negative: str, params: dict[str, object]) -> str:
    """A1111 infotext. Values with commas or quotes are quoted, as A1111 does."""
    parts = []
    for key, value in params.items():
        if value is None or value == "":
            continue
        text = format_number(value) if isinstance(value, float) else str(value)
        if any(c in text for c in ',:"\n'):
            text = json.dumps(text, ensure_ascii=False)
        parts.append(f"{key}: {text}")
    lines = [prompt]
    if negative:
        lines.append(f"Negative prompt: {negative}")
    lines.append(", ".join(parts))
    return "\n".join(lines)


def parse_parameters(text: str) -> tuple[str, str, dict[str, str]]:
    """Split A1111 infotext into (prompt, negative prompt, {key: value})."""
    lines = text.strip().split("\n")
    params: dict[str, str] = {}
    if lines and len(_PARAM.findall(lines[-1])) >= 3:
        for key, value in _PARAM.findall(lines.pop()):
            value = value.strip()
            if value.startswith('"') and value.endswith('"'):
                value = json.loads(value)
            params[key.strip()] = value
    prompt_lines, negative_lines, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].lstrip()
        (negative_lines if in_negative else prompt_lines).append(line)
    return "\n".join(prompt_lines), "\n".join(negative_lines), params


def save_png(image: Image.Image, path: str | Path, parameters: str, extra: dict[str, str] | None = None) -> Path:
    """Write `image` with the `parameters` chunk (and any extra text chunks), atomically."""
    path = Path(path)
    info = PngInfo()
    info.add_text("parameters", parameters)
    for key, value in (extra or {}).items():
        info.add_text(key, value)
    with atomic_file(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return path


def read_png_text(path: str | Path) -> dict[str, str]:
    """The text chunks of a PNG (empty when there are none)."""
    with Image.open(path) as image:
        image.load()
        return dict(getattr(image, "text", {}) or {})
