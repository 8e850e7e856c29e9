"""Exports ready to share and a trainer that says what it does (issue #17, items 8 and 9).

- `name` names the exported files and what they call themselves; `output_dtype: fp16` writes fp16 tensors that
  `generate --lora` loads, checked against the trained model rounded the same way.
- No header of an export holds a path of the trainer's machine; `ss_tag_frequency` and the dataset counts are the
  real ones of the training captions.
- `personae train` prints the dataset, what loads, each checkpoint and validation grid, TensorBoard's state and a
  final list of every output; an export that cannot be written is named with why (CLI and run.json).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from train_helpers import write_job

from personae.cli.main import main
from personae.config.base import parse_settings
from personae.config.train import TrainJob
from personae.data.dataset import Example
from personae.data.stats import dataset_stats
from personae.errors import UserError
from personae.runs import read_run

CAPTIONS = ["sks, red hat, smiling", "sks, red hat", "a photo of sks, blue coat", "blue coat, smiling"]
TAGS = {"sks": 2, "red hat": 2, "smiling": 2, "blue coat": 2, "a photo of sks": 1}


def test_dataset_stats_count_tags_as_kohya_does():
    examples = [Example(Path(f"{i}.png"), c, (64, 64) if i < 3 else (64, 48), repeats=2 if i else 1)
                for i, c in enumerate(CAPTIONS)]
    stats = dataset_stats(examples, "me", ["sks", ""], class_images=5)
    assert stats.tag_frequency == {"me": TAGS}  # once per image, repeats do not count
    assert stats.with_trigger == 3 and stats.per_epoch == 7 and stats.buckets == Counter({(64, 64): 3, (64, 48): 1})
    line = stats.summary()
    for part in ["4 images", "7 per epoch", "64x64: 3", "64x48: 1", "captions with sks: 3, without: 1",
                 "class images: 5"]:
        assert part in line, (part, line)
    fields = stats.kohya_fields()
    assert json.loads(fields["ss_tag_frequency"]) == {"me": TAGS} and fields["ss_num_train_images"] == "7"
    assert fields["ss_num_reg_images"] == "5"
    assert "without" not in dataset_stats(examples, "me", []).summary()  # no trigger: said so instead
    assert dataset_stats([Example(Path("a.png"), "asks, <sks>", (8, 8))], "x", ["sks"]).with_trigger == 0


def test_name_must_be_a_plain_file_name():
    base = {"base_model": "m", "method": "lora", "data": {"path": "d"}, "output": "o"}
    assert parse_settings(TrainJob, {**base, "name": "sks_dog-v1.safetensors"}, "job").name == "sks_dog-v1"
    for bad in ["../x", "a/b", "my dog", "checkpoints"]:
        with pytest.raises(UserError, match="name"):
            parse_settings(TrainJob, {**base, "name": bad}, "job")
    with pytest.raises(UserError, match="output_dtype"):
        parse_settings(TrainJob, {**base, "output_dtype": "fp8"}, "job")


def test_tensorboard_missing_is_said_once(tmp_path, monkeypatch):
    from personae.training.loop import _tensorboard

    said = []
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # what an install without it gives: ImportError
    assert _tensorboard(tmp_path, said.append) is None
    assert [m.text for m in said] == ["TensorBoard is not installed: no logs/ (pip install tensorboard)"]
    assert not (tmp_path / "logs").exists()


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    """A prepared set of 4 pictures with the known CAPTIONS."""
    from personae.config.prepare import PrepareSettings
    from personae.data.prepare import prepare_dataset
    from personae.data.samples import write_sample_subject

    root = tmp_path_factory.mktemp("captioned")
    for path, caption in zip(write_sample_subject(root / "photos", count=4), CAPTIONS):
        path.with_suffix(".txt").write_text(caption + "\n")
    prepare_dataset(root / "photos", root / "me", PrepareSettings(resolution=64, template="{caption}"))
    return root / "me"


def _headers(path: Path) -> tuple[dict, set]:
    with safe_open(str(path), "pt") as fh:
        return fh.metadata() or {}, {fh.get_tensor(k).dtype for k in fh.keys()}


def test_named_exports_of_a_killed_run_are_personaes_on_resume_or_overwrite(tmp_path):
    """A run killed (kill -9) while writing `name: sks_dog`'s exports leaves a marker that never recorded them. The
    run folder's layout names them, so --overwrite removes them and a resume writes them again as personae's; they
    used to count as the user's files (never cleared, and the next export wrote over "the user's" file)."""
    import subprocess
    import textwrap

    from personae.jobs.train import TRAINING_RUN, run_kind
    from personae.outputs import open_output, read_marker, survey

    run = tmp_path / "run"
    job = parse_settings(TrainJob, {"base_model": "m", "method": "lora", "data": {"path": "d"}, "output": str(run),
                                    "name": "sks_dog"}, "job")
    script = textwrap.dedent("""
        import os, sys
        from pathlib import Path
        from personae.config.train import TrainJob
        from personae.jobs.train import run_kind
        from personae.outputs import open_output
        job = TrainJob.model_validate_json(sys.argv[1])
        run = Path(job.output)
        with open_output(run, run_kind(job)):
            (run / "config.yaml").write_text("x")
            (run / "sks_dog.safetensors").write_bytes(b"x")
            (run / "sks_dog_diffusers").mkdir()
            (run / "sks_dog_diffusers" / "pytorch_lora_weights.safetensors").write_bytes(b"x")
            os._exit(9)  # killed: the marker still says "writing" and lists none of these
    """)
    assert subprocess.run([sys.executable, "-c", script, job.model_dump_json()], timeout=120).returncode == 9
    assert read_marker(run)["writing"] is True
    (run / "mine.txt").write_text("the user's")
    named = ["sks_dog.safetensors", "sks_dog_diffusers/pytorch_lora_weights.safetensors"]
    assert set(named) <= set(survey(run, TRAINING_RUN).foreign)  # as the fixed layout alone sees them
    now = survey(run, run_kind(job))
    assert now.foreign == ["mine.txt"] and set(named) <= set(now.ours)
    with open_output(run, run_kind(job), clear=True):  # --overwrite
        pass
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".")) == ["mine.txt"]
    assert (run / "mine.txt").read_text() == "the user's"


