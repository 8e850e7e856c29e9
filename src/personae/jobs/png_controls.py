"""An A1111 PNG's ControlNet units ("ControlNet 0: ..."), or a ComfyUI PNG's ControlNet nodes, taken by `--from-png`
with the pictures given on the command line.

A PNG carries every setting of a unit but the picture it read. `--from-png x.png --control canny:photo.png` gives
unit 0 that picture: the PNG's unit supplies its model, weight, thresholds, resize and control modes, processor
resolution, guidance window and Low VRAM, and what the command line types (a weight after the picture, --control-mode,
--controlnet ...) overrides them. The i-th --control fills the i-th unit when their types agree (or the PNG's
preprocessor is one personae lacks: a ready map given as `raw` then runs with the unit's model); another type
replaces the unit. A unit left without a picture is not applied, and said.

The extension's IP-Adapter units (Module "ip-adapter_clip_sd15" and the like) are personae's --ip-adapter units:
`png_ip_units` gives them, in order, to the --ip-adapter pictures typed (the i-th picture to the i-th of them), with
their weight, guidance window and adapter (by its name, h94/IP-Adapter's file of that name unless
--ip-adapter-model says otherwise); the ControlNet units are numbered without them.
"""

from __future__ import annotations

from pathlib import Path

from personae.data.control import CONTROL_TYPES
from personae.errors import UserError
from personae.media.comfy_graph import read_comfy_graph
from personae.media.controlnet_text import UnitTextError, model_id, model_name, read_unit
from personae.media.png import parse_parameters, read_image_text

_TYPE_OF = {module: name for name, t in CONTROL_TYPES.items()  # "canny" -> canny, "none" -> raw, ...
            for module in (t.a1111_module, *t.aliases)}
_MODES = {"Resize Mode": "resize_mode", "Control Mode": "control_mode", "Hr Option": "hr_option"}
_NUMBERS = {"Weight": "weight", "Guidance Start": "guidance_start", "Guidance End": "guidance_end"}
_FLAGS = {"Pixel Perfect": "pixel_perfect", "Low Vram": "low_vram"}
_PLACED = {"Module", "Model", "Processor Res", "Threshold A", "Threshold B", *_MODES, *_NUMBERS, *_FLAGS}
_OUTPUT = {"Save Detected Map"}  # whether the extension showed the map beside the pictures: not the picture's


def _unit_keys(params: dict) -> list[str]:
    keys = sorted((k for k in params if k.startswith("ControlNet ") and k[11:].isdigit()), key=lambda k: int(k[11:]))
    return keys


def _number(fields: dict, key: str, source, where: str, kind=float):
    try:
        return kind(float(fields[key])) if kind is int else kind(fields[key])
    except ValueError:
        raise UserError(f'--from-png: {source} stores {where} with "{key}: {fields[key][:20]}", which is not a number.',
                        "Pass the unit's settings on the command line instead.") from None


def _is_ip(fields: dict[str, str]) -> bool:
    return fields.get("Module", "").startswith("ip-adapter") or model_name(fields.get("Model", "")).startswith(
        "ip-adapter")


def ip_unit_settings(fields: dict[str, str], source, where: str, index: int) -> dict:
    """An IP-Adapter unit's IpAdapterRef fields (no picture); "_module", "_model", "_index" keep what the PNG named."""
    module, shown = fields.get("Module", ""), fields.get("Model", "")
    name = model_name(shown) if shown and shown != "None" else ""
    unit: dict = {"_ip": True, "_module": module, "_model": shown, "_index": index,
                  "_faceid": "face_id" in module or "faceid" in name.lower(),
                  "_unplaced": [f"{key}: {value}" for key, value in fields.items()
                                if key not in {"Module", "Model", "Weight", "Guidance Start", "Guidance End"} | _OUTPUT
                                and not _at_extension_default(key, value)]}
    if name:
        unit["model"] = f"h94/IP-Adapter/{'sdxl_models' if 'sdxl' in name else 'models'}/{name}.safetensors"
    if module == "ip-adapter_clip_sdxl":  # the ViT-bigG encoder
        unit["image_encoder"] = "h94/IP-Adapter/sdxl_models/image_encoder"
    for key, field in (("Weight", "weight"), ("Guidance Start", "guidance_start"), ("Guidance End", "guidance_end")):
        if key in fields:
            unit[field] = _number(fields, key, source, where)
    return unit


