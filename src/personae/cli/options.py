"""Command-line options generated from a settings model (as transformers' HfArgumentParser does).

    add_settings_options(parser, GenerateSettings)        # --model, --prompt, --steps, ... with --help text
    data = settings_values(args, GenerateSettings)        # the options given, by field name

Each field becomes `--field-name` (or its declared `flag` and `aliases`), typed from its
annotation: Literal -> choices, bool -> a flag, `X | None` -> X, a list of references that
say how they are written on one word (`from_cli`, e.g. FILE[:WEIGHT]) -> a repeatable option.
The help text is the field's description plus its default. Options default to None ("not
given"), so what they override (a PNG's settings, a YAML file) shows through.
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from personae.config.fields import extra_of, grouped_fields


def flag_of(name: str, info: FieldInfo) -> str:
    return extra_of(info).get("flag") or "--" + name.replace("_", "-")


def _plain(annotation: Any) -> Any:
    """`X | None` -> X."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _one_word(parse):
    """A `from_cli` parser whose ValueError becomes argparse's one-line usage error."""
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


def _default_text(value: Any) -> str:
    if value is None or value == "" or value == [] or value == {} or isinstance(value, bool):
        return ""
    shown = f"{value:g}" if isinstance(value, float) else ",".join(map(str, value)) if isinstance(value, tuple) \
        else str(value)
    return f' (default "{shown}")' if " " in shown else f" (default {shown})"


def option_kwargs(name: str, info: FieldInfo) -> dict | None:
    """argparse keywords for one field, or None for a field the command line does not take (dicts, nested models)."""
    extra = extra_of(info)
    if extra.get("cli") is False:
        return None
    kind = _plain(info.annotation)
    default = None if info.is_required() else info.get_default(call_default_factory=True)
    help_text = ((info.description or name) + _default_text(default)).replace("%", "%%")
    kw: dict[str, Any] = {"dest": name, "default": None, "help": help_text}
    if "metavar" in extra:
        kw["metavar"] = extra["metavar"]
    if extra.get("text"):
        kw["type"] = str
    elif typing.get_origin(kind) is Literal:
        choices = list(typing.get_args(kind))
        kw.update(choices=choices, type=type(choices[0]))
    elif kind is bool:
        if default is False:
            kw["action"] = "store_true"
        elif default is True:
            kw["action"] = "store_false"
        else:
            kw["action"] = argparse.BooleanOptionalAction
    elif kind in (int, float, str):
        kw["type"] = kind
    elif isinstance(kind, type) and issubclass(kind, BaseModel) and hasattr(kind, "from_cli"):  # one reference
        kw.update(type=_one_word(kind.from_cli), metavar=kw.get("metavar", getattr(kind, "CLI_FORM", None)))
    elif typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        if isinstance(item, type) and issubclass(item, BaseModel):
            if not hasattr(item, "from_cli"):
                return None
            kw.update(type=_one_word(item.from_cli), metavar=kw.get("metavar", getattr(item, "CLI_FORM", None)))
        elif item in (int, float, str):
            kw["type"] = item
        else:
            return None
        kw["action"] = "append"
    else:
        return None
    return kw


def _chosen(title: str, name: str, groups: tuple[str, ...], names: tuple[str, ...]) -> bool:
    return (not groups and not names) or title in groups or name in names


def add_settings_options(parser: argparse.ArgumentParser, cls: type[BaseModel], *, groups: tuple[str, ...] = (),
                         names: tuple[str, ...] = ()) -> dict[str, argparse._ArgumentGroup]:
    """Add an option for each field of `cls` (only the concept groups named in `groups` and the fields named in
    `names`, when given), one `--help` section per concept; the sections by concept title, for options that belong
    beside them."""
    sections: dict[str, argparse._ArgumentGroup] = {}
    for title, name, info in grouped_fields(cls):
        if not _chosen(title, name, groups, names):
            continue
        kw = option_kwargs(name, info)
        if kw is None:
            continue
        if kw.get("action") == "store_false":
            flags = ["--no-" + flag_of(name, info).removeprefix("--")]
        else:
            flags = [flag_of(name, info), *extra_of(info).get("aliases", [])]
        if title not in sections:
            sections[title] = parser.add_argument_group(f"{title} options")
        sections[title].add_argument(*flags, **kw)
    return sections


