"""Shared machinery for settings schemas.

Every schema subclasses `Strict`: unknown keys are errors (a typo in a job file names
the key and the nearest valid one), values are validated once, and persisted files
carry a `version` that `parse_settings` migrates forward, one function per version.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from personae.errors import UserError, nearest

T = TypeVar("T", bound="Strict")


class _Loader(yaml.SafeLoader):
    """Safe YAML with YAML 1.2's scalars: only true / false are booleans (`label: no`, `shot: on` stay the words
    written; a bool setting still takes yes / no / on / off, as text) and 1e-4 is a number, as users mean them."""


_BOOL, _FLOAT = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:float"
_Loader.yaml_implicit_resolvers = {first: [r for r in rules if r[0] != _BOOL]
                                   for first, rules in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(_FLOAT, re.compile(r"^[-+]?(?:[0-9][0-9_]*)?\.?[0-9]+[eE][-+]?[0-9]+$"),
                              list("-+0123456789."))


def parse_yaml(text: str) -> Any:
    """YAML text as every personae settings file is read (see `_Loader`); raises yaml.YAMLError."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass: no objects, no code)


class Strict(BaseModel):
    """A settings schema: unknown keys rejected, assignment validated."""

    # NaN and infinity are never a setting (a LoRA weight of nan draws a black image)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)

    # The newest version of this schema, and how to lift an older dict to the next one:
    # MIGRATIONS[n] turns a version-n dict into a version-(n+1) dict.
    VERSION: ClassVar[int] = 1
    MIGRATIONS: ClassVar[dict[int, Callable[[dict], dict]]] = {}


def check_template(template: str, fields: Iterable[str]) -> str:
    """A `{field}` template that str.format can fill from `fields`, or a ValueError naming the problem.

    Only plain `{name}` placeholders: no positions, attributes, indexes, conversions or format
    specs (`{caption:>999999999}` would build a gigabyte string).
    """
    fields = list(fields)
    valid = ", ".join("{" + f + "}" for f in fields)
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{exc} (write a literal brace as {{{{ or }}}}; placeholders: {valid})") from None
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in fields:
            hint = nearest(name, fields) if name else None
            raise ValueError(f'unknown placeholder "{{{name}}}"' + (f' (did you mean "{{{hint}}}"?)' if hint else "")
                             + f"; placeholders: {valid}")
        if spec or conversion:
            raise ValueError(f'"{{{name}}}" must be a plain placeholder, without ! or : parts')
    return template


def _fields_at(cls: type[BaseModel], loc: tuple) -> list[str]:
    """Valid key names at the location of an error (for 'did you mean')."""
    model: Any = cls
    for part in loc[:-1]:
        if isinstance(part, int):  # an index into a list: the item type was taken already
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
        args = getattr(model, "__args__", ())
        for arg in args:  # Optional[Sub] / Sub | None
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                model = arg
    return list(getattr(model, "model_fields", {}))


def migrate(cls: type[Strict], data: dict, source: str) -> dict:
    """Bring a persisted dict up to `cls.VERSION` through the registered migrations."""
    version = data.get("version", cls.VERSION)
    if not isinstance(version, int) or version < 1:
        raise UserError(f"{source}: 'version' must be a positive whole number, got {version!r}.")
    if version > cls.VERSION:
        raise UserError(
            f"{source} has version {version}, newer than this personae understands (up to {cls.VERSION}).",
            "Upgrade personae, or write the file for the older version.",
        )
    while version < cls.VERSION:
        data = cls.MIGRATIONS[version](dict(data))
        version += 1
        data["version"] = version
    return data


def parse_settings(cls: type[T], data: Mapping[str, Any] | None, source: str = "settings") -> T:
    """Validate `data` against `cls`; a problem becomes one readable UserError."""
    data = dict(data or {})
    if "version" in cls.model_fields:
        data = migrate(cls, data, source)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            where = ".".join(str(p) for p in loc)
            if err["type"] == "extra_forbidden":
                hint = nearest(str(loc[-1]), _fields_at(cls, loc))
                problems.append(f'unknown key "{where}"' + (f' (did you mean "{hint}"?)' if hint else ""))
            else:  # a check of several keys together (a model validator) names its keys itself
                message = err["msg"].removeprefix("Value error, ").rstrip(".")
                problems.append(f'"{where}": {message}' if where else message)
        raise UserError(
            f"In {source}: " + "; ".join(problems) + ".",
            "Fix the key or value named above (see --help for the valid settings).",
        ) from None


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, with a clear error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist or is not a file.", "Check the path.")
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at position {exc.start}).",
                        "Save it as UTF-8 (any editor's \"Save as\" offers it).") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {exc}.", "Fix the syntax at the line shown.") from None
    except RecursionError:
        raise UserError(f"{path} is nested too deeply to be a settings file.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of settings (key: value), not {type(data).__name__}.")
    return data


def _yaml_value(raw: str) -> Any:
    """A --set value as YAML would read it, plus 1e-4 as a number (YAML 1.1 reads it as text)."""
    if not raw.strip():
        return ""
    try:
        value = parse_yaml(raw)
    except yaml.YAMLError:  # not YAML (e.g. "a: b: c"): the text as it was typed
        return raw
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def apply_overrides(data: dict, assignments: list[str]) -> dict:
    """Apply `--set a.b=value` overrides (values parsed as YAML) to a nested dict."""
    data = dict(data)
    for item in assignments:
        if "=" not in item:
            raise UserError(f'--set "{item}" has no "=".', "Write it as key=value, e.g. --set train.steps=100.")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[parts[-1]] = _yaml_value(raw)
    return data