def _at_extension_default(key: str, value: str) -> bool:
    """A unit field the extension writes for every unit, at a value that changes nothing for an IP-Adapter."""
    return value in ("", "None", "False") or (key, value) in {
        ("Resize Mode", "Crop and Resize"), ("Control Mode", "Balanced"), ("Hr Option", "Both")} or \
        key in ("Processor Res", "Threshold A", "Threshold B")


def unit_settings(fields: dict[str, str], source, where: str) -> dict:
    """A unit's ControlRef fields (no picture) from its infotext fields; "_module" and "_model" keep what the PNG
    named, "_unplaced" the fields that set what personae does not (a newer extension's or another fork's; one that is
    off or empty changes nothing), for what is said."""
    module, shown = fields.get("Module", "none"), fields.get("Model", "")
    unit: dict = {"_module": module, "_model": shown,
                  "_unplaced": [f"{key}: {value}" for key, value in fields.items()
                                if key not in _PLACED | _OUTPUT and value not in ("", "None", "False")]}
    kind = _TYPE_OF.get(module)
    if kind:
        unit["type"] = kind
    hub = model_id(shown) if shown and shown != "None" else None
    if hub:
        unit["model"] = hub
    for key, name in _NUMBERS.items():
        if key in fields:
            unit[name] = _number(fields, key, source, where)
    if "Processor Res" in fields:
        res = _number(fields, "Processor Res", source, where, int)
        if res > 0:
            unit["processor_res"] = res
    for key, name in _MODES.items():
        if key in fields:
            unit[name] = fields[key]
    for key, name in _FLAGS.items():
        if key in fields:
            unit[name] = fields[key] == "True"
    if kind:  # thresholds are the preprocessor's options, in its order (canny: low, high)
        options = {}
        for key, option in zip(("Threshold A", "Threshold B"), CONTROL_TYPES[kind].options):
            if key in fields and float(_number(fields, key, source, where)) != -1:
                options[option] = _number(fields, key, source, where)
        if options:
            unit["options"] = options
    return unit


def comfy_unit(unit: dict) -> dict:
    """A ComfyUI graph's unit (media/comfy_controls.py) as ControlRef fields (no picture); "_module", "_model" and
    "_picture" keep what the graph named, for what is said."""
    kind = _TYPE_OF[unit["module"]]
    out = {"_module": unit["module"], "_model": unit["model"], "_picture": unit["picture"], "type": kind,
           "weight": unit["weight"], "guidance_start": unit["guidance_start"], "guidance_end": unit["guidance_end"],
           "guidance_by": unit["guidance_by"], "hr_option": unit["hr_option"]}
    hub = model_id(unit["model"])
    if hub:
        out["model"] = hub
    if unit["thresholds"]:
        out["options"] = dict(zip(CONTROL_TYPES[kind].options, unit["thresholds"]))
    return out


def png_control_units(path: str | Path) -> list[dict]:
    """The ControlNet units an A1111 PNG's infotext or a ComfyUI PNG's graph stores, in order (none for personae's
    own PNGs, whose units are read whole); IP-Adapter units are png_ip_units'."""
    text = read_image_text(Path(path))
    if "personae" not in text and "parameters" not in text and "prompt" in text:
        return [comfy_unit(unit) for unit in read_comfy_graph(text["prompt"], str(path)).units]
    return [unit for unit in _a1111_units(path, text) if "_ip" not in unit]


def png_ip_units(path: str | Path) -> list[dict]:
    """The IP-Adapter units an A1111 PNG's infotext stores, in order."""
    return [unit for unit in _a1111_units(path, read_image_text(Path(path))) if "_ip" in unit]


