"""The run record (run.json, read through runs.read_run) and the job interface (jobs/runner.py).

- A job started through the interface and sent "stop" after its second step ends with a checkpoint
  of exactly two steps; --resume continues it (read as an older run folder, without run.json) to
  the same bytes as a run that was never stopped.
- "sample" and "save" sent during a step give an image event and a checkpoint event at its end.
- A run folder in the format before run.json (exports.json, config.yaml, versions.json,
  checkpoints/) reads as a record, and compare plans its rows from it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from train_helpers import StepWatcher, prepared_subject, write_job

from personae.cli.main import main
from personae.errors import UserError
from personae.events import CheckpointSaved, Finished, ImageReady, Progress
from personae.jobs.runner import start
from personae.jobs.train import load_job
from personae.runs import RUN_FILE, read_run
from personae.training.stopping import Stopped

QUICK = {"batch_size": 1, "resolution": 64, "verify_exports": False, "validation": {"steps": 1}}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepared_subject(tmp_path_factory.mktemp("data"), count=3, trigger="sks")


def _job(tmp_path, tiny_model, prepared, name, **train):
    return write_job(tmp_path, base_model=str(tiny_model[0]), method="lora", data=prepared, output=tmp_path / name,
                     lora={"rank": 2, "alpha": 2, "dropout": 0.1},
                     train={**QUICK, "steps": 4, "learning_rate": 1e-3, "lr_scheduler": "cosine", **train})


def _at_step(step: int, *commands: str):
    """An on_event handler (called in the worker, before the step's end) that sends `commands` at `step`."""
    holder = {}

    def on_event(event):
        if isinstance(event, Progress) and event.stage == "train" and event.done == step:
            for command in commands:
                holder["handle"].send(command)
    return holder, on_event


@pytest.fixture(scope="module")
def whole(tmp_path_factory, tiny_model, prepared):
    """The run of `steps` steps uninterrupted (in a worker process, start's default), made once per length."""
    runs = {}

    def run(steps: int) -> Path:
        if steps not in runs:
            tmp = tmp_path_factory.mktemp("whole")
            assert start(load_job(_job(tmp, tiny_model, prepared, "whole", steps=steps))).result(timeout=600).steps == steps
            runs[steps] = tmp / "whole"
        return runs[steps]
    return run


@pytest.mark.parametrize("isolated", [False, True], ids=["thread", "process"])
def test_stop_through_the_interface_then_resume_is_bit_identical(tmp_path, tiny_model, prepared, whole, isolated):
    """In a thread the stop sent at step 2's event lands at step 2's end. A worker process hears it some steps
    later (the events cross processes; a loaded machine adds more), so there the run is longer and the checkpoint
    is of the step it stopped at, whichever that was."""
    total = 4 if not isolated else 16
    whole = whole(total)
    job = _job(tmp_path, tiny_model, prepared, "broken", steps=total)
    holder, on_event = _at_step(2, "stop")
    handle = holder["handle"] = start(load_job(job), on_event=on_event, isolated=isolated)
    events = list(handle.events())
    with pytest.raises(Stopped):
        handle.result()
    saved = [e for e in events if isinstance(e, CheckpointSaved)]
    at = saved[0].step if saved else None
    assert (at == 2 if not isolated else 2 <= at < total), [e.step for e in saved]
    assert [e.step for e in saved] == [at] and (saved[0].path / "state.pt").is_file()
    assert events[-1] == Finished(tmp_path / "broken", at, stopped=True)
    record = read_run(tmp_path / "broken")
    assert record.status == "stopped" and [c.step for c in record.checkpoints] == [at] and record.metrics.steps == at
    assert record.settings["train"]["steps"] == total and record.libraries["torch"] and record.exports == []
    # the folder as personae wrote it before run.json: --resume reads its checkpoints all the same
    (tmp_path / "broken" / RUN_FILE).unlink()
    (tmp_path / "broken" / "versions.json").write_text(json.dumps({"python": "3.11", "torch": "2.13.0"}))
    assert read_run(tmp_path / "broken").status == "stopped"
    assert main(["train", str(job), "--resume", "--quiet"]) == 0
    for name in ["losses.csv", f"checkpoints/step-{total:06d}/trainable.safetensors", "lora.safetensors"]:
        if name == "lora.safetensors":  # kohya names the file after its run folder: compare the tensors' bytes
            from safetensors.torch import load_file

            a, b = load_file(str(whole / name)), load_file(str(tmp_path / "broken" / name))
            assert a.keys() == b.keys() and all(a[k].numpy().tobytes() == b[k].numpy().tobytes() for k in a), name
            continue
        assert (whole / name).read_bytes() == (tmp_path / "broken" / name).read_bytes(), name
    record = read_run(tmp_path / "broken")
    assert record.status == "finished" and record.metrics.steps == total and record.error is None
    assert {(e.path, e.format, e.loader) for e in record.exports} >= {("lora.safetensors", "kohya", "lora")}
    assert record.metrics.final_loss == pytest.approx(float((whole / "losses.csv").read_text().split(",")[-1]), abs=1e-6)


def test_jobs_in_worker_processes_may_differ_in_precision(tmp_path, tiny_model, prepared):
    """accelerate keeps one precision per process: two jobs that differ both run, each in its own worker, and
    the calling process's accelerate state is untouched; in one process the second is a clear error."""
    from accelerate.state import AcceleratorState

    from personae.jobs.train import run_training

    holder, on_event = _at_step(1, "sample")  # heard some steps later in the worker: a run long enough for it
    plain = holder["handle"] = start(load_job(_job(tmp_path, tiny_model, prepared, "no", steps=16)), on_event=on_event)
    half = start(load_job(_job(tmp_path, tiny_model, prepared, "bf16", steps=1, mixed_precision="bf16")))
    events = list(plain.events())
    assert plain.result(timeout=600).steps == 16 and half.result(timeout=600).steps == 1
    images = [e for e in events if isinstance(e, ImageReady)]
    assert len(images) == 2 and all(e.path.is_file() for e in images)  # "sample now" (a step or two later), the end
    assert read_run(tmp_path / "bf16").settings["train"]["mixed_precision"] == "bf16"
    assert not AcceleratorState._shared_state  # nothing initialised here: the jobs ran in their own processes
    import torch

    state = torch.get_rng_state()
    run_training(load_job(_job(tmp_path, tiny_model, prepared, "here", steps=1)))
    assert torch.equal(torch.get_rng_state(), state)  # the run seeds torch in a fork of the caller's generator
    with pytest.raises(UserError, match="accelerate keeps one precision per process"):
        run_training(load_job(_job(tmp_path, tiny_model, prepared, "here-bf16", steps=1, mixed_precision="bf16")))


def test_sample_and_save_now_give_an_image_and_a_checkpoint(tmp_path, tiny_model, prepared):
    holder, on_event = _at_step(1, "sample", "save")
    handle = holder["handle"] = start(load_job(_job(tmp_path, tiny_model, prepared, "run", steps=3)), on_event=on_event,
                                      isolated=False)  # in a thread, so the commands land at step 1 exactly
    events = list(handle.events())
    assert handle.result().steps == 3 and isinstance(events[-1], Finished) and not events[-1].stopped
    images = [e for e in events if isinstance(e, ImageReady)]
    assert [e.step for e in images] == [1, 1, 3]  # the checkpoint's grid, the sample (same file), the final grid
    assert all(e.path.is_file() and e.path.stat().st_size > 0 for e in images)
    assert [e.step for e in events if isinstance(e, CheckpointSaved)] == [1, 3]
    record = read_run(tmp_path / "run")
    assert record.status == "finished" and [c.step for c in record.checkpoints] == [1, 3]
    with pytest.raises(ValueError, match="unknown command"):
        handle.send("explode")


def test_a_stop_before_the_first_step_ends_the_run_without_a_checkpoint(tmp_path, tiny_model, prepared):
    handle = start(load_job(_job(tmp_path, tiny_model, prepared, "run")))
    handle.stop()
    events = list(handle.events())
    with pytest.raises(Stopped):
        handle.result()
    assert events[-1] == Finished(tmp_path / "run", 0, stopped=True)
    assert not [e for e in events if isinstance(e, CheckpointSaved) or (isinstance(e, Progress) and e.stage == "train")]
    record = read_run(tmp_path / "run")
    assert record.status == "stopped" and record.checkpoints == [] and record.metrics.steps == 0


def test_a_second_ctrl_c_stops_at_once_and_cleans_up(tmp_path, tiny_model, prepared):
    """The CLI runs the job in a worker: the second Ctrl-C interrupts it there, so its cleanup still runs.

    Both Ctrl-Cs land inside step 3, long on purpose (20 micro-batches): signalled at step 2's bar, the first
    one's graceful stop could end within the 50 ms gap (step 2's checkpoint was then still being written, and the
    stop follows it), which would leave the second nothing to interrupt."""
    from personae.outputs import read_marker

    job = _job(tmp_path, tiny_model, prepared, "run", steps=100000, save_every=2, gradient_accumulation=20)
    proc = subprocess.Popen([sys.executable, "-m", "personae", "train", str(job)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=dict(os.environ, OMP_NUM_THREADS="1"))
    watcher = StepWatcher(proc)
    watcher.wait_for_text("step 2: checkpoint")  # step 3 has begun
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    err = watcher.finish(timeout=120)
    assert watcher.done == 2, err[-2000:]  # step 3 never ended: the second Ctrl-C stopped it midway
    assert proc.returncode == 130 and "Traceback" not in err and "interrupted" in err, err[-2000:]
    run = tmp_path / "run"
    assert read_run(run).status == "stopped" and read_run(run).checkpoints
    assert read_marker(run)["writing"] is False and not (tmp_path / ".run.personae-lock").exists()
    assert not [p for p in run.rglob("*") if ".partial" in p.name]


def _older_run(folder: Path) -> Path:
    """A finished LoRA run folder exactly as personae wrote it before run.json, from literal files."""
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump({"version": 1, "method": "lora", "train": {"steps": 4}}))
    (folder / "versions.json").write_text(json.dumps({"python": "3.11.2", "personae": "0.1.0", "torch": "2.13.0"}))
    (folder / "exports.json").write_text(json.dumps({
        "files": [{"path": "lora.safetensors", "format": "kohya", "loader": "lora", "token": None},
                  {"path": "lora_diffusers", "format": "diffusers", "loader": "lora", "token": None}],
        "checks": [{"family": "a1111", "files": [str(folder / "lora.safetensors")], "max_abs_diff": 0.0}]}, indent=1))
    (folder / "losses.csv").write_text("step,loss\n1,0.500000\n2,0.400000\n3,0.300000\n4,0.250000\n")
    for step in (2, 4):
        (folder / f"checkpoints/step-{step:06d}/exports").mkdir(parents=True)
        (folder / f"checkpoints/step-{step:06d}/state.pt").write_bytes(b"state")
        (folder / f"checkpoints/step-{step:06d}/exports/lora.safetensors").write_bytes(b"lora")
    (folder / "checkpoints/step-000006").mkdir()  # incomplete (no state.pt): not a checkpoint
    (folder / "lora.safetensors").write_bytes(b"lora")
    return folder


def test_an_older_run_folder_reads_as_a_record_and_compare_plans_it(tmp_path, tiny_model):
    from personae.jobs.compare_plan import expand, load_suite

    run = _older_run(tmp_path / "old")
    record = read_run(run)
    assert record.version == 1 and record.kind == "train" and record.status == "finished"
    assert [(e.path, e.format, e.loader) for e in record.exports] == [("lora.safetensors", "kohya", "lora"),
                                                                      ("lora_diffusers", "diffusers", "lora")]
    assert record.checks[0].max_abs_diff == 0.0 and record.settings["train"]["steps"] == 4
    assert [(c.step, c.path) for c in record.checkpoints] == [(2, "checkpoints/step-000002"),
                                                              (4, "checkpoints/step-000004")]
    assert record.metrics.steps == 4 and record.metrics.final_loss == 0.25 and record.metrics.total_steps == 4
    assert record.personae_version == "0.1.0" and record.libraries == {"python": "3.11.2", "torch": "2.13.0"}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump({"base_model": str(tiny_model[0]), "prompts": ["a {token}"],
                                                         "variants": [{"label": "old", "run": str(run)}]}))
    from personae.world.bench import _exports  # the world bench loads what the record lists, too

    assert _exports(run) == (str(run / "lora.safetensors"), [], None)
    rows = expand(load_suite(tmp_path / "suite.yaml"))
    assert [(r.label, r.step, r.loras) for r in rows] == [
        ("old step 2", 2, ((str(run / "checkpoints/step-000002/exports/lora.safetensors"), 1.0),)),
        ("old step 4", 4, ((str(run / "checkpoints/step-000004/exports/lora.safetensors"), 1.0),)),
        ("old final", None, ((str(run / "lora.safetensors"), 1.0),))]


def test_a_record_newer_or_damaged_is_refused_by_name(tmp_path):
    run = _older_run(tmp_path / "run")
    (run / RUN_FILE).write_text(json.dumps({"version": 2, "kind": "train", "status": "finished"}))
    with pytest.raises(UserError, match="version 2, newer"):
        read_run(run)
    (run / RUN_FILE).write_text(json.dumps({"version": 1, "status": "done"}))
    with pytest.raises(UserError, match=r"run.json is damaged \(status"):
        read_run(run)
    with pytest.raises(UserError, match="not a personae training run"):
        read_run(tmp_path)