def test_named_fp16_lora_run_prints_every_stage_and_shares_cleanly(tmp_path, tiny_model, captioned, capsys):
    run = tmp_path / "runs" / "demo"
    job = write_job(tmp_path, base_model=str(tiny_model[0]), method="lora", data=captioned, output=run,
                    name="sks_me", output_dtype="fp16", trigger="sks", lora={"rank": 2, "alpha": 3},
                    train={"steps": 2, "save_every": 1, "batch_size": 1, "learning_rate": 1e-3,
                           "validation": {"steps": 1}})
    assert main(["train", str(job)]) == 0
    out, err = capsys.readouterr()
    # 1. what it says: the dataset, what loads, TensorBoard, each checkpoint and grid, then every output
    assert f"loading the base model {Path(tiny_model[0]).name} (diffusers folder" in err
    assert "dataset me: 4 images (repeats: 4 x 1) = 4 per epoch; buckets 64x64: 4" in err
    assert "captions with sks: 3, without: 1" in err
    assert "TensorBoard" in err
    assert f"step 1: checkpoint {run / 'checkpoints' / 'step-000001'}" in err
    assert f"step 1: validation grid {run / 'validation' / 'step-000001.png'}" in err
    for line in ["sks_me.safetensors  (kohya, loads as lora, fp16)",
                 "sks_me_diffusers/pytorch_lora_weights.safetensors  (diffusers, loads as lora, fp16)",
                 "reload check [a1111]", "tolerance 1e-03: ok", "checkpoints/  (2 kept: steps 1, 2",
                 "validation/  (2 grids", "loss.png  (loss curve)", "losses.csv  (loss per step)"]:
        assert line in out, (line, out)
    # 2. the files carry the name, fp16 tensors, and no path of this machine
    assert not (run / "lora.safetensors").exists()
    meta, dtypes = _headers(run / "sks_me.safetensors")
    assert dtypes == {torch.float16} and _headers(run / "sks_me_diffusers/pytorch_lora_weights.safetensors")[1] == {
        torch.float16}
    assert meta["ss_output_name"] == meta["modelspec.title"] == "sks_me"
    assert meta["ss_sd_model_name"] == Path(tiny_model[0]).name and meta["ss_save_precision"] == "fp16"
    assert (meta["modelspec.trigger_phrase"], meta["modelspec.prediction_type"]) == ("sks", "epsilon")
    # A1111's card beside the file: a click adds <lora:sks_me:...> and the trigger; listed with SD-1 models
    card = json.loads((run / "sks_me.json").read_text())
    assert (card["activation text"], card["sd version"], card["preferred weight"]) == ("sks", "SD1", 0)
    assert card["description"] == f"trained with personae on {Path(tiny_model[0]).name}"
    diffusers_meta, _ = _headers(run / "sks_me_diffusers/pytorch_lora_weights.safetensors")
    for where in [str(tmp_path), str(Path.home()), str(Path(tiny_model[0]).parent)]:
        for header in (meta, diffusers_meta):
            assert not [k for k, v in header.items() if where in v], where
    # 3. the real dataset counts
    assert json.loads(meta["ss_tag_frequency"]) == {"me": TAGS}
    assert meta["ss_num_train_images"] == "4" and meta["ss_max_train_steps"] == "2"
    assert json.loads(meta["ss_dataset_dirs"]) == {"me": {"n_repeats": 1, "img_count": 4}}
    # 4. the record lists them; compare and the bench read these, not guessed names
    record = read_run(run)
    assert [e.path for e in record.exports] == ["sks_me.safetensors",
                                                "sks_me_diffusers/pytorch_lora_weights.safetensors"]
    assert record.checks and all(c.tolerance == 1e-3 and c.max_abs_diff <= 1e-3 for c in record.checks)
    assert record.skipped_exports == []
    # 5. the fp16 file loads where users take it
    assert main(["generate", "--model", str(tiny_model[0]), "--lora", str(run / "sks_me.safetensors"), "--prompt",
                 "sks", "--steps", "2", "--width", "64", "--height", "64", "--out", str(tmp_path / "gen")]) == 0
    assert list((tmp_path / "gen").glob("*.png"))