def settings_values(args: Any, cls: type[BaseModel], *, groups: tuple[str, ...] = (),
                    names: tuple[str, ...] = ()) -> dict:
    """{field: value} for every option of `cls` (in `groups` / `names`, when given) given on the command line."""
    return {name: value for title, name, _ in grouped_fields(cls) if _chosen(title, name, groups, names)
            if (value := getattr(args, name, None)) is not None}


def add_set_option(parser: argparse.ArgumentParser, what: str = "a setting") -> None:
    """`--set KEY=VALUE` (repeatable; dotted keys reach nested settings, values read as YAML): any key of a
    settings file, from the command line (apply with config.base.apply_overrides)."""
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override {what}: a key of the file, dotted for a nested one (repeatable; the value is "
                             "read as YAML)")


def missing_required(cls: type[BaseModel], data: dict) -> str | None:
    """The flag of the first required field `data` leaves empty, in --help order."""
    for _, name, info in grouped_fields(cls):
        if info.is_required() and not data.get(name):
            return flag_of(name, info)
    return None


def _kind_text(annotation: Any) -> str:
    kind = _plain(annotation)
    if typing.get_origin(kind) is Literal:
        return " | ".join(str(c) for c in typing.get_args(kind))
    return ""


def _nested_model(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(the settings model a field holds, whether it is a list of them), or (None, False)."""
    kind = _plain(annotation)
    many = typing.get_origin(kind) is list
    if many:
        (kind,) = typing.get_args(kind)
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        return kind, many
    return None, False


def settings_lines(cls: type[BaseModel], prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, help) for every setting of a nested settings file, sections expanded, in declaration order."""
    lines: list[tuple[str, str]] = []
    for name, info in cls.model_fields.items():
        if name == "version" and not prefix:
            continue
        key = prefix + name
        kind = _plain(info.annotation)
        if typing.get_origin(kind) is dict:  # named entries: their fields when they are settings, else no default
            item = typing.get_args(kind)[1]
            if isinstance(item, type) and issubclass(item, BaseModel):
                lines.append((key, (info.description or "") + " (by name; each:)"))
                lines += settings_lines(item, key + ".<name>.")
            else:
                lines.append((key, info.description or ""))
            continue
        model, many = _nested_model(info.annotation)
        if model is not None:
            if many:
                lines.append((key, (info.description or "") + " (a list; each item:)"))
            lines += settings_lines(model, key + ("[]." if many else "."))
            continue
        choices = _kind_text(info.annotation)
        value = None if info.is_required() else info.get_default(call_default_factory=True)
        default = (f" (default {str(value).lower()})" if isinstance(value, bool)
                   else f" (default {', '.join(map(str, value))})" if isinstance(value, list) and value
                   else _default_text(value))
        text = (info.description or "") + (f" [{choices}]" if choices else "")
        lines.append((key, text + (" (required)" if info.is_required() and not many else default)))
    return lines


def settings_epilog(cls: type[BaseModel], title: str, width: int = 100) -> str:
    """The `--help` section listing every setting of a settings file (keys for YAML and --set KEY=VALUE)."""
    import textwrap

    rows = settings_lines(cls)
    column = min(max(len(k) for k, _ in rows) + 4, 40)
    out = [f"{title}:"]
    for key, text in rows:
        wrapped = textwrap.wrap(text, width - column, break_on_hyphens=False) or [""]
        first = f"  {key}".ljust(column) if len(key) + 2 < column else f"  {key}\n" + " " * column
        out.append(first + wrapped[0])
        out += [" " * column + line for line in wrapped[1:]]
    return "\n".join(out)
