"""From a suite file to the rows of a comparison: run folders expanded, sweeps multiplied out.

A run folder (`personae train` output) becomes one row per kept checkpoint plus its final
export, using the files its run record lists (runs.read_run: a kohya LoRA, an A1111 embedding,
or a DreamBooth model folder). A sweep turns each row into every combination of the swept values
(LoRA weight only multiplies rows that have a LoRA).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from personae.config.base import load_yaml, parse_settings
from personae.config.compare import CompareSuite, Variant
from personae.errors import UserError
from personae.runs import checkpoint_dir, read_run


@dataclass(frozen=True)
class Row:
    """One variant as it is generated."""

    label: str
    model: str
    loras: tuple[tuple[str, float], ...] = ()
    embeddings: tuple[tuple[str, str | None], ...] = ()
    token: str | None = None  # {token} for this row (None: the embedding's token, else the suite's)
    steps: int | None = None
    cfg: float | None = None
    sampler: str | None = None
    run: str | None = None  # the run folder this row came from (its loss curve goes in the report)
    step: int | None = None
    settings: dict = field(default_factory=dict)  # what differs from the suite, for the metrics table


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-") or "variant"


def load_suite(path: str | Path, overrides: dict | None = None) -> CompareSuite:
    """A suite YAML file; relative paths in it are relative to the file."""
    path = Path(path)
    data = load_yaml(path)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    suite = parse_settings(CompareSuite, data, str(path))
    base = path.resolve().parent

    def fix(value: str | None) -> str | None:
        if value and not Path(value).expanduser().is_absolute() and (base / value).exists():
            return str((base / value).resolve())
        return value

    variants = []
    for v in suite.variants:
        loras = [l.model_copy(update={"path": fix(l.path)}) for l in v.loras]
        variants.append(v.model_copy(update={"model": fix(v.model), "lora": fix(v.lora), "embedding": fix(v.embedding),
                                             "run": fix(v.run), "loras": loras}))
    return suite.model_copy(update={"base_model": fix(suite.base_model), "references": fix(suite.references),
                                    "variants": variants})


def _run_rows(v: Variant, base_model: str) -> list[Row]:
    run = Path(v.run).expanduser()
    try:
        record = read_run(run)
    except UserError as exc:
        raise UserError(f'Variant "{v.label}": {exc.what}', exc.fix) from None
    if record.status != "finished":
        raise UserError(f'Variant "{v.label}": {run} is not a finished training run (it is {record.status}).',
                        "Finish it with `personae train JOB.yaml --resume`, or use `lora:` / `embedding:` for a file.")
    kinds = {}
    for f in record.exports:  # the file each loader reads: kohya LoRA, A1111 embedding, diffusers model folder
        if f.loader == "lora" and f.format == "kohya":
            kinds.setdefault("lora", f.path)
        elif f.loader == "embedding" and f.format == "a1111":
            kinds.setdefault("embeddings", []).append((f.path, f.token))
        elif f.loader == "folder":
            kinds.setdefault("model", f.path)
    if not kinds:
        raise UserError(f'Variant "{v.label}": the run record of {run} lists no LoRA, embedding or model to compare.')

    def row(root: Path, label: str, step: int | None) -> Row | None:
        paths = [root / p for p in [kinds.get("lora"), kinds.get("model")] if p] + [root / p for p, _ in kinds.get("embeddings", [])]
        if not all(p.exists() for p in paths):
            return None
        loras = ((str(root / kinds["lora"]), v.weight),) if "lora" in kinds else ()
        embeddings = tuple((str(root / p), t) for p, t in kinds.get("embeddings", []))
        model = str(root / kinds["model"]) if "model" in kinds else base_model
        return Row(label, model, loras, embeddings, v.token, v.steps, v.cfg, v.sampler, str(run), step,
                   {"run": run.name, "step": step if step is not None else "final"})

    steps = {c.step: c.path for c in record.checkpoints}
    wanted = v.checkpoints if v.checkpoints is not None else sorted(steps)
    missing = [s for s in wanted if s not in steps]
    if missing:
        raise UserError(f'Variant "{v.label}": {run} has no checkpoint at step(s) {missing}; it keeps {sorted(steps)}.',
                        "List kept steps under `checkpoints:`, or leave it out to use them all.")
    rows = [row(checkpoint_dir(run, s) / "exports", f"{v.label} step {s}", s) for s in wanted]
    return [r for r in rows if r] + [row(run, f"{v.label} final", None)]


def _variant_rows(v: Variant, base_model: str) -> list[Row]:
    if v.run:
        return _run_rows(v, base_model)
    loras = ([(v.lora, v.weight)] if v.lora else []) + [(l.path, l.weight) for l in v.loras]
    embeddings = [(v.embedding, None)] if v.embedding else []
    changed = {k: getattr(v, k) for k in ("steps", "cfg", "sampler") if getattr(v, k) is not None}
    if loras:
        changed["weight"] = ", ".join(f"{w:g}" for _, w in loras)
    return [Row(v.label, v.model or base_model, tuple(loras), tuple(embeddings), v.token, v.steps, v.cfg, v.sampler,
                settings=changed)]


def _swept(row: Row, sweep: dict[str, list]) -> list[Row]:
    axes = [(k, values) for k, values in sweep.items() if k != "weight" or row.loras]
    out = []
    for combo in itertools.product(*(values for _, values in axes)):
        update, parts, settings = {}, [], dict(row.settings)
        for (key, _), value in zip(axes, combo):
            if key == "weight":
                update["loras"] = tuple((p, float(value)) for p, _ in row.loras)
            else:
                update[key] = value
            parts.append(f"{key} {value}")
            settings[key] = value
        label = " · ".join([row.label, *parts]) if parts else row.label
        out.append(replace(row, label=label, settings=settings, **update))
    return out


def expand(suite: CompareSuite) -> list[Row]:
    rows = [r for v in suite.variants for r in _variant_rows(v, suite.base_model)]
    if suite.sweep:
        rows = [s for r in rows for s in _swept(r, suite.sweep)]
    labels = [r.label for r in rows]
    repeated = sorted({l for l in labels if labels.count(l) > 1})
    if repeated:
        raise UserError(f"Two rows of the comparison would share the label(s) {repeated}.", "Give the variants distinct labels.")
    return rows
