"""From a suite file to the rows of a comparison: run folders expanded, sweeps multiplied out.

A run folder (`personae train` output) becomes one row per kept checkpoint plus its final
export, using the files its run record lists (runs.read_run: a kohya LoRA, an A1111 embedding,
or a DreamBooth model folder). A sweep turns each row into every combination of the swept values
(LoRA weight only multiplies rows that have a LoRA). ControlNet units are generate's own
(`controls`, `control_start`, `control_end`): a variant's replace the suite's, `controls: []` is none.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from personae.config.addons import ControlRef
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
    controls: tuple[ControlRef, ...] = ()  # ControlNet units, as generate takes them
    control_start: float = 0.0
    control_end: float = 1.0

    def control_settings(self) -> dict:
        """This row's ControlNet part of GenerateSettings."""
        return {"controls": list(self.controls), "control_start": self.control_start, "control_end": self.control_end}


def describe_unit(ref: ControlRef, start: float = 0.0, end: float = 1.0) -> str:
    """One ControlNet unit in a few words, for the metrics table and the report (A1111's unit fields)."""
    parts = [ref.type, f"weight {ref.weight:g}"]
    if ref.model:
        parts.append(f"model {Path(ref.model).name or ref.model}")
    parts += [f"{k} {v:g}" for k, v in ref.options.items()]
    defaults = ControlRef.model_fields
    parts += [str(getattr(ref, name)) for name in ("resize_mode", "control_mode")
              if getattr(ref, name) != defaults[name].default]
    if ref.pixel_perfect:
        parts.append("pixel perfect")
    elif ref.processor_res != defaults["processor_res"].default:
        parts.append(f"processor res {ref.processor_res}")
    start = start if ref.guidance_start is None else ref.guidance_start
    end = end if ref.guidance_end is None else ref.guidance_end
    if (start, end) != (0.0, 1.0):
        parts.append(f"{'noise' if ref.guidance_by == 'noise' else 'steps'} {start:g}-{end:g}")
    return " ".join(parts)


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

    def fix_units(units: list[ControlRef] | None) -> list[ControlRef] | None:
        return None if units is None else [u.model_copy(update={"image": fix(u.image), "model": fix(u.model),
                                                                "mask": fix(u.mask)}) for u in units]

    variants = []
    for v in suite.variants:
        loras = [l.model_copy(update={"path": fix(l.path)}) for l in v.loras]
        variants.append(v.model_copy(update={"model": fix(v.model), "lora": fix(v.lora), "embedding": fix(v.embedding),
                                             "run": fix(v.run), "loras": loras, "controls": fix_units(v.controls)}))
    return suite.model_copy(update={"base_model": fix(suite.base_model), "references": fix(suite.references),
                                    "variants": variants, "controls": fix_units(suite.controls)})


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


def _with_controls(rows: list[Row], v: Variant, suite: CompareSuite) -> list[Row]:
    """The variant's ControlNet units (else the suite's) and guidance window on each of its rows."""
    units = tuple(suite.controls if v.controls is None else v.controls)
    start = suite.control_start if v.control_start is None else v.control_start
    end = suite.control_end if v.control_end is None else v.control_end
    if units and start >= end:
        raise UserError(f'Variant "{v.label}": control_start ({start:g}) must be below control_end ({end:g}).',
                        "Set control_start / control_end on the variant (or the suite) so that start < end.")
    out = []
    for row in rows:
        settings = dict(row.settings)
        if units != tuple(suite.controls) or (units and (start, end) != (suite.control_start, suite.control_end)):
            settings["control"] = " + ".join(describe_unit(u, start, end) for u in units) or "none"
        out.append(replace(row, controls=units, control_start=start, control_end=end, settings=settings))
    return out


def _variant_rows(v: Variant, base_model: str) -> list[Row]:
    if v.run:
        return _run_rows(v, base_model)
    loras = ([(v.lora, v.weight)] if v.lora else []) + [(l.path, l.weight, l.unet_weight) for l in v.loras]
    embeddings = [(v.embedding, None)] if v.embedding else []
    changed = {k: getattr(v, k) for k in ("steps", "cfg", "sampler") if getattr(v, k) is not None}
    if loras:
        changed["weight"] = ", ".join(":".join(f"{w:g}" for w in lora[1:] if w is not None) for lora in loras)
    return [Row(v.label, v.model or base_model, tuple(loras), tuple(embeddings), v.token, v.steps, v.cfg, v.sampler,
                settings=changed)]


def _swept(row: Row, sweep: dict[str, list]) -> list[Row]:
    axes = [(k, values) for k, values in sweep.items() if k != "weight" or row.loras]
    out = []
    for combo in itertools.product(*(values for _, values in axes)):
        update, parts, settings = {}, [], dict(row.settings)
        for (key, _), value in zip(axes, combo):
            if key == "weight":
                update["loras"] = tuple((p, float(value)) for p, *_ in row.loras)  # both weights
            else:
                update[key] = value
            parts.append(f"{key} {value}")
            settings[key] = value
        label = " · ".join([row.label, *parts]) if parts else row.label
        out.append(replace(row, label=label, settings=settings, **update))
    return out


def expand(suite: CompareSuite) -> list[Row]:
    rows = [r for v in suite.variants for r in _with_controls(_variant_rows(v, suite.base_model), v, suite)]
    if suite.sweep:
        rows = [s for r in rows for s in _swept(r, suite.sweep)]
    labels = [r.label for r in rows]
    repeated = sorted({l for l in labels if labels.count(l) > 1})
    if repeated:
        raise UserError(f"Two rows of the comparison would share the label(s) {repeated}.", "Give the variants distinct labels.")
    return rows
