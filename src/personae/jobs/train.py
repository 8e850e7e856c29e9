"""`personae train JOB.yaml`: a run folder per job, then the training loop.

<output>/ holds config.yaml (the resolved job), versions.json, checkpoints/,
validation/, loss.png, losses.csv, logs/ (TensorBoard, when installed), exports.json
and the final exported files.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from importlib import metadata
from pathlib import Path

import yaml

from personae.config.base import apply_overrides, load_yaml, parse_settings
from personae.config.train import TrainJob
from personae.errors import UserError
from personae.events import EventHandler, ignore
from personae.training import checkpoint as ckpt
from personae.training.setup import preflight

PACKAGES = ["personae", "torch", "diffusers", "transformers", "peft", "accelerate", "safetensors"]


def load_job(path: str | Path, overrides: list[str] = ()) -> TrainJob:
    data = apply_overrides(load_yaml(path), list(overrides))
    base = Path(path).resolve().parent
    job = parse_settings(TrainJob, data, str(path))
    # relative paths in a job file are relative to the file, as users expect
    updates = {}
    for key in ("base_model", "output"):
        value = getattr(job, key)
        if not Path(value).is_absolute() and (value.startswith(".") or (base / value).exists() or key == "output"):
            updates[key] = str((base / value).resolve())
    data_path = job.data.path
    if not Path(data_path).is_absolute():
        job.data.path = str((base / data_path).resolve())
    return job.model_copy(update=updates)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def run_training(job: TrainJob, resume: bool = False, overwrite: bool = False, on_event: EventHandler = ignore):
    from personae.training.loop import train

    run = Path(job.output)
    state = _distributed_state(job)
    if state is not None and not state.is_main_process:  # one process sets the folder up, the others wait
        state.wait_for_everyone()
        return train(job, run, resume=resume, on_event=ignore)
    if run.exists() and not run.is_dir():
        raise UserError(f"output {run} exists and is not a folder.")
    preflight(job)  # bad settings fail here, before any folder is made
    has_run = run.is_dir() and (ckpt.list_checkpoints(run) or (run / "exports.json").exists())
    if has_run and not (resume or overwrite):
        raise UserError(f"The run folder {run} already holds a run.",
                        "Pass --resume to continue it, --overwrite to start again, or set another output.")
    if overwrite and run.is_dir():
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump(job.model_dump(), sort_keys=False, allow_unicode=True))
    (run / "versions.json").write_text(json.dumps(versions(), indent=1))
    if state is not None:
        state.wait_for_everyone()
    return train(job, run, resume=resume, on_event=on_event)


def _distributed_state(job: TrainJob):
    """accelerate's process state when launched as several processes (accelerate launch, torchrun), else None.

    On the CPU it must be created with cpu=True, or each process believes it is alone.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    from personae.training.setup import uses_cpu

    return PartialState(cpu=uses_cpu(job))
