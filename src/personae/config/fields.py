"""How a setting is declared once: its type, default, bounds, help text and outside names in one `Field`.

    steps: int = setting(20, '"Steps": sampling steps', infotext="Steps", ge=1, le=1000)

The description is the `--help` text (and a UI form's label); `infotext` is the key in A1111's
PNG `parameters` line; `flag` / `aliases` / `metavar` shape the command-line option (default:
`--steps`). Commands compose their settings from concept models (sampling.py); the CLI options
(cli/options.py), YAML validation, PNG metadata and `--from-png` all read these declarations,
so a field added to a concept appears everywhere with no other edit.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

from pydantic import BaseModel, Field
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from personae.config.base import Strict


def setting(default: Any = PydanticUndefined, description: str = "", *, infotext: str | None = None,
            infotext_if: str | tuple[str, ...] | None = None, infotext_unless: float | str | None = None,
            flag: str | None = None, aliases: tuple[str, ...] = (), metavar: str | None = None, cli: bool = True,
            text: bool = False, lines: int | None = None, **constraints: Any) -> Any:
    """A pydantic Field carrying personae's outside names.

    infotext: the A1111 `parameters` key; infotext_if: written only when that field is set (e.g. the
    denoising strength only for img2img), or all of those fields when a tuple; infotext_unless: not written at this
    value (A1111 leaves out a "Noise multiplier" of 1); flag / aliases / metavar: the CLI
    option; cli=False: YAML only;
    text=True: the option takes one word that the model's own validator parses (a colour, `a=b,c=d` pairs);
    lines: a UI form's text box this many lines high, Enter starting a new line (prompts: prompt travel's lines).
    """
    condition = list(infotext_if) if isinstance(infotext_if, tuple) else infotext_if
    extra = {"infotext": infotext, "infotext_if": condition, "infotext_unless": infotext_unless, "flag": flag,
             "aliases": list(aliases) or None,
             "metavar": metavar, "cli": None if cli else False, "text": True if text else None, "lines": lines}
    extra = {k: v for k, v in extra.items() if v is not None}
    return Field(default, description=description, json_schema_extra=extra or None, **constraints)


def retuned(concept: type[BaseModel], name: str, default: Any) -> Any:
    """`concept`'s field `name` (type, bounds, help, outside names) with another default, e.g. animate's 25 steps."""
    return FieldInfo.merge_field_infos(concept.model_fields[name], default=default)


def extra_of(info: FieldInfo) -> dict:
    """The outside names a field declares (see `setting`)."""
    extra = info.json_schema_extra
    return dict(extra) if isinstance(extra, dict) else {}


class Concept(Strict):
    """A group of settings that several commands share (sampling, add-ons, control, runtime, ...).

    A command's settings class inherits the concepts it takes; `TITLE` heads their group in `--help`.
    """

    TITLE: ClassVar[str] = "settings"


def concepts(cls: type[BaseModel]) -> list[type[Concept]]:
    """The concepts `cls` is made of, in the order its bases name them."""
    return [base for base in cls.__mro__ if isinstance(base, type) and issubclass(base, Concept)
            and base is not Concept and "TITLE" in base.__dict__]


def grouped_fields(cls: type[BaseModel]) -> Iterator[tuple[str, str, FieldInfo]]:
    """(group title, field name, field as `cls` declares it): the concepts' fields first, in their order, then
    the fields `cls` declares itself (group "settings")."""
    seen: set[str] = set()
    for concept in concepts(cls):
        for name in concept.model_fields:
            if name not in seen and name in cls.model_fields:
                seen.add(name)
                yield concept.TITLE, name, cls.model_fields[name]
    for name, info in cls.model_fields.items():
        if name not in seen:
            yield "settings", name, info
