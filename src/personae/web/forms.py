"""Web forms generated from the settings declarations, as the CLI's options are (cli/options.py).

    form = SettingsForm(GenerateSettings, groups=("sampling",), choices={"sampler": SAMPLERS})
    ... form.components ...                  # name -> a Gradio input, labelled and bounded by its declaration
    data = form.values(*raw_values)           # {field: value} for the inputs the user changed

Each field is typed from its declaration exactly as its command-line option is (option_kwargs): a choice
list becomes a dropdown, a bool a checkbox, a bounded number a slider, a list of references written on one
word (`FILE[:WEIGHT]`) a text box with one per line. Its description is the help under the input and its
default the starting value; a field added to a settings concept therefore appears here with no other edit.
"""

from __future__ import annotations

import typing
from typing import Any

import annotated_types
import gradio as gr
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from personae.cli.options import _chosen, _plain, option_kwargs
from personae.config.fields import extra_of, grouped_fields

SLIDER_SPAN = 2000  # a bounded number whose range is wider than this is a number box (seeds, sizes)
EXACT_IN_BROWSER = 2**53  # the browser holds numbers as doubles: an int that may pass this is typed as text (seeds)


def _bounds(info: FieldInfo) -> tuple[float | None, float | None]:
    low = high = None
    for rule in info.metadata:
        if isinstance(rule, (annotated_types.Ge, annotated_types.Gt)):
            low = rule.ge if isinstance(rule, annotated_types.Ge) else rule.gt
        elif isinstance(rule, (annotated_types.Le, annotated_types.Lt)):
            high = rule.le if isinstance(rule, annotated_types.Le) else rule.lt
    return low, high


def _allows_zero(info: FieldInfo) -> bool:
    for rule in info.metadata:
        if (isinstance(rule, annotated_types.Ge) and rule.ge > 0) or (isinstance(rule, annotated_types.Gt) and rule.gt >= 0):
            return False
    return True


def _label(name: str, description: str) -> tuple[str, str]:
    """(label, help): A1111's name when the description starts with it in quotes ('"CFG scale": how ...')."""
    if description.startswith('"') and '":' in description:
        label, _, rest = description[1:].partition('":')
        return label, rest.strip()
    return name.replace("_", " ").capitalize(), description


def component_for(name: str, info: FieldInfo, choices: list | None = None,
                  prefix: str = "field") -> tuple[gr.components.Component, str] | None:
    """(a Gradio input for the field, how its value reads back), or None for a field forms do not take."""
    kw = option_kwargs(name, info)
    if kw is None:
        return None
    default = None if info.is_required() else info.get_default(call_default_factory=True)
    label, help_text = _label(name, info.description or "")
    common = {"label": label, "info": help_text or None, "elem_id": f"{prefix}-{name.replace('_', '-')}"}
    kind = _plain(info.annotation)
    if choices is not None or "choices" in kw:
        options = list(choices if choices is not None else kw["choices"])
        return gr.Dropdown(options, value=default, allow_custom_value=choices is not None, **common), "text"
    if kind is bool:
        return gr.Checkbox(value=bool(default), **common), "bool"
    if kw.get("action") == "append":
        item = typing.get_args(kind)[0]
        form = getattr(item, "CLI_FORM", "VALUE")
        shown = "\n".join(str(v) for v in default or [])
        return gr.Textbox(value=shown, lines=2, placeholder=f"{form}, one per line", **common), "list"
    if kind in (int, float):
        low, high = _bounds(info)
        if kind is int and high is not None and high > EXACT_IN_BROWSER:  # a number box would round 64-bit seeds
            return gr.Textbox(value="" if default is None else str(default), lines=1, max_lines=1, **common), "int"
        step = 1 if kind is int else 0.05
        if low is not None and high is not None and high - low <= SLIDER_SPAN and default is not None:
            return gr.Slider(low, high, value=default, step=step, **common), kind.__name__
        if default is None:  # optional: empty means "the default"; bounds are checked with the settings
            return gr.Number(value=None, precision=0 if kind is int else None, **common), kind.__name__
        return gr.Number(value=default, minimum=low, maximum=high, precision=0 if kind is int else None,
                         **common), kind.__name__
    if isinstance(default, (tuple, list)):  # e.g. a colour (255, 255, 255): shown as the CLI spells it, 255,255,255
        default = ",".join(str(v) for v in default)
    return gr.Textbox(value=default or "", lines=extra_of(info).get("lines", 1), **common), "text"


class SettingsForm:
    """Inputs for the fields of a settings class (the concept groups / field names asked for, in --help order)."""

    def __init__(self, cls: type[BaseModel], *, groups: tuple[str, ...] = (), names: tuple[str, ...] = (),
                 skip: tuple[str, ...] = (), choices: dict[str, list] | None = None, prefix: str = "field"):
        """`prefix`: the inputs' element ids are PREFIX-FIELD-NAME (unique on the page; tests find inputs by them)."""
        self.cls = cls
        self.components: dict[str, gr.components.Component] = {}
        self._reads: dict[str, tuple[str, FieldInfo]] = {}
        for title, name, info in grouped_fields(cls):
            if name in skip or not _chosen(title, name, groups, names):
                continue
            made = component_for(name, info, (choices or {}).get(name), prefix)
            if made is not None:
                self.components[name], read = made
                self._reads[name] = (read, info)

    @property
    def inputs(self) -> list[gr.components.Component]:
        return list(self.components.values())

    def values(self, *raw: Any) -> dict:
        """{field: value} from the inputs' values (in `inputs` order); empty inputs are left to the defaults."""
        out: dict = {}
        for (name, (read, info)), value in zip(self._reads.items(), raw):
            if value is None or (isinstance(value, str) and not value.strip()):
                continue
            if read in ("int", "float") and value == 0 and not info.is_required() and info.default is None \
                    and not _allows_zero(info):
                continue  # an emptied optional number box reads 0, which its bounds refuse: "not given"
            if read == "list":
                item = typing.get_args(_plain(info.annotation))[0]
                parse = getattr(item, "from_cli", lambda text: text)
                out[name] = [parse(line.strip()) for line in str(value).splitlines() if line.strip()]
            elif read == "int" and isinstance(value, str):  # typed as text: read exactly, or left to the schema
                out[name] = int(value.strip()) if value.strip().lstrip("-").isdigit() else value.strip()
            elif read == "int":
                out[name] = int(round(float(value)))
            elif read == "float":
                out[name] = float(value)
            elif read == "text":
                out[name] = value.strip() if isinstance(value, str) else value
            else:
                out[name] = value
        return out
