"""The run record: `run.json`, one typed, versioned file per run folder, read through `read_run`.

    record = read_run("runs/demo")          # any run folder personae made, old or new
    record.status, record.exports, record.checkpoints, record.metrics.final_loss

It says what made the run (settings as resolved, personae's and the libraries' versions),
where it stands (running, stopped, finished, failed), what it wrote (exports with their
format, loader and token, the reload checks, the kept checkpoints) and how it went (steps,
final loss). The trainer rewrites it atomically at the start, at each checkpoint, at a stop
and at the end; compare, the world bench and --resume read it here and nowhere else.

Run folders from before run.json (config.yaml, versions.json, checkpoints/, and exports.json
once finished) are read into the same record. Checkpoints are always the complete ones on
disk (a kill between a checkpoint and the record's update loses nothing): a folder
`checkpoints/step-NNNNNN/` counts once its `state.pt` exists.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from personae.errors import UserError
from personae.staging import write_text

RUN_FILE = "run.json"
VERSION = 1
LIBRARIES = ("torch", "diffusers", "transformers", "peft", "accelerate", "safetensors")
_STEP = re.compile(r"^step-(\d{6,})$")
Status = Literal["running", "stopped", "finished", "failed"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExportRecord(_Record):
    path: str  # relative to the run folder
    format: str  # kohya, diffusers, a1111, original ...
    loader: str  # lora, embedding, folder, single_file: what loads it
    token: str | None = None  # an embedding's token


class CheckRecord(_Record):
    family: str  # the tool family the files were reloaded as (a1111, diffusers, folder, single_file)
    files: list[str]
    max_abs_diff: float
    tolerance: float | None = None  # the largest difference accepted (by output_dtype); older records: 1e-4


class CheckpointRecord(_Record):
    step: int
    path: str  # relative to the run folder


class Metrics(_Record):
    steps: int = 0  # optimizer steps done
    total_steps: int | None = None  # steps the job asks for
    final_loss: float | None = None  # the loss of the last step done
    memory_estimate_gb: float | None = None  # the memory the run was estimated to need at its start (training/memory.py)


class RunRecord(_Record):
    version: int = VERSION
    kind: Literal["train"] = "train"
    status: Status = "running"
    settings: dict = {}  # the job as resolved (TrainJob.model_dump())
    exports: list[ExportRecord] = []
    skipped_exports: list[str] = []  # exports the method could not write, each with why (older records: none)
    checks: list[CheckRecord] = []
    checkpoints: list[CheckpointRecord] = []
    metrics: Metrics = Metrics()
    personae_version: str | None = None
    libraries: dict[str, str] = {}  # name -> version (python included)
    error: str | None = None  # why a failed run failed
    updated: str | None = None  # UTC, ISO 8601


def library_versions() -> dict[str, str]:
    import platform

    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def new_record(settings: dict, total_steps: int | None = None) -> RunRecord:
    from personae import __version__

    return RunRecord(settings=settings, personae_version=__version__, libraries=library_versions(),
                     metrics=Metrics(total_steps=total_steps))


# ---------------------------------------------------------------- checkpoints on disk

def checkpoint_dir(run: Path, step: int) -> Path:
    return Path(run) / "checkpoints" / f"step-{step:06d}"


def list_checkpoints(run: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with state.pt), oldest first."""
    root = Path(run) / "checkpoints"
    found = []
    if root.is_dir():
        for p in root.iterdir():
            m = _STEP.match(p.name)
            if m and (p / "state.pt").is_file():
                found.append((int(m.group(1)), p))
    return sorted(found)


def _disk_checkpoints(run: Path) -> list[CheckpointRecord]:
    return [CheckpointRecord(step=s, path=p.relative_to(run).as_posix()) for s, p in list_checkpoints(run)]


# ---------------------------------------------------------------- writing