def _a1111_units(path, text: dict) -> list[dict]:
    if "personae" in text or "parameters" not in text:
        return []
    _, _, params = parse_parameters(text["parameters"])
    units = []
    for key in _unit_keys(params):
        try:
            fields = read_unit(params[key])
        except UnitTextError as exc:
            raise UserError(f'--from-png: {path} stores "{key}" in a form personae cannot read ({exc}).',
                            "Pass the unit's settings on the command line instead.") from None
        index = int(key[11:])
        units.append(ip_unit_settings(fields, path, f'"{key}"', index) if _is_ip(fields) else
                     {**unit_settings(fields, path, f'"{key}"'), "_index": index})
    return units


def with_png_ip_units(units: list[dict], typed: list[dict]) -> list[dict]:
    """The IP-Adapter units a run uses: the i-th --ip-adapter typed over the PNG's i-th IP-Adapter unit that
    personae runs (FaceID units take no picture: they are said, not run)."""
    runs = [u for u in units if not u["_faceid"]]
    return [{**{k: v for k, v in runs[i].items() if not k.startswith("_")}, **unit} if i < len(runs) else unit
            for i, unit in enumerate(typed)]


def ip_units_not_applied(units: list[dict], ip_adapters: list) -> list[str]:
    """What of the PNG's IP-Adapter units this run does not do as the PNG did."""
    said, i = [], 0
    for unit in units:
        name = f"ControlNet {unit['_index']} (Module {unit['_module']}, Model {unit['_model'] or 'None'})"
        if unit["_faceid"]:
            said.append(f"{name} (an IP-Adapter FaceID, which reads a face embedding from insightface: personae does "
                        "not run it)")
            continue
        i += 1
        if i > len(ip_adapters):
            said.append(f"{name} (no picture: pass it with --ip-adapter IMAGE, in the units' order)")
        elif unit.get("_unplaced"):
            said.append(f"{name} ({', '.join(unit['_unplaced'])}: not a setting personae has for an IP-Adapter)")
    return said


def with_png_units(units: list[dict], typed: list[dict]) -> list[dict]:
    """The units a run uses: each typed --control over the PNG's unit at its place when their types agree (or the
    PNG's preprocessor is one personae lacks); else the typed unit alone."""
    merged = []
    for i, unit in enumerate(typed):
        stored = units[i] if i < len(units) else None
        if stored is not None and stored.get("type", unit.get("type")) == unit.get("type"):
            own = {k: v for k, v in stored.items() if not k.startswith("_") and k != "type"}
            merged.append({**own, **unit})
        else:
            merged.append(unit)
    return merged


def units_not_applied(units: list[dict], controls: list) -> list[str]:
    """What of the PNG's units this run does not do as the PNG did: a unit with no picture given, a unit replaced
    by another type, a preprocessor personae lacks, a model it cannot name, a setting it has not."""
    said = []
    for i, unit in enumerate(units):
        name = f"ControlNet {unit.get('_index', i)} (Module {unit['_module']}, Model {unit['_model'] or 'None'})"
        if i >= len(controls):
            read = f' (ComfyUI read "{unit["_picture"]}")' if unit.get("_picture") else ""
            said.append(f"{name} (no picture: pass it with --control TYPE:IMAGE, in the units' order{read})")
            continue
        ref = controls[i]
        if "type" in unit and unit["type"] != ref.type:
            said.append(f"{name} (replaced by --control {ref.type})")
            continue
        if "type" not in unit:
            said.append(f"{name} (a preprocessor personae lacks: the picture is read as --control {ref.type})")
        if "model" not in unit and unit["_model"] not in ("", "None") and \
                model_name(unit["_model"]) not in (Path(ref.model or "").stem, Path(ref.model or "").name):
            said.append(f"{name} (that ControlNet is not one personae can name: this run uses "
                        f"{ref.model or 'the type default'}; pass the file with --controlnet {ref.type}=PATH)")
        if unit.get("_unplaced"):
            said.append(f"{name} ({', '.join(unit['_unplaced'])}: not a setting personae has)")
    return said
