"""What the Prepare, Animate, Storyboard, Compare and World tabs share: a settings file from the page (typed in a
box or named in the workspace) kept inside the workspace, the form values that override a file's, and the
latest finished job of a kind.

    path = settings_file(ws, pasted_yaml, "uploads/storyboard", "scenes.yaml", chosen_file)
    inside(ws, settings.model_dump(), "the scenes file")   # refuses a model / LoRA / image path out of the workspace

A file typed in the page is saved in a new folder of the workspace (uploads/...) and read from there as the
CLI reads a file; relative paths in it name workspace files (they are made absolute before it is saved,
since the CLI reads them relative to the file). After loading, every path a file names must be inside the
workspace: the page reads and writes only there.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from personae.config.base import parse_yaml
from personae.errors import UserError

# keys whose string values (or list items) are files: models, LoRAs, embeddings, runs, images, fonts, metric models
PATH_KEYS = {"model", "base_model", "font", "path", "lora", "embedding", "run", "image", "references", "vae",
             "motion_adapter", "clip", "dino", "loras", "embeddings", "shot_embeddings"}
ENDED = ("done", "failed", "stopped", "cancelled")


def _walk(data, visit, key: str | None = None):
    """`data` with visit(value) applied to every string under a PATH_KEYS key (directly or in a list)."""
    if isinstance(data, dict):
        return {k: _walk(v, visit, k) for k, v in data.items()}
    if isinstance(data, list):
        return [_walk(v, visit, key) for v in data]
    if isinstance(data, str) and key in PATH_KEYS and data.strip():
        return visit(data)
    return data


def _local(ws, value: str) -> str:
    """A relative path (or FILE:EXTRA) naming a workspace file, made absolute; anything else as it is."""
    if Path(value).expanduser().is_absolute() or value.startswith("~"):
        return value  # checked by inside() after loading
    head, colon, tail = value.rpartition(":")
    for candidate, rest in ((value, ""), (head, colon + tail)) if colon and head else ((value, ""),):
        path = ws.path(candidate, what="path in the file")  # a `..` out of the workspace is refused here
        if path.exists():
            return str(path) + rest
    return value


def inside(ws, data: dict, where: str) -> None:
    """Refuse a loaded settings file that names a file out of the workspace (absolute, or found beside the server)."""
    def visit(value: str) -> str:
        head, colon, _ = value.rpartition(":")
        for candidate in (value, head) if colon and head else (value,):
            path = Path(candidate).expanduser()
            if not path.is_absolute() and not path.exists():
                continue  # a hub id, or a file that is missing (the job says so)
            if not ws.contains(path if path.is_absolute() else Path.cwd() / path):
                raise UserError(f"{where} names {candidate}, which is outside the workspace.",
                                f"The web UI uses only files inside {ws.root}: put it there and name it relative to "
                                "the workspace (e.g. models/tiny).")
            break
        return value

    _walk(data, visit)


def typed_yaml(text: str, what: str, other: str) -> dict:
    """A YAML mapping typed in the page; `what` names it in the error, `other` is the way round it."""
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{what} is not valid YAML ({str(exc).splitlines()[0]}).", f"Fix it, or {other}.") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} is not a YAML mapping.", f"Type the keys as the file has them, or {other}.")
    return data


def settings_file(ws, text: str | None, under: str, name: str, chosen: str | None = None) -> Path:
    """The settings file to read: the text typed in the page (saved into a new folder under `under`), else the
    workspace file `chosen`."""
    if text and text.strip():
        data = typed_yaml(text, f"The {name} typed in the page", "clear the box to use a file of the workspace")
        data = _walk(data, lambda v: _local(ws, v))
        path = ws.new_folder(under) / name
        path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
        return path
    if not chosen or not str(chosen).strip():
        raise UserError(f"No {name} is given.", "Type one in the box, or name a file in the workspace.")
    path = ws.path(chosen, what="settings file", must_exist=True)
    if not path.is_file():
        raise UserError(f"{chosen} is not a file.", "Name a YAML file in the workspace.")
    return path


def changed(form, raw) -> dict:
    """The form's values that differ from their declared defaults: what overrides a settings file (as the CLI's
    options given on the command line do; a slider always has a value, so an unmoved one overrides nothing)."""
    values = form.values(*raw)
    fields = form.cls.model_fields
    return {k: v for k, v in values.items()
            if fields[k].is_required() or v != fields[k].get_default(call_default_factory=True)}


def latest(jobs, kind: str, seen: int):
    """The newest ended job of `kind` if it is not `seen` (the last one shown), else None."""
    ended = [t for t in jobs.snapshot() if t.kind == kind and t.status in ENDED]
    return ended[-1] if ended and ended[-1].id != seen else None


def running(jobs, kind: str):
    """The running (else the newest) job of `kind`, or None."""
    mine = [t for t in jobs.snapshot() if t.kind == kind]
    active = [t for t in mine if t.status == "running"]
    return active[0] if active else (mine[-1] if mine else None)


def ended_line(task) -> str:
    if task.status == "done":
        return f"Job {task.id} done."
    return f"**Job {task.id} {task.status}:** {task.error or ''}"


def shown(show, ws, folder):
    """`show(ws, folder)` for an earlier result picked in a tab; a folder that cannot be shown is the status line."""
    try:
        return show(ws, folder)
    except UserError as exc:
        return f"**Not shown:** {exc}", *([None] * (len(show(ws, None)) - 1))
