"""Bench recipes and sweeps: a method's bench recipe with some settings changed, named by the change.

    personae world bench --methods lora:variant=dora,rank=8,pivotal
    personae world bench --methods lora --sweep lora.rank=4,8,16 --sweep lora.variant=lora,dora

A recipe is `METHOD:KEY=VALUE,KEY=VALUE,...` over `jobs.METHOD` (the method's bench recipe). KEY is a dotted
path in the `personae train` job (`lora.rank`, `train.learning_rate`, `data.masked_loss`) or a bare setting
name that exactly one job section has (`rank` is lora.rank, `steps` train.steps, `masked_loss`
data.masked_loss; a name several sections have, such as `text_encoder_lr`, must be written with its section).
VALUE is read as YAML, as with --set; a list is written in brackets: `lora.target_modules=[to_q,to_v]`. The
recipe's text is its name in the tables. In a comma-separated --methods list an item with `=` belongs to the
recipe before it and an item without one is the next method (method names have no `=`). A sweep
(`KEY=V1,V2,...`, repeatable) runs every combination of its values over every method given, each as a
recipe `METHOD:KEY=V,...`. No torch here.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

from personae.config.base import apply_overrides


def split_items(text: str) -> list[str]:
    """`a=1,b=[x,y]` -> ["a=1", "b=[x,y]"]: commas outside brackets separate."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


def split_methods(text: str) -> list[str]:
    """`lora:variant=dora,rank=8,pivotal` -> ["lora:variant=dora,rank=8", "pivotal"]."""
    out: list[str] = []
    for item in split_items(text):
        key = item.split("=", 1)[0]
        if "=" in item and ":" not in key and out:
            out[-1] += "," + item
        else:
            out.append(item)
    return out


def resolve_key(key: str) -> str:
    """A recipe key as its dotted path in the train job; a bare name must belong to exactly one section."""
    from personae.config.train import TrainJob

    key = key.strip()
    if "." in key or key in TrainJob.model_fields:
        return key
    sections = {name: f.annotation for name, f in TrainJob.model_fields.items()
                if hasattr(f.annotation, "model_fields")}
    owners = [name for name, section in sections.items() if key in section.model_fields]
    if len(owners) == 1:
        return f"{owners[0]}.{key}"
    if owners:
        raise ValueError(f"recipe key {key!r} is a setting of {' and '.join(owners)}: write it with its section, "
                         f"e.g. {owners[0]}.{key}")
    raise ValueError(f"recipe key {key!r} is no setting of a train job: use a dotted path such as lora.rank or "
                     "train.learning_rate, or a setting name such as rank, variant, steps, masked_loss")


def parse_recipe(text: str) -> tuple[str, list[tuple[str, str]]]:
    """`lora:variant=dora,rank=8` -> ("lora", [("lora.variant", "dora"), ("lora.rank", "8")])."""
    method, _, rest = text.partition(":")
    pairs = []
    for item in split_items(rest):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"recipe {text!r}: {item!r} is not KEY=VALUE (write METHOD:KEY=VALUE,KEY=VALUE, e.g. "
                             "lora:variant=dora,rank=8)")
        pairs.append((resolve_key(key), value.strip()))
    if not pairs:
        raise ValueError(f"recipe {text!r} changes nothing: write METHOD:KEY=VALUE,..., or the method alone")
    return method.strip(), pairs


def recipe_job(base: dict, pairs: list[tuple[str, str]]) -> dict:
    """The method's recipe (a train job without paths) with the pairs applied (values read as YAML)."""
    return apply_overrides(json.loads(json.dumps(base)), [f"{key}={value}" for key, value in pairs])


def sweep_labels(methods: list[str], sweep: dict[str, list[Any]]) -> list[str]:
    """Every method given, once per combination of the sweep's values, as recipe labels."""
    if not sweep:
        return list(methods)
    keys = [resolve_key(k) for k in sweep]
    labels = []
    for method in methods:
        for values in itertools.product(*sweep.values()):
            change = ",".join(f"{k}={_text(v)}" for k, v in zip(keys, values))
            labels.append(f"{method},{change}" if ":" in method else f"{method}:{change}")
    return labels


def _text(value: Any) -> str:
    """A sweep value as a recipe writes it (lists in brackets, YAML-readable)."""
    if isinstance(value, list):
        return "[" + ",".join(_text(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def parse_sweep(assignments: list[str]) -> dict[str, list[Any]]:
    """`--sweep lora.rank=4,8,16` (repeatable) -> {"lora.rank": [4, 8, 16]}."""
    from personae.config.base import _yaml_value

    out = {}
    for item in assignments:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not split_items(values):
            raise ValueError(f"--sweep {item!r} is not KEY=V1,V2,... (e.g. --sweep lora.rank=4,8,16)")
        out[key.strip()] = [_yaml_value(v) for v in split_items(values)]
    return out


def safe_name(label: str) -> str:
    """A recipe label as a file name: `lora:lora.rank=8` -> `lora-lora.rank-8`."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", label).strip("-")


def sweep_rows(rows: list[dict]) -> list[dict]:
    """The bench table's rows, best subject fidelity first (ties: best on unseen backgrounds, then as given)."""
    return sorted(rows, key=lambda r: (-(r["subject_fidelity"] or 0.0), -(r["subject_unseen_bg"] or 0.0)))