def write_run(run: Path, record: RunRecord) -> RunRecord:
    """Write `record` as run.json (whole or not at all), its checkpoints taken from the disk."""
    run = Path(run)
    record = record.model_copy(update={"checkpoints": _disk_checkpoints(run),
                                       "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    write_text(run / RUN_FILE, record.model_dump_json(indent=1) + "\n")
    return record


class RunLog:
    """The record as a running trainer keeps it: started, updated at each checkpoint, ended. Writes only once
    `start` was called (the main process calls it; the other processes of a launched run never do)."""

    def __init__(self, run: Path):
        self.run, self.record = Path(run), None

    def start(self, settings: dict) -> None:
        self.record = write_run(self.run, new_record(settings))

    def update(self, **changes) -> None:
        """Replace fields (`metrics` may be a dict of metric fields to change) and write."""
        if self.record is None:
            return
        if isinstance(changes.get("metrics"), dict):
            changes["metrics"] = self.record.metrics.model_copy(update=changes["metrics"])
        self.record = write_run(self.run, self.record.model_copy(update=changes))

    def end(self, status: Status, error: str | None = None) -> None:
        """The last write of a run that did not finish; a failure to write (a full disk) leaves the older record."""
        try:
            self.update(status=status, error=error)
        except OSError:
            pass


# ---------------------------------------------------------------- reading

def is_run(folder: Path) -> bool:
    """Does `folder` hold a run record (run.json, or an older run's exports.json / checkpoints)?"""
    folder = Path(folder)
    return (folder / RUN_FILE).is_file() or (folder / "exports.json").is_file() or bool(list_checkpoints(folder))


def read_run(folder: str | Path) -> RunRecord:
    """The record of a run folder, new (run.json) or older (exports.json + config.yaml + checkpoints/).

    A missing, damaged or newer record is a UserError naming the file."""
    run = Path(folder).expanduser()
    path = run / RUN_FILE
    if path.is_file():
        record = _parse(path)
    elif (run / "exports.json").is_file() or (run / "config.yaml").is_file() or list_checkpoints(run):
        record = _legacy(run)
    else:
        raise UserError(f"{run} is not a personae training run (no {RUN_FILE}).",
                        "Point at a folder `personae train` wrote (its `output:`).")
    return record.model_copy(update={"checkpoints": _disk_checkpoints(run)})


def _damaged(path: Path, why: str) -> UserError:
    return UserError(f"The run record {path} is damaged ({why}).",
                     "Train the run again, or point at its exported files directly.")


def _load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _damaged(path, f"not readable JSON: {exc}") from None


def _parse(path: Path) -> RunRecord:
    data = _load_json(path)
    if not isinstance(data, dict):
        raise _damaged(path, "not a JSON object")
    version = data.get("version")
    if isinstance(version, int) and version > VERSION:
        raise UserError(f"The run record {path} is version {version}, newer than this personae reads ({VERSION}).",
                        "Update personae to read it.")
    data = migrate(data)
    try:
        return RunRecord.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise _damaged(path, f"{'.'.join(map(str, first['loc'])) or 'record'}: {first['msg']}") from None


def migrate(data: dict) -> dict:
    """An older run.json's fields in the current shape (version 1 is the first; later versions add steps here)."""
    return data


def _legacy(run: Path) -> RunRecord:
    """A run folder from before run.json: exports.json (once finished), config.yaml, versions.json, checkpoints/."""
    record = {"version": VERSION, "kind": "train", "status": "stopped"}
    exports = run / "exports.json"
    if exports.is_file():
        data = _load_json(exports)
        try:
            files = [f for f in data["files"] if isinstance(f, dict) and isinstance(f.get("path"), str)]
            checks = data.get("checks", [])
            record.update(status="finished", exports=[ExportRecord(**{k: f.get(k) for k in ExportRecord.model_fields
                                                                      if k in f}) for f in files],
                          checks=[CheckRecord(**c) for c in checks])
        except (KeyError, TypeError, AttributeError, ValidationError):
            raise _damaged(exports, "not the exports list personae writes") from None
    config = run / "config.yaml"
    if config.is_file():
        try:
            settings = yaml.safe_load(config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise _damaged(config, f"not readable YAML: {exc}") from None
        if isinstance(settings, dict):
            record["settings"] = settings
    versions = run / "versions.json"
    if versions.is_file():
        try:
            found = json.loads(versions.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            found = {}
        if isinstance(found, dict):
            record["personae_version"] = found.pop("personae", None)
            record["libraries"] = {k: str(v) for k, v in found.items()}
    record["metrics"] = _legacy_metrics(run / "losses.csv", record.get("settings", {}))
    return RunRecord.model_validate(record)


def _legacy_metrics(losses: Path, settings: dict) -> Metrics:
    """Steps and final loss from losses.csv (step,loss rows), the total from the settings."""
    total = settings.get("train", {}).get("steps") if isinstance(settings.get("train"), dict) else None
    metrics = Metrics(total_steps=total if isinstance(total, int) else None)
    try:
        rows = [line.split(",") for line in losses.read_text(encoding="utf-8").splitlines()[1:] if line.strip()]
        return metrics.model_copy(update={"steps": int(rows[-1][0]), "final_loss": float(rows[-1][1])})
    except (OSError, UnicodeDecodeError, IndexError, ValueError):
        return metrics