def test_an_export_that_cannot_be_written_is_named_with_why(tmp_path, captioned, capsys):
    """The shapes-world model has its own tokenizer: DreamBooth writes its folder and says why no single file."""
    assert main(["model", "world", str(tmp_path / "world")]) == 0
    run = tmp_path / "db"
    job = write_job(tmp_path, base_model=str(tmp_path / "world"), method="dreambooth", data=captioned, output=run,
                    train={"steps": 1, "batch_size": 1, "learning_rate": 1e-5, "resolution": 32,
                           "verify_exports": False, "validation": {"steps": 1}})
    capsys.readouterr()
    assert main(["train", str(job)]) == 0
    out, err = capsys.readouterr()
    assert "  model  (diffusers, loads as folder, fp32)" in out
    assert "not exported: model.safetensors (single file, original layout): this model has its own tokenizer" in out
    assert "not exported: model.safetensors" in err and "warning: not exported" not in err
    skipped = read_run(run).skipped_exports
    assert len(skipped) == 1 and "own tokenizer" in skipped[0] and not (run / "model.safetensors").exists()
    # the exported folder's configs do not say where the base model was loaded from
    configs = [run / "model/model_index.json", *(run / "model").glob("*/config.json")]
    assert len(configs) >= 4 and not [p for p in configs if str(tmp_path) in p.read_text()]


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_the_half_precision_check_still_catches_a_file_that_loads_differently(tmp_path, tiny_model, dtype):
    """Half-precision files are compared with the trained weights rounded the same way, within that precision's
    tolerance (alpha / rank = 0.75 folded into the diffusers file before rounding): a wrong module still fails."""
    from safetensors.torch import load_file, save_file

    from personae.methods.lora import add_lora, export_lora, freeze
    from personae.models.resolve import load_pipeline, resolve_model
    from personae.training.verify import TOLERANCES, verify_exports

    source = resolve_model(str(tiny_model[0]))
    pipe = load_pipeline(source)
    freeze(pipe)
    torch.manual_seed(0)
    add_lora(pipe, 4, 3.0, 0.0, ["to_q", "to_v"], False, None)
    half = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.3).copy_(p.to(half).float())  # the model as its half-precision file holds it
    files = export_lora(pipe, tmp_path, name="x", rank=4, alpha=3.0, te_alpha=None, steps=1, base_model="tiny",
                        trigger="", extra_meta={}, dtype=half)
    checks = verify_exports(pipe, files, source, "a photo", TOLERANCES[dtype])
    assert all(c.ok for c in checks), checks
    tensors = load_file(str(files[0].path))
    key = next(k for k in tensors if k.endswith("attn1_to_q.lora_up.weight"))
    tensors[key] = tensors[key] * 1.5
    save_file(tensors, str(files[0].path))
    checks = {c.family: c for c in verify_exports(pipe, files, source, "a photo", TOLERANCES[dtype])}
    assert not checks["a1111"].ok and checks["diffusers"].ok, checks


def test_fp16_pivotal_exports_are_half_and_reload_within_the_fp16_tolerance(tmp_path, tiny_model):
    """Pivotal: the new token's rows and the LoRA rounded to fp16 for the check, the model put back afterwards."""
    from train_helpers import prepared_subject

    from personae.jobs.train import load_job, run_training

    data = prepared_subject(tmp_path / "data", count=2, trigger="<sks>")
    job = load_job(write_job(tmp_path, base_model=str(tiny_model[0]), method="pivotal", data=data,
                             output=tmp_path / "run", output_dtype="fp16",
                             pivotal={"tokens": [{"token": "<sks>", "init_word": "star"}]},
                             lora={"rank": 2, "alpha": 2},
                             train={"steps": 2, "batch_size": 1, "learning_rate": 1e-3, "validation": {"steps": 1}}))
    result = run_training(job)
    assert {c.family for c in result.checks} == {"a1111", "diffusers", "generate"}  # generate: personae generate --lora
    assert all(c.ok and c.tolerance == 1e-3 for c in result.checks), result.checks
    for f in result.exports:
        assert _headers(f.path)[1] == {torch.float16}, f.path
    emb, _ = _headers(next(f.path for f in result.exports if f.format == "a1111"))
    assert emb["sd_checkpoint_name"] == Path(tiny_model[0]).name
