"""`personae train JOB.yaml`: a run folder per job, then the training loop.

<output>/ holds run.json (the run record: settings, status, versions, exports, checkpoints,
metrics; runs.py), config.yaml (the resolved job, to read or run again), checkpoints/,
validation/, loss.png, losses.csv, logs/ (TensorBoard, when installed) and the final exported
files, and the marker every personae output has (outputs.py). Runs made before run.json have
versions.json and exports.json instead; they are read, resumed and compared as they are.
The folder is locked while a process trains into it. It must be new, empty or a run
folder: anything else (a folder of the user's, the project folder, the training data,
the base model) is refused before anything is written, with --overwrite or without;
--overwrite removes only what earlier runs wrote there.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import yaml

from personae.config.base import apply_overrides, load_yaml, parse_settings
from personae.config.train import TrainJob
from personae.errors import UserError
from personae.events import EventHandler, ignore
from personae.jobs.kohya_job import is_kohya_config, kohya_job
from personae.outputs import Kind, absolute, check_output, open_output
from personae.runs import RUN_FILE, is_run, read_run
from personae.staging import write_text
from personae.training.setup import preflight

TRAINING_RUN = Kind(  # the signature recognises runs from before output markers (they had versions.json)
    "train", "a training run", "personae train", signature=("config.yaml", "versions.json"),
    layout=(RUN_FILE, "config.yaml", "versions.json", "exports.json", "loss.png", "losses.csv", "checkpoints/step-*",
            "validation/step-*.png", "logs/*", "cache/*", "class_images/class_*.png", "prepared/*",
            "lora.safetensors", "lora.json", "lora_diffusers/*", "lora_peft/*", "embeddings/*", "model/*",
            "model.safetensors", "model.yaml"),
    hint="Pass --resume to continue it, --overwrite to start again, or set another output.")


def run_kind(job: TrainJob) -> Kind:
    """The run folder's kind for this job: with `name`, its named exports are files the run writes too (so a run
    killed while exporting them resumes or is replaced with them counted as personae's, not as the user's)."""
    if not job.name:
        return TRAINING_RUN
    return replace(TRAINING_RUN, layout=(*TRAINING_RUN.layout, f"{job.name}.safetensors", f"{job.name}_diffusers/*",
                                              f"{job.name}_peft/*", f"{job.name}.json", f"{job.name}.yaml"))


def load_job(path: str | Path, overrides: list[str] = (), notes: list[str] | None = None) -> TrainJob:
    """A job file: personae's YAML, or kohya's training config (.toml, jobs/kohya_job.py), whose keys personae does
    not need are appended to `notes`."""
    if is_kohya_config(path):
        data, skipped = kohya_job(path)
        if notes is not None:
            notes.extend(skipped)
        data = apply_overrides(data, list(overrides))
    else:
        data = apply_overrides(load_yaml(path), list(overrides))
    base = Path(path).resolve().parent
    job = parse_settings(TrainJob, data, str(path))
    # relative paths in a job file are relative to the file, as users expect
    updates = {}
    for key in ("base_model", "output"):
        value = getattr(job, key)
        if not Path(value).is_absolute() and (value.startswith(".") or (base / value).exists() or key == "output"):
            updates[key] = str((base / value).resolve())
    if job.data.path and not Path(job.data.path).is_absolute():
        job.data.path = str((base / job.data.path).resolve())
    for subset in job.data.subsets:
        if not Path(subset.path).is_absolute():
            subset.path = str((base / subset.path).resolve())
    folder = job.dreambooth.class_data_dir
    if folder and not Path(folder).expanduser().is_absolute():
        job.dreambooth.class_data_dir = str((base / folder).resolve())
    for section, key in ((job, "vae"), (job.lora, "init_from")):  # files: as base_model
        value = getattr(section, key)
        if value and not Path(value).expanduser().is_absolute() and (value.startswith(".") or (base / value).exists()):
            setattr(section, key, str((base / value).resolve()))
    return job.model_copy(update=updates)


def run_training(job: TrainJob, resume: bool = False, overwrite: bool = False, on_event: EventHandler = ignore,
                 commands=None):
    """Check, lock and train; `commands` (training.stopping.Commands) stop, sample or save at a step's end. The
    trainer's modules (seconds of importing) load after the checks: a mistake in the job is said at once."""
    run = Path(job.output)
    state = _distributed_state(job)
    if state is not None and not state.is_main_process:  # one process sets the folder up, the others wait
        from personae.training.loop import train

        state.wait_for_everyone()
        return train(job, run, resume=resume, on_event=ignore, commands=commands)
    # 1. nothing is written before every check passed: the folder, the paths, the settings
    _refuse_overlaps(job, run)
    kind = run_kind(job)
    check_output(run, kind)  # a folder of the user's or another command's output is refused
    preflight(job)
    if _holds_run(run) and not (resume or overwrite):
        raise UserError(f"The run folder {run} already holds a run.", TRAINING_RUN.hint)
    from personae.training.loop import train

    # 2. locked while training; --overwrite removes what earlier runs wrote, nothing else
    with open_output(run, kind, clear=overwrite):
        write_text(run / "config.yaml", yaml.safe_dump(job.model_dump(), sort_keys=False, allow_unicode=True))
        if state is not None:
            state.wait_for_everyone()
        return train(job, run, resume=resume, on_event=on_event, commands=commands)


def _holds_run(run: Path) -> bool:
    """Is there a run to resume or replace: a checkpoint, or finished exports (a damaged record counts too)?"""
    if not is_run(run):
        return False
    try:
        record = read_run(run)
    except UserError:
        return True
    return bool(record.checkpoints) or record.status == "finished"


def _refuse_overlaps(job: TrainJob, run: Path) -> None:
    """The run folder may not be, hold or sit inside what training reads."""
    out = absolute(run)
    reads = [("data.path", job.data.path, False), ("dreambooth.class_data_dir", job.dreambooth.class_data_dir, True)]
    reads += [(f"data.subsets[{i}].path", s.path, False) for i, s in enumerate(job.data.subsets)]
    if Path(job.base_model).expanduser().exists():
        reads.append(("base_model", job.base_model, False))
    for key, value, may_be_inside in reads:  # class images may be cached inside the run (its default place)
        if not value:
            continue
        other = absolute(value)
        if other == out or other in out.parents or (out in other.parents and not may_be_inside):
            where = "is" if other == out else ("is inside" if other in out.parents else "holds")
            raise UserError(f"output {out} {where} {key} ({other}): a run folder never shares a folder with what "
                            "training reads, so nothing there can be overwritten or deleted.",
                            "Set output to a new folder of its own, e.g. runs/NAME.")


def _distributed_state(job: TrainJob):
    """accelerate's process state when launched as several processes (accelerate launch, torchrun), else None.

    On the CPU it must be created with cpu=True, or each process believes it is alone.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    from personae.training.setup import uses_cpu

    return PartialState(cpu=uses_cpu(job))
