"""A1111's ControlNet units in infotext (sd-webui-controlnet), read and written.

    "ControlNet 0": "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1, Resize Mode: Crop and
    Resize, Low Vram: False, Processor Res: 512, Threshold A: 100, Threshold B: 200, Guidance Start: 0, Guidance End:
    1, Pixel Perfect: False, Control Mode: Balanced, Hr Option: Both"

`read_unit` gives the unit's fields by the extension's names, from that form and from the older ones still in
PNGs: "preprocessor: canny, model: ..., weight: 1, starting/ending: (0, 1), resize mode: ..., pixel perfect:
False, control mode: Balanced, preprocessor params: (512, 100, 200)" (v1.1.2xx). The picture the unit read is
not in the text. `model_id` turns the file name the extension shows into what personae loads: lllyasviel's public
ControlNets by their hub ids.
"""

from __future__ import annotations

import re
from pathlib import PureWindowsPath

# the fields personae writes, in the extension's order (its ControlNetUnit)
FIELDS = ("Module", "Model", "Weight", "Resize Mode", "Low Vram", "Processor Res", "Threshold A", "Threshold B",
          "Guidance Start", "Guidance End", "Pixel Perfect", "Control Mode", "Hr Option")
_LEGACY = {"preprocessor": "Module", "model": "Model", "weight": "Weight", "resize mode": "Resize Mode",
           "pixel perfect": "Pixel Perfect", "control mode": "Control Mode", "hr option": "Hr Option"}
_PAIR = re.compile(r"\(\s*([^()]*?)\s*\)")
_HASH = re.compile(r"\s*\[[0-9a-fA-F]{6,64}\]\s*$")
_V11 = re.compile(r"^control_v11[a-z0-9]*_sd15[a-z0-9]*_[a-z0-9_]+$")  # lllyasviel/ControlNet-v1-1's files
_V10 = re.compile(r"^control_sd15_(canny|depth|hed|mlsd|normal|openpose|scribble|seg)$")  # ControlNet 1.0's


class UnitTextError(ValueError):
    """A unit's text that is not one of the extension's forms."""


def _items(text: str) -> list[tuple[str, str]]:
    """`key: value` items split on the commas outside parentheses."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text + ","):
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            part = text[start:i].strip()
            start = i + 1
            if not part:
                continue
            key, colon, value = part.partition(":")
            if not colon:
                raise UnitTextError(f"{part!r} is not `name: value`")
            items.append((key.strip(), value.strip()))
    return items


def read_unit(text: str) -> dict[str, str]:
    """A unit's fields by the extension's display names ("Module", "Guidance Start", ...), values as written."""
    items = _items(text.strip().strip('"'))
    if not items:
        raise UnitTextError("it is empty")
    if not any(key[:1].islower() for key, _ in items):
        return dict(items)
    fields = {}
    for key, value in items:  # the older form: lower-case names, pairs in parentheses
        key = key.lower()
        if key in _LEGACY:
            fields[_LEGACY[key]] = value
        elif key == "starting/ending":
            pair = _PAIR.fullmatch(value)
            start, _, end = (pair.group(1) if pair else "").partition(",")
            if not pair or not end:
                raise UnitTextError(f"starting/ending {value!r} is not a pair (START, END)")
            fields.update({"Guidance Start": start.strip(), "Guidance End": end.strip()})
        elif key == "preprocessor params":
            pair = _PAIR.fullmatch(value)
            if not pair:
                raise UnitTextError(f"preprocessor params {value!r} is not (RES, A, B)")
            for name, number in zip(("Processor Res", "Threshold A", "Threshold B"), pair.group(1).split(",")):
                if number.strip() not in ("-1", "-1.0"):  # the extension's "not used"
                    fields[name] = number.strip()
        else:
            fields[key.title()] = value
    return fields


def model_name(shown: str) -> str:
    """The file name the extension shows, without its "[hash]"."""
    return _HASH.sub("", shown).strip()


def model_id(shown: str) -> str | None:
    """The hub id of one of lllyasviel's public ControlNets named as the extension shows it (the 1.1 files by
    their own repositories, the 1.0 files by their diffusers conversions); None for any other model."""
    name = model_name(shown)
    stem = re.sub(r"(\.fp16)?\.(safetensors|pth|ckpt|bin)$", "", name, flags=re.IGNORECASE)
    if _V11.match(stem):
        return f"lllyasviel/{stem}"
    found = _V10.match(stem)
    return f"lllyasviel/sd-controlnet-{found.group(1)}" if found else None


def pools_by_name(name: str) -> bool:
    """Whether A1111's ControlNet extension averages a single-file ControlNet's control over the picture (global
    average pooling, ControlNet 1.1's shuffle model): it does for every file with "shuffle" in its name. ComfyUI does
    it only for names ending in "_shuffle" (or "_shuffle_fp16"), as ControlNet 1.1's own file names do."""
    return "shuffle" in PureWindowsPath(name).name.rsplit(".", 1)[0].lower()  # either separator: a path from any OS


def write_unit(fields: dict[str, str]) -> str:
    """A unit's infotext value in the extension's order (fields it lacks are left out)."""
    return ", ".join(f"{key}: {fields[key]}" for key in FIELDS if key in fields)
