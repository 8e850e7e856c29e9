"""A user's files are sacred (issue 14): every command pointed at folders holding them leaves them byte-identical.

Each case builds a folder the way a careless user might (their photos, notes, an index.html, a
folder named like personae's staging folder), hashes every file under it, runs the command in
process through the CLI's `main`, and checks: exit 2, one paragraph naming the path, no traceback,
and every file (and the list of files) exactly as before, with and without --overwrite.
Then the other side: folders personae made are replaced (or continued) while the files a user
added to them stay, and prepare never gives two photos one name.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from personae.cli.main import main
from personae.config.prepare import PrepareSettings
from personae.data.prepare import prepare_dataset
from personae.data.samples import write_sample_subject
from personae.outputs import MARKER, read_marker

pytestmark = pytest.mark.slow  # models, training or CLI subprocesses: the full tier only

QUICK_TRAIN = {"steps": 2, "batch_size": 1, "resolution": 64, "verify_exports": False, "validation": {"steps": 1}}


def snapshot(root: Path) -> dict[str, str]:
    """Every file (sha256), link (its target) and folder under root."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_dir():
                out[rel + "/"] = "folder"
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def squash(text: str) -> str:
    return "".join(str(text).split())


def user_files(folder: Path, names=("notes.txt", "photo.png")) -> Path:
    """A folder holding what a user keeps there."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".png"):
            Image.new("RGB", (70, 70), (hash(name) % 255, 90, 40)).save(path)
        else:
            path.write_text(f"{name}: mine, do not touch\n")
    return folder


@pytest.fixture(scope="module")
def ctx(tiny_model, tmp_path_factory):
    """A prepared set, a short LoRA run and its files, a scenes file and a suite: the inputs the commands read."""
    from personae.jobs.train import load_job, run_training

    root = tmp_path_factory.mktemp("safety")
    write_sample_subject(root / "photos", count=3, trigger="sks")
    prepare_dataset(root / "photos", root / "prepared", PrepareSettings(resolution=64))
    job = _job(root / "job.yaml", tiny_model[0], root / "prepared", root / "runs/base")
    run_training(load_job(job))
    (root / "scenes.yaml").write_text(yaml.safe_dump({
        "version": 1, "model": str(tiny_model[0]), "steps": 1, "width": 64, "height": 64, "seed": 0,
        "scenes": [{"number": 1, "description": "a cat", "shot": "close-up"}]}))
    (root / "suite.yaml").write_text(yaml.safe_dump({
        "version": 1, "base_model": str(tiny_model[0]), "variants": [{"label": "base"}], "prompts": ["a photo"],
        "seeds": [0], "steps": 1, "width": 64, "height": 64, "metrics": {"clip": None, "dino": None}}))
    return {"root": root, "tiny": tiny_model[0], "prepared": root / "prepared", "photos": root / "photos",
            "kohya": root / "runs/base/lora.safetensors",
            "diffusers": root / "runs/base/lora_diffusers/pytorch_lora_weights.safetensors"}


def _job(path: Path, model, data, output, **extra) -> Path:
    path.write_text(yaml.safe_dump({"version": 1, "base_model": str(model), "method": "lora", "data": {"path": str(data)},
                                    "lora": {"rank": 2, "alpha": 2}, "train": QUICK_TRAIN, "output": str(output), **extra}))
    return path


# ---------------------------------------------------------------- refusals: a table of careless commands

@dataclass
class Case:
    name: str
    build: Callable  # (ctx, tmp) -> (root to hash, argv, the path the message must name)
    flags: tuple = ((),)  # extra flag sets to try, e.g. ((), ("--overwrite",))


def _train_into_user_folder(c, tmp):
    folder = user_files(tmp / "mine")
    return folder, ["train", str(_job(tmp / "job.yaml", c["tiny"], c["prepared"], folder))], folder


def _train_into_project_folder(c, tmp):
    project = tmp / "project"
    user_files(project)
    os.symlink(c["prepared"], project / "prepared")
    job = project / "job.yaml"
    job.write_text(yaml.safe_dump({"version": 1, "base_model": str(c["tiny"]), "method": "lora",
                                   "data": {"path": "./prepared"}, "train": QUICK_TRAIN, "output": "."}))
    return project, ["train", str(job)], project


def _train_into_its_data(c, tmp):
    data = tmp / "set"
    prepare_dataset(c["photos"], data, PrepareSettings(resolution=64))
    return data, ["train", str(_job(tmp / "job.yaml", c["tiny"], data, data))], data


def _train_into_its_photos(c, tmp):  # also: config.yaml is not written there before the refusal
    photos = user_files(tmp / "photos", ("a.png", "b.png", "c.png"))
    return photos, ["train", str(_job(tmp / "job.yaml", c["tiny"], photos, photos))], photos


def _train_over_a_config_of_the_users(c, tmp):  # config.yaml alone does not make a run folder
    folder = user_files(tmp / "project", ("config.yaml",))
    return folder, ["train", str(_job(tmp / "job.yaml", c["tiny"], c["prepared"], folder))], folder


def _model_over_a_downloaded_model(c, tmp):  # a diffusers folder personae did not write is never replaced
    out = user_files(tmp / "sd15", ("model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors"))
    return out, ["model", "tiny", str(out)], out


def _train_around_its_data(c, tmp):
    project = user_files(tmp / "project", ("shots/a.png", "shots/b.png"))
    return project, ["train", str(_job(tmp / "job.yaml", c["tiny"], project / "shots", project))], project


def _prepare_src_inside_out(c, tmp):
    out = user_files(tmp / "set", ("images/me-1.png", "images/me-2.png", "images/me-1.txt"))
    return out, ["prepare", str(out / "images"), str(out), "--resolution", "64"], out


def _prepare_out_inside_src(c, tmp):
    src = user_files(tmp / "photos", ("a.png", "b.png"))
    return src, ["prepare", str(src), str(src / "prepared"), "--resolution", "64"], src


def _prepare_into_user_folder(c, tmp):
    out = user_files(tmp / "mine")
    return out, ["prepare", str(c["photos"]), str(out), "--resolution", "64"], out


def _demo(c, tmp):
    out = user_files(tmp / "site", ("index.html", "runs/keep.txt", "photos/me.png"))
    return out, ["demo", "--out", str(out), "--quiet"], out


def _storyboard(c, tmp):
    out = user_files(tmp / "board", ("sheet.png", "sheet-2.png", "sheet-final.png", "notes.txt"))
    return out, ["storyboard", str(c["root"] / "scenes.yaml"), "--out", str(out), "--quiet"], out


def _compare(c, tmp):
    out = user_files(tmp / "cmp")
    return out, ["compare", str(c["root"] / "suite.yaml"), "--out", str(out), "--quiet"], out


def _compare_beside_a_partial_named_folder(c, tmp):
    user_files(tmp / "cmp.partial")
    return tmp, ["compare", str(c["root"] / "suite.yaml"), "--out", str(tmp / "cmp"), "--quiet"], tmp / "cmp.partial"


def _world_bench(c, tmp):
    out = user_files(tmp / "bench")
    return out, ["world", "bench", "--out", str(out), "--methods", "lora", "--concepts", "star", "--seeds", "1",
                 "--quiet"], out


def _world_pretrain(c, tmp):
    out = user_files(tmp / "world")
    return out, ["world", "pretrain", str(out), "--steps", "1", "--quiet"], out


def _world_controlnet(c, tmp):
    out = user_files(tmp / "cn")
    return out, ["world", "controlnet", str(out), "--steps", "1", "--quiet"], out


def _world_control_eval(c, tmp):
    out = user_files(tmp / "placement")
    return out, ["world", "control-eval", "--out", str(out), "--controls", "1"], out


def _world_img2img_eval(c, tmp):
    out = user_files(tmp / "img2img")
    return out, ["world", "img2img-eval", "--out", str(out), "--cases", "1"], out


def _world_zero_snr(c, tmp):
    out = user_files(tmp / "zs")
    return out, ["world", "zero-snr", str(out), "--steps", "1", "--set", "dataset_size=16", "--set", "eval.samples=16",
                 "--set", "eval.steps=1", "--quiet"], out


def _world_motion(c, tmp):
    out = user_files(tmp / "wm")
    return out, ["world", "motion", str(out), "--steps", "1", "--quiet"], out


def _world_motion_eval(c, tmp):
    out = user_files(tmp / "motion")
    return out, ["world", "motion-eval", "--out", str(out), "--motion-adapter", str(c["tiny"]), "--clips", "1"], out


def _model(kind):
    def build(c, tmp):
        out = user_files(tmp / "model")
        return out, ["model", kind, str(out)], out
    return build


def _animate_frames(c, tmp):
    out = user_files(tmp / "frames", ("frame-0000.png", "notes.txt"))
    return out, ["animate", "--model", str(c["tiny"]), "--motion-adapter", str(tmp / "motion"), "--prompt", "x",
                 "--frames-dir", str(out), "--quiet"], out


def _generate(c, tmp):
    out = user_files(tmp / "pictures", ("00000-1.png", "holiday.png"))
    return out, ["generate", "--model", str(c["tiny"]), "--prompt", "x", "--steps", "1", "--out", str(out), "--quiet"], out


def _convert_to_folder(c, tmp):
    out = user_files(tmp / "converted")
    return out, ["convert", str(c["kohya"]), "--to", "diffusers", "--out", str(out)], out


OVERWRITE = ((), ("--overwrite",))
CASES = [
    Case("train into a folder of the user's", _train_into_user_folder, ((), ("--overwrite",), ("--resume",))),
    Case("train with output: . (the project folder)", _train_into_project_folder, ((), ("--overwrite",))),
    Case("train into its own training data", _train_into_its_data, OVERWRITE),
    Case("train into its photo folder", _train_into_its_photos, OVERWRITE),
    Case("train into a folder around its data", _train_around_its_data, OVERWRITE),
    Case("train into a folder with the user's config.yaml", _train_over_a_config_of_the_users, OVERWRITE),
    Case("prepare SRC = OUT/images", _prepare_src_inside_out),
    Case("prepare OUT inside SRC", _prepare_out_inside_src),
    Case("prepare into a folder of the user's", _prepare_into_user_folder),
    Case("demo into the user's site", _demo),
    Case("storyboard into the user's sheets", _storyboard),
    Case("compare into the user's notes", _compare),
    Case("compare beside a user folder named OUT.partial", _compare_beside_a_partial_named_folder),
    Case("world bench", _world_bench, OVERWRITE),
    Case("world pretrain", _world_pretrain, OVERWRITE),
    Case("world controlnet", _world_controlnet, OVERWRITE),
    Case("world control-eval", _world_control_eval, OVERWRITE),
    Case("world img2img-eval", _world_img2img_eval, OVERWRITE),
    Case("world zero-snr", _world_zero_snr, OVERWRITE),
    Case("world motion", _world_motion, OVERWRITE),
    Case("world motion-eval", _world_motion_eval, OVERWRITE),
    Case("model tiny", _model("tiny"), OVERWRITE),
    Case("model tiny-motion", _model("tiny-motion"), OVERWRITE),
    Case("model tiny-controlnet", _model("tiny-controlnet"), OVERWRITE),
    Case("model world", _model("world"), OVERWRITE),
    Case("model world-controlnet", _model("world-controlnet"), OVERWRITE),
    Case("model world-zero-snr", _model("world-zero-snr"), OVERWRITE),
    Case("model world-motion", _model("world-motion"), OVERWRITE),
    Case("model tiny over a downloaded model", _model_over_a_downloaded_model, OVERWRITE),
    Case("animate --frames-dir", _animate_frames, OVERWRITE),
    Case("generate", _generate),
    Case("convert --to diffusers", _convert_to_folder, OVERWRITE),
]


@pytest.mark.parametrize("case,flags", [(c, f) for c in CASES for f in c.flags],
                         ids=[f"{c.name} {' '.join(f)}".strip() for c in CASES for f in c.flags])
def test_a_folder_of_the_users_is_refused_and_left_byte_identical(case, flags, ctx, tmp_path, capsys):
    root, argv, named = case.build(ctx, tmp_path)
    before = snapshot(root)
    code = main(argv + list(flags))
    err = capsys.readouterr().err
    assert code == 2, err
    assert snapshot(root) == before  # every file as it was, nothing added (no config.yaml, no lock, no marker)
    assert "Traceback" not in err and err.startswith("error: ") and "\n\n" not in err.strip()
    assert squash(named) in squash(err), err


# ---------------------------------------------------------------- single files: replaced only when asked

def test_an_existing_file_is_replaced_only_with_overwrite(ctx, tmp_path, capsys):
    """detect, convert --to kohya and model --single-file: without --overwrite refused; with it, that file alone."""
    neighbours = user_files(tmp_path / "files")
    target = neighbours / "edges.png"
    cases = [
        (["detect", "canny", str(ctx["photos"] / sorted(os.listdir(ctx["photos"]))[0]), str(target)], target),
        (["convert", str(ctx["diffusers"]), "--to", "kohya", "--out", str(neighbours / "mine.safetensors")],
         neighbours / "mine.safetensors"),
        (["model", "tiny", str(tmp_path / "new-model"), "--single-file", str(neighbours / "tiny.safetensors")],
         neighbours / "tiny.safetensors"),
    ]
    for argv, path in cases:
        path.write_bytes(b"the user's own file")
        before = snapshot(neighbours)
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "alreadyexists" in squash(err) and squash(path) in squash(err) and "--overwrite" in err
        assert snapshot(neighbours) == before and not (tmp_path / "new-model").exists()
        assert main(argv + ["--overwrite"]) == 0, capsys.readouterr().err
        after = snapshot(neighbours)
        assert after.pop(path.name) != before.pop(path.name) and after == before  # only the named file changed
        assert not any(name.endswith(".partial") for name in os.listdir(neighbours))


# ---------------------------------------------------------------- personae's folders: replaced, the user's additions kept

def test_a_compare_rerun_replaces_its_output_and_keeps_what_the_user_added(ctx, tmp_path):
    out = tmp_path / "cmp"
    argv = ["compare", str(ctx["root"] / "suite.yaml"), "--out", str(out), "--quiet"]
    assert main(argv) == 0
    assert read_marker(out)["kind"] == "compare" and "report.html" in read_marker(out)["files"]
    (out / "images/base/stale.png").write_bytes(b"")  # what an old version left: listed as personae's
    marker = read_marker(out)
    (out / MARKER).write_text(json.dumps({**marker, "files": marker["files"] + ["images/base/stale.png"]}))
    user_files(out, ("notes.txt", "images/base/my-favourite.png"))
    mine = {k: v for k, v in snapshot(out).items() if "notes" in k or "favourite" in k}
    assert main(argv) == 0
    after = snapshot(out)
    assert all(after[k] == v for k, v in mine.items())
    assert not (out / "images/base/stale.png").exists() and (out / "report.html").is_file()
    assert "notes.txt" not in read_marker(out)["files"]
    assert not (tmp_path / "cmp.partial").exists()


def test_train_overwrite_removes_only_what_runs_wrote(ctx, tmp_path):
    from personae.jobs.train import load_job, run_training

    run = tmp_path / "run"
    job = _job(tmp_path / "job.yaml", ctx["tiny"], ctx["prepared"], run, train={**QUICK_TRAIN, "save_every": 1})
    assert main(["train", str(job), "--quiet"]) == 0
    user_files(run, ("notes.txt", "my-eval/scores.csv"))
    mine = {k: v for k, v in snapshot(run).items() if "notes" in k or "my-eval" in k}
    # as if the last run was killed after writing a checkpoint it could not record: its layout says it is personae's
    marker = read_marker(run)
    (run / MARKER).write_text(json.dumps({**marker, "writing": True}))
    (run / "checkpoints/step-000099").mkdir()
    (run / "checkpoints/step-000099/trainable.safetensors").write_bytes(b"")
    assert main(["train", str(job), "--quiet"]) == 2  # a run is there: --resume or --overwrite
    result = run_training(load_job(job, ["train.save_every=1000"]), overwrite=True)
    after = snapshot(run)
    assert all(after[k] == v for k, v in mine.items())
    assert not (run / "checkpoints/step-000099").exists() and not (run / "checkpoints/step-000001").exists()
    assert result.steps == 2 and (run / "lora.safetensors").is_file()
    marker = read_marker(run)
    assert marker["kind"] == "train" and not marker["writing"] and "lora.safetensors" in marker["files"]
    assert "notes.txt" not in marker["files"]


def test_run_folders_from_before_markers_still_resume_and_overwrite(ctx, tmp_path, capsys):
    from personae.jobs.train import load_job, run_training

    run = tmp_path / "old-run"
    job = _job(tmp_path / "job.yaml", ctx["tiny"], ctx["prepared"], run, train={**QUICK_TRAIN, "save_every": 1})
    def as_before_markers():  # as runs were written then: config.yaml, versions.json, checkpoints/, no marker
        (run / MARKER).unlink()
        (run / "run.json").unlink()
        (run / "versions.json").write_text('{"personae": "0.1.0"}\n')

    run_training(load_job(job, ["train.steps=1"]))
    as_before_markers()
    result = run_training(load_job(job), resume=True)  # recognised by its layout; continues from step 1
    assert result.steps == 2 and len(result.losses) == 2 and read_marker(run)["kind"] == "train"
    as_before_markers()
    run_training(load_job(job), overwrite=True)
    as_before_markers()
    user_files(run, ("notes.txt",))  # not a name personae writes: an old folder with it is not recognised
    before = snapshot(run)
    assert main(["train", str(job), "--overwrite", "--quiet"]) == 2
    assert "notes.txt" in capsys.readouterr().err and snapshot(run) == before


def test_storyboard_and_generate_reruns_keep_the_users_additions(ctx, tmp_path):
    board, pictures = tmp_path / "board", tmp_path / "pictures"
    board_argv = ["storyboard", str(ctx["root"] / "scenes.yaml"), "--out", str(board), "--quiet"]
    gen_argv = ["generate", "--model", str(ctx["tiny"]), "--prompt", "x", "--steps", "1", "--width", "64",
                "--height", "64", "--out", str(pictures), "--quiet"]
    assert main(board_argv) == 0 and main(gen_argv) == 0
    user_files(board, ("sheet-final.png", "notes.txt"))
    user_files(pictures, ("holiday.png",))
    mine = {**{f"b/{k}": v for k, v in snapshot(board).items() if k in ("sheet-final.png", "notes.txt")},
            **{f"p/{k}": v for k, v in snapshot(pictures).items() if k == "holiday.png"}}
    assert main(board_argv + ["--only", "1"]) == 0 and main(gen_argv) == 0
    after = {**{f"b/{k}": v for k, v in snapshot(board).items()}, **{f"p/{k}": v for k, v in snapshot(pictures).items()}}
    assert all(after[k] == v for k, v in mine.items())
    assert (board / "sheet.png").is_file() and (board / "panels/panel-001.png").is_file()
    assert [p.name[:5] for p in sorted(pictures.glob("0*.png"))] == ["00000", "00001"]  # appended, nothing replaced


# ---------------------------------------------------------------- prepare: one photo, one output name

def test_prepare_names_never_collide_and_stay_the_same_across_runs(tmp_path):
    src = tmp_path / "photos"
    colours = {"same.jpg": (200, 30, 30), "same.png": (30, 200, 30), "a b.png": (30, 30, 200), "a_b.png": (200, 200, 30),
               "sub/x.png": (30, 200, 200), "sub__x.png": (200, 30, 200)}
    for name, colour in colours.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        image = Image.new("RGB", (96, 96), colour)
        image.save(src / name, quality=100) if name.endswith(".jpg") else image.save(src / name)
    before = snapshot(src)
    first = prepare_dataset(src, tmp_path / "set", PrepareSettings(resolution=64))
    assert len(first.entries) == 6 and len({e.image for e in first.entries}) == 6
    for entry in first.entries:  # each output holds its own photo, so none was trained twice or lost
        mean = np.asarray(Image.open(tmp_path / "set" / entry.image)).reshape(-1, 3).mean(0)
        assert np.abs(mean - colours[entry.source]).max() < 8, entry.source
    again = prepare_dataset(src, tmp_path / "set", PrepareSettings(resolution=64))
    assert again.reused == 6 and {e.source: e.image for e in again.entries} == {e.source: e.image for e in first.entries}
    assert len(list((tmp_path / "set/images").glob("*.png"))) == 6 and snapshot(src) == before


# ---------------------------------------------------------------- the policy itself (outputs.py), no models

def test_the_policy_on_its_own(tmp_path):
    import threading

    from personae.errors import UserError
    from personae.outputs import Kind, locked, open_output, staged_output

    kind = Kind("toy", "a toy output", "personae toy", layout=("report.txt", "parts/*"), signature=("report.txt",))
    out = tmp_path / "out"
    with staged_output(out, kind) as work:
        (work / "report.txt").write_text("1")
    assert read_marker(out)["files"] == ["report.txt"] and not (tmp_path / "out.partial").exists()
    # a user's file where the new output puts one of its own: refused, nothing changed
    (out / "extra.txt").write_text("mine")
    before = snapshot(tmp_path)
    with pytest.raises(UserError, match="extra.txt"):
        with staged_output(out, kind) as work:
            (work / "report.txt").write_text("2")
            (work / "extra.txt").write_text("personae's")
    assert snapshot(tmp_path) == before
    # a staging folder a killed run left is cleared; one that is a finished output (or the user's) is not
    with staged_output(tmp_path / "left", kind) as work:
        (work / "report.txt").write_text("x")
        os.rename(work, tmp_path / "left-over.partial")
        work.mkdir()
    (tmp_path / "left-over.partial" / MARKER).write_text(json.dumps({**read_marker(tmp_path / "left-over.partial"),
                                                                      "writing": True}))
    with staged_output(tmp_path / "left-over", kind) as work:
        (work / "report.txt").write_text("y")
    assert (tmp_path / "left-over/report.txt").read_text() == "y" and not (tmp_path / "left-over.partial").exists()
    with staged_output(tmp_path / "x.partial", kind) as work:  # a finished output that happens to be named so
        (work / "report.txt").write_text("z")
    with pytest.raises(UserError, match="is not personae's"):
        with staged_output(tmp_path / "x", kind):
            pass
    # written in place and killed: the layout names personae's files, anything else stays the user's
    run = tmp_path / "run"
    with open_output(run, kind):
        (run / "parts").mkdir()
        (run / "parts/a.bin").write_bytes(b"a")
    (run / MARKER).write_text(json.dumps({**read_marker(run), "files": [], "writing": True}))
    (run / "mine.txt").write_text("mine")
    with open_output(run, kind, clear=True):
        pass
    assert sorted(os.listdir(run)) == [MARKER, "mine.txt"]
    # the lock: re-entrant in one thread, refused in another with this process's pid
    errors = []
    with locked(run), locked(run):
        thread = threading.Thread(target=lambda: errors.append(_try_lock(run)))
        thread.start()
        thread.join()
    assert f"pid {os.getpid()}" in errors[0] and _try_lock(run) == "" and not (tmp_path / ".run.personae-lock").exists()


def _try_lock(path) -> str:
    from personae.errors import UserError
    from personae.outputs import locked

    try:
        with locked(path):
            return ""
    except UserError as exc:
        return str(exc)


def test_the_umask_is_read_without_being_changed(tmp_path, monkeypatch):
    """Files personae writes get the mode a plain open() gives, and finding that mode never sets the process's
    umask (another thread creating a file at that instant would get mode 0666 / 0777)."""
    import os

    from personae import staging

    calls = []
    real = os.umask
    monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or real(mask))
    old = real(0o027)
    try:
        assert staging._umask() == 0o027 and calls == []
        with staging.atomic_file(tmp_path / "a.txt") as tmp:
            tmp.write_text("x")
        assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640 and calls == []
    finally:
        real(old)


def _import_in_a_fresh_process(code: str, home: Path) -> int:
    """Runs `code` in a new Python with HOME at `home` and the telemetry switch unset, as on a user's machine
    (onnxruntime starts no telemetry where CI is set); returns its pid."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME", "CI")}
    env["HOME"] = str(home)
    out = subprocess.run([sys.executable, "-c", code + "\nimport os; print(os.getpid())"], env=env, check=True,
                         capture_output=True, text=True, timeout=300)
    return int(out.stdout.split()[-1])


