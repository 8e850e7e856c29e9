"""Runs that are stopped, raced or starved of disk (issue 14): the lock, SIGTERM, ENOSPC.

- A run folder is locked while a process trains into it: a second process is refused with the
  holder's pid, and a kill -9 of the holder frees the folder (the OS drops an flock with its owner).
- SIGTERM (what kill, schedulers and containers send) saves a checkpoint at the end of the step,
  as Ctrl-C does; five at random points, each followed by --resume, end bit-identical to a run
  that was never stopped.
- A full disk (ENOSPC) while a checkpoint or an export is written: one paragraph, exit 2, the
  previous checkpoint still loads, no .partial and no 0-byte file left behind. Injected by making
  the writer fail at that moment, and for real on a tiny tmpfs where the test may mount one.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from train_helpers import StepWatcher, prepared_subject, write_job

from personae.cli.main import main
from personae.errors import UserError
from personae.jobs.train import load_job, run_training
from personae.runs import read_run
from personae.training import checkpoint as ckpt

pytestmark = pytest.mark.slow  # models, training or CLI subprocesses: the full tier only

QUICK = {"batch_size": 1, "resolution": 64, "verify_exports": False, "validation": {"steps": 1}}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepared_subject(tmp_path_factory.mktemp("data"), count=3, trigger="sks")


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def _train(job: Path, *extra: str, quiet: bool = False) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "personae", "train", str(job), *extra] + (["--quiet"] if quiet else [])
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _leftovers(run: Path) -> list[str]:
    """Half-written things: temporary files and folders, 0-byte files."""
    bad = []
    for path in run.rglob("*"):
        if path.name.endswith(".partial") or ".partial" in path.name or (path.is_file() and path.stat().st_size == 0):
            bad.append(str(path.relative_to(run)))
    return bad


# ---------------------------------------------------------------- the lock

def test_a_run_folder_is_locked_while_trained_and_free_after_kill_9(tmp_path, tiny_model, prepared):
    run = tmp_path / "run"
    job = write_job(tmp_path, base_model=str(tiny_model[0]), method="lora", data=prepared, output=run,
                    lora={"rank": 2, "alpha": 2}, train={**QUICK, "steps": 100000, "save_every": 1})
    holder = _train(job)
    watcher = StepWatcher(holder)
    try:
        watcher.wait(2)
        for flags in ({"resume": True}, {"overwrite": True}):
            with pytest.raises(UserError) as refused:
                run_training(load_job(job), **flags)
            assert f"pid {holder.pid}" in str(refused.value) and str(run) in str(refused.value)
        assert ckpt.list_checkpoints(run)  # --overwrite removed nothing of the holder's
    finally:
        holder.send_signal(signal.SIGKILL)
        watcher.finish()
    found = ckpt.list_checkpoints(run)[-1][0]
    result = run_training(load_job(job, [f"train.steps={found + 1}", "train.save_every=1000"]), resume=True)
    assert result.steps == found + 1 and len(result.losses) == found + 1 and read_run(run).status == "finished"
    assert not (tmp_path / ".run.personae-lock").exists()


# ---------------------------------------------------------------- SIGTERM

def test_sigterm_five_times_with_resume_is_bit_identical(tmp_path, tiny_model, prepared):
    common = dict(base_model=str(tiny_model[0]), method="lora", data=prepared,
                  lora={"rank": 4, "alpha": 4, "dropout": 0.1},
                  train={**QUICK, "steps": 60, "batch_size": 2, "learning_rate": 1e-3, "save_every": 5, "keep_last": 2,
                         "ema": True, "lr_scheduler": "cosine", "warmup_steps": 3})
    whole = write_job(tmp_path, output=tmp_path / "whole", **common)
    broken = write_job(tmp_path, output=tmp_path / "broken", **common)
    reference = _train(whole, quiet=True)
    assert reference.wait(timeout=600) == 0, reference.stderr.read().decode()[-2000:]
    rng = random.Random(14)
    done, stops = 0, []
    for attempt in range(5):
        proc = _train(broken, *(["--resume"] if attempt else []))
        watcher = StepWatcher(proc)
        if attempt == 2:  # one lands before the loop: model loading, caches (no checkpoint is due)
            time.sleep(rng.uniform(0.5, 3.0))
        else:  # the others during a random step (a save included), or while its checkpoint is written. A step of
            # the tiny model takes milliseconds, so the pause is counted in steps and 20 steps stay after the
            # last target: a signal that came after the run had ended would test nothing
            watcher.wait(min(done + rng.randint(1, 4), 40))
            time.sleep(rng.uniform(0.0, 1.0) * watcher.seconds_per_step())
        proc.send_signal(signal.SIGTERM)
        err = watcher.finish()
        assert proc.returncode in (143, -signal.SIGTERM), err[-2000:]  # -15: it came before Python's handler existed
        assert "Traceback" not in err, err[-3000:]
        found = ckpt.list_checkpoints(tmp_path / "broken")
        if watcher.done:  # the loop had begun: it stopped at a step's end, with a checkpoint of that step
            assert proc.returncode == 143 and ("saving a checkpoint" in err or "stopping after" in err), err[-2000:]
            assert found and found[-1][0] >= watcher.done
            stops.append(found[-1][0])
        done = found[-1][0] if found else 0
    assert len(stops) >= 4 and stops == sorted(stops) and len(set(stops)) == len(stops)  # each went further
    final = _train(broken, "--resume", quiet=True)
    assert final.wait(timeout=600) == 0, final.stderr.read().decode()[-2000:]
    for name in ["losses.csv", "checkpoints/step-000060/trainable.safetensors"]:
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "broken" / name).read_bytes(), name
    for name in ["lora.safetensors", "lora_diffusers/pytorch_lora_weights.safetensors"]:  # the exports: every bit
        # of every tensor, and the same header (safetensors orders header keys differently from call to call)
        a, b = (safe_open(str(tmp_path / run / name), "pt") for run in ("whole", "broken"))
        ha, hb = _header(a.metadata()), _header(b.metadata())
        for header, run in ((ha, "whole"), (hb, "broken")):  # kohya names the file after its run's folder
            for key in ("ss_output_name", "modelspec.title"):
                assert header.pop(key, run) == run, (name, key)
        assert ha == hb and a.keys() == b.keys(), name
        for key in a.keys():
            x, y = a.get_tensor(key), b.get_tensor(key)
            assert x.dtype == y.dtype and torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)), (name, key)


def _header(metadata: dict[str, str]) -> dict:
    """A header's fields, JSON parsed; peft's target_modules is a set, listed in a per-process hash order."""
    def norm(value):
        if isinstance(value, dict):
            return {k: norm(v) for k, v in value.items()}
        return sorted(value) if isinstance(value, list) and all(isinstance(v, str) for v in value) else value
    out = {}
    for key, text in metadata.items():
        try:
            out[key] = norm(json.loads(text))
        except ValueError:
            out[key] = text
    return out


# ---------------------------------------------------------------- a full disk

def _enospc_job(tmp_path, tiny_model, prepared, run):
    return write_job(tmp_path, base_model=str(tiny_model[0]), method="lora", data=prepared, output=run,
                     lora={"rank": 2, "alpha": 2}, train={**QUICK, "steps": 4, "save_every": 2, "keep_last": 3})


def _full_disk_after(real, calls: int):
    """A writer that works `calls` times, then writes half a file and fails as a full disk does."""
    count = [0]

    def writer(tensors, path, *args, **kwargs):
        count[0] += 1
        if count[0] > calls:
            Path(path).write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, *args, **kwargs)
    return writer


@pytest.mark.parametrize("where,target,calls", [
    # writes per save: the exports (through models.folders.save_file), then trainable.safetensors
    # (checkpoint.save_file)
    ("checkpoint", "personae.training.checkpoint.save_file", 1),  # step 2 saved; step 4's checkpoint fails
    ("export", "personae.models.folders.save_file", 2),  # kohya + diffusers at step 2; the final export fails
])
def test_a_full_disk_is_explained_and_the_last_checkpoint_survives(where, target, calls, tmp_path, tiny_model,
                                                                   prepared, monkeypatch, capsys):
    import importlib

    run = tmp_path / "run"
    job = _enospc_job(tmp_path, tiny_model, prepared, run)
    module, name = target.rsplit(".", 1)
    monkeypatch.setattr(importlib.import_module(module), name,
                        _full_disk_after(getattr(importlib.import_module(module), name), calls))
    assert main(["train", str(job), "--quiet"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "disk is full" in err and "step 4" in err and "step 2" in err and "--resume" in err and "Traceback" not in err
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [2] and _leftovers(run) == []
    weights, state = ckpt.load_checkpoint(ckpt.checkpoint_dir(run, 2))
    record = read_run(run)
    assert state["step"] == 2 and weights and record.status == "failed" and "disk is full" in record.error
    assert record.exports == [] and [c.step for c in record.checkpoints] == [2]
    monkeypatch.undo()  # space freed: the run continues from step 2
    assert main(["train", str(job), "--resume", "--quiet"]) == 0
    assert [s for s, _ in ckpt.list_checkpoints(run)][-1] == 4 and (run / "lora.safetensors").is_file()


def test_a_full_disk_in_a_staged_output_leaves_the_previous_one(tmp_path, prepared, monkeypatch, capsys):
    import personae.data.prepare as prepare

    photos = prepared.parent / "photos"
    out = tmp_path / "set"
    assert main(["prepare", str(photos), str(out), "--resolution", "64", "--quiet"]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(prepare, "contact_sheet", full)
    assert main(["prepare", str(photos), str(out), "--resolution", "48", "--quiet"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "disk is full" in err and str(out) in err and "Traceback" not in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "set.partial").exists() and os.listdir(tmp_path) == ["set"]


@pytest.fixture
def tiny_disk(tmp_path):
    """A 6 MB tmpfs (needs root and CAP_SYS_ADMIN; skipped elsewhere)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)],
                                                       capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_really_full_disk_during_the_final_export(tmp_path, tiny_model, prepared, tiny_disk):
    from personae.events import Progress

    run = tiny_disk / "run"
    job = load_job(_enospc_job(tmp_path, tiny_model, prepared, run))

    def fill_at_step_3(event):  # everything the disk can still hold goes to a file that is not personae's
        if isinstance(event, Progress) and event.stage == "train" and event.done == 3:
            with open(tiny_disk / f"filler-{uuid.uuid4().hex}", "wb") as fh:
                try:
                    while True:
                        fh.write(b"\0" * 65536)
                        fh.flush()
                except OSError:
                    pass

    with pytest.raises(UserError, match="disk is full") as err:
        run_training(job, on_event=fill_at_step_3)
    assert "step 2" in str(err.value)
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [2] and _leftovers(run) == []
    assert ckpt.load_checkpoint(ckpt.checkpoint_dir(run, 2))[1]["step"] == 2
    assert torch.is_tensor(next(iter(load_file(str(run / "checkpoints/step-000002/trainable.safetensors")).values())))


def test_a_full_disk_in_generate_and_detect_is_a_message(tmp_path, tiny_model, prepared, monkeypatch, capsys):
    import personae.media.png as png

    real = png.Image.Image.save

    def full(self, fp, *args, **kwargs):  # the PNG writer starts its file, then the disk is full
        Path(fp).write_bytes(b"\x89PNG")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(png.Image.Image, "save", full)
    photo = next(prepared.glob("images/*.png"))
    runs = [(["generate", "--model", str(tiny_model[0]), "--prompt", "x", "--steps", "1", "--width", "64", "--height", "64",
              "--out", str(tmp_path / "pictures"), "--quiet"], tmp_path / "pictures"),
            (["detect", "canny", str(photo), str(tmp_path / "maps/edges.png")], tmp_path / "maps")]
    for argv, folder in runs:
        assert main(argv) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert "disk is full" in err and "Traceback" not in err
        assert [p.name for p in folder.iterdir() if p.name != ".personae.json"] == []
    monkeypatch.setattr(png.Image.Image, "save", real)