def test_loading_models_starts_no_telemetry(tmp_path):
    """diffusers imports onnxruntime whenever it loads a pipeline, and onnxruntime 1.30 then starts Microsoft's
    telemetry: a device-id database in ~/.cache/Microsoft and /tmp/mat-debug-PID.log. A personae process turns
    it off before anything imports onnxruntime; the bare import shows the test would see it."""
    pytest.importorskip("onnxruntime")
    bare, mine = tmp_path / "bare", tmp_path / "personae"
    bare.mkdir(), mine.mkdir()
    pid = _import_in_a_fresh_process("import onnxruntime", bare)
    Path(f"/tmp/mat-debug-{pid}.log").unlink(missing_ok=True)  # the bare import's litter, not a user's file
    if not (bare / ".cache" / "Microsoft").exists():
        pytest.skip("this onnxruntime starts no telemetry")
    pid = _import_in_a_fresh_process(
        "import personae\nfrom diffusers.pipelines import OnnxRuntimeModel  # what pipeline loading imports", mine)
    assert list(mine.rglob("*")) == [] and not Path(f"/tmp/mat-debug-{pid}.log").exists()


def test_class_images_are_never_written_into_a_users_regularization_folder(tiny_session, tmp_path):
    """Prior preservation with class_data_dir: a user's folder (kohya's reg images) is only read, and the images it
    lacks are generated into the run; a new folder becomes personae's cache of class images, marked as such."""
    from personae.config.train import TrainJob
    from personae.training.setup import class_examples

    reg = tmp_path / "reg"
    reg.mkdir()
    Image.new("RGB", (64, 64), "red").save(reg / "mine.png")
    (reg / "mine.txt").write_text("a red photo\n")
    before = snapshot(reg)
    said = []

    def job(folder: Path, count: int) -> TrainJob:
        return TrainJob(base_model="x", method="lora", data={"path": str(tmp_path)}, output=str(tmp_path / "run"),
                        dreambooth={"prior_preservation": True, "class_data_dir": str(folder), "class_steps": 1,
                                    "num_class_images": count, "class_prompt": "a photo of a thing"})

    pipe, source = tiny_session.pipe, tiny_session.source
    examples = class_examples(pipe, source, job(reg, 3), tmp_path / "run", (64, 64), said.append)
    assert snapshot(reg) == before  # nothing written, replaced or added
    made = sorted(p.name for p in (tmp_path / "run/class_images").iterdir())
    assert made == ["class_00000.png", "class_00001.png"]
    assert [e.caption for e in examples] == ["a red photo", "a photo of a thing", "a photo of a thing"]
    assert [e.image.parent.name for e in examples] == ["reg", "class_images", "class_images"]
    assert any("does not write into a folder it did not make" in getattr(m, "text", "") for m in said)
    # again: the run's images are reused, nothing generated
    again = class_examples(pipe, source, job(reg, 3), tmp_path / "run", (64, 64), said.append)
    assert [e.image for e in again] == [e.image for e in examples] and snapshot(reg) == before
    # a new folder is personae's: generated images are kept there, marked, and a later run adds to them
    cache = tmp_path / "cache"
    class_examples(pipe, source, job(cache, 2), tmp_path / "run2", (64, 64), said.append)
    assert read_marker(cache)["kind"] == "class-images"
    assert sorted(read_marker(cache)["files"]) == ["class_00000.png", "class_00001.png"]
    first = snapshot(cache)
    class_examples(pipe, source, job(cache, 3), tmp_path / "run3", (64, 64), said.append)
    assert {k: v for k, v in snapshot(cache).items() if k in first and k != MARKER} == \
        {k: v for k, v in first.items() if k != MARKER}  # the earlier images kept as they were
    assert "class_00002.png" in read_marker(cache)["files"]
    assert not (tmp_path / "run2/class_images").exists() and not (tmp_path / "run3/class_images").exists()
