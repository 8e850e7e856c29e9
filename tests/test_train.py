"""Training mechanics: the job file, exports every tool can load, resume, interrupts, NaN, convert (issue #4)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from train_helpers import StepWatcher, prepared_subject, write_job

from personae.config.base import parse_settings
from personae.config.train import TrainJob
from personae.errors import UserError
from personae.jobs.train import load_job, run_training
from personae.models.resolve import load_pipeline, resolve_model
from personae.runs import read_run
from personae.training.verify import render

pytestmark = pytest.mark.slow  # models, training or CLI subprocesses: the full tier only

TOKENS = [{"token": "<sks>", "init_word": "star", "vectors": 2}]
QUICK = {"steps": 4, "batch_size": 2, "learning_rate": 5e-3, "seed": 0, "validation": {"steps": 2}}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepared_subject(tmp_path_factory.mktemp("data"), count=4, trigger="<sks>")


def test_the_issue_example_job_works_as_written(tmp_path, tiny_model, prepared):
    os.symlink(tiny_model[0], tmp_path / "tiny")
    os.symlink(prepared, tmp_path / "prepared")
    (tmp_path / "job.yaml").write_text(
        "version: 1\nbase_model: ./tiny\nmethod: lora\ndata: {path: ./prepared}\n"
        "train: {steps: 200, batch_size: 2, learning_rate: 1.0e-4, seed: 0, resolution: 64}\n"
        "lora: {rank: 4, alpha: 4, text_encoder: false}\noutput: ./runs/demo\n")
    job = load_job(tmp_path / "job.yaml", ["train.steps=6", "train.validation.steps=2"])
    result = run_training(job)
    run = tmp_path / "runs/demo"
    assert result.steps == 6 and len(result.losses) == 6
    for name in ["lora.safetensors", "lora_diffusers/pytorch_lora_weights.safetensors", "config.yaml",
                 "run.json", "loss.png", "losses.csv", "validation/step-000006.png"]:
        assert (run / name).is_file(), name
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["steps"] == 6
    with safe_open(str(run / "lora.safetensors"), "pt") as fh:
        meta, keys = fh.metadata(), list(fh.keys())
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "4" and meta["ss_steps"] == "6"
    assert meta["ss_output_name"] == "demo"  # the run's name, not "lora" for every file
    # the job sets no min-SNR: the lora default (5) trained the run, and its config and header say so
    assert meta["ss_min_snr_gamma"] == "5" and job.train.min_snr_gamma == 5
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["min_snr_gamma"] == 5
    off = load_job(tmp_path / "job.yaml", ["train.steps=2", "train.validation.steps=2", "train.min_snr_gamma=off",
                                           "output=./runs/off"])
    run_training(off)
    with safe_open(str(tmp_path / "runs/off/lora.safetensors"), "pt") as fh:
        assert fh.metadata()["ss_min_snr_gamma"] == "None"  # kohya's word for off
    from personae.models.addons import file_sha256

    assert meta["sshs_model_hash"] == file_sha256(run / "lora.safetensors", skip_safetensors_header=True)
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in [run / "lora.safetensors", *run.glob("lora_diffusers/*")])
    # the diffusers layout: conventional names, alpha folded in, a header older peft releases accept
    with safe_open(str(run / "lora_diffusers/pytorch_lora_weights.safetensors"), "pt") as fh:
        header = json.loads(fh.metadata()["lora_adapter_metadata"])
    assert {k.split(".", 1)[1] for k in header} <= {"r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern"}
    assert header["unet.r"] == header["unet.lora_alpha"] == 4
    assert any(k.startswith("lora_unet_") and k.endswith(".alpha") for k in keys)
    with pytest.raises(UserError, match="--resume"):
        run_training(job)


def test_job_errors_name_the_key():
    with pytest.raises(UserError, match='did you mean "learning_rate"'):
        parse_settings(TrainJob, {"base_model": "m", "method": "lora", "data": {"path": "d"}, "output": "o",
                                  "train": {"learning_rat": 1}})
    with pytest.raises(UserError, match="textual_inversion.tokens"):
        parse_settings(TrainJob, {"base_model": "m", "method": "textual_inversion", "data": {"path": "d"}, "output": "o"})
    with pytest.raises(UserError, match="Input should be"):
        parse_settings(TrainJob, {"base_model": "m", "method": "lorra", "data": {"path": "d"}, "output": "o"})


EXPORT_CASES = {
    "lora": ({"lora": {"rank": 4, "alpha": 2, "text_encoder": True, "text_encoder_rank": 2,
                       "target_modules": ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "proj_in", "conv_in"]}},
             {"a1111", "diffusers"}),
    "textual_inversion": ({"textual_inversion": {"tokens": TOKENS}}, {"a1111", "diffusers"}),
    "pivotal": ({"pivotal": {"tokens": TOKENS}, "lora": {"rank": 4, "alpha": 8}}, {"a1111", "diffusers"}),
    # a text-encoder LoRA beside a new token: the resized embedding table must stay out of the LoRA file
    "pivotal+te": ({"pivotal": {"tokens": TOKENS}, "lora": {"rank": 4, "alpha": 8, "text_encoder": True}},
                   {"a1111", "diffusers"}),
    "dreambooth": ({"dreambooth": {"train_text_encoder": True}}, {"folder", "single_file"}),
}


@pytest.mark.parametrize("method", list(EXPORT_CASES))
def test_every_export_reloads_with_the_same_output(tmp_path, tiny_model, prepared, method):
    sections, families = EXPORT_CASES[method]
    job = load_job(write_job(tmp_path, base_model=str(tiny_model[0]), method=method.split("+")[0], data=prepared,
                             output=tmp_path / "run", train=dict(QUICK, ema=method == "lora"), trigger="<sks>", **sections))
    result = run_training(job)
    generate = {"generate"} if any(f.format == "kohya" for f in result.exports) else set()  # personae's own loader
    assert {c.family for c in result.checks} == families | generate
    for check in result.checks:
        assert check.max_abs_diff <= 1e-4, check
    # independently: the files reload through diffusers' loaders and differ from the base model
    base = render(load_pipeline(resolve_model(str(tiny_model[0]))), "a photo of <sks> star")
    outputs = []
    for family in families:
        files = [f for f in result.exports if {"kohya": "a1111", "original": "single_file"}.get(f.format, f.format) == family
                 or (family == "folder" and f.loader == "folder")]
        if family == "folder":
            pipe = load_pipeline(resolve_model(str(files[0].path)))
        elif family == "single_file":
            pipe = load_pipeline(resolve_model(str(files[0].path)))
        else:
            pipe = load_pipeline(resolve_model(str(tiny_model[0])))
            for f in files:
                if f.loader == "lora":
                    pipe.load_lora_weights(str(f.path))
                else:
                    pipe.load_textual_inversion(str(f.path), token=f.token)
        outputs.append(render(pipe, "a photo of <sks> star"))
    assert np.abs(outputs[0] - outputs[1]).max() <= 1e-4
    assert np.abs(outputs[0] - base).max() > 1e-3


def _subprocess_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def _train_cmd(job, *extra):
    return [sys.executable, "-m", "personae", "train", str(job), "--quiet", *extra]


def test_resume_after_sigkill_is_bit_identical(tmp_path, tiny_model, prepared):
    common = dict(base_model=str(tiny_model[0]), method="pivotal", data=prepared, lora={"rank": 4, "alpha": 4, "dropout": 0.1},
                  pivotal={"tokens": TOKENS}, train={"steps": 40, "batch_size": 2, "learning_rate": 1e-3, "save_every": 5,
                                                     "keep_last": 2, "verify_exports": False, "ema": True,
                                                     "lr_scheduler": "cosine", "warmup_steps": 3,
                                                     "validation": {"steps": 1}})
    whole = write_job(tmp_path, output=tmp_path / "whole", **common)
    broken = write_job(tmp_path, output=tmp_path / "broken", **common)
    assert subprocess.run(_train_cmd(whole), env=_subprocess_env(), capture_output=True).returncode == 0
    proc = subprocess.Popen(_train_cmd(broken), env=_subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (tmp_path / "broken/checkpoints/step-000010/state.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert read_run(tmp_path / "broken").status == "running"  # killed: nothing could say otherwise
    r = subprocess.run(_train_cmd(broken, "--resume"), env=_subprocess_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    a = load_file(str(tmp_path / "whole/checkpoints/step-000040/trainable.safetensors"))
    b = load_file(str(tmp_path / "broken/checkpoints/step-000040/trainable.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "whole/lora.safetensors").read_bytes() != b""
    assert load_file(str(tmp_path / "whole/lora.safetensors")).keys() == load_file(str(tmp_path / "broken/lora.safetensors")).keys()
    assert len(list((tmp_path / "broken/checkpoints").iterdir())) == 2  # keep_last


def test_ctrl_c_saves_a_checkpoint_then_exits(tmp_path, tiny_model, prepared):
    job = write_job(tmp_path, base_model=str(tiny_model[0]), method="lora", data=prepared, output=tmp_path / "run",
                    train={"steps": 100000, "batch_size": 1, "verify_exports": False, "validation": {"steps": 1}})
    proc = subprocess.Popen([sys.executable, "-m", "personae", "train", str(job)], env=_subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    watcher = StepWatcher(proc)
    watcher.wait(1)
    proc.send_signal(signal.SIGINT)
    err = watcher.finish()
    assert proc.returncode == 130, err[-2000:]
    found = list((tmp_path / "run/checkpoints").glob("step-*/state.pt"))
    assert len(found) == 1 and "saving a checkpoint" in err and "Traceback" not in err


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, tiny_model, prepared):
    job = load_job(write_job(tmp_path, base_model=str(tiny_model[0]), method="lora", data=prepared,
                             output=tmp_path / "run", train={"steps": 30, "learning_rate": 1e12, "max_grad_norm": 0,
                                                              "save_every": 1, "verify_exports": False,
                                                              "validation": {"steps": 1}}))
    with pytest.raises(UserError, match="training diverged") as err:
        run_training(job)
    assert "last good checkpoint" in str(err.value) or "No checkpoint" in str(err.value)
    for state in (tmp_path / "run/checkpoints").glob("step-*/trainable.safetensors"):
        assert all(torch.isfinite(t).all() for t in load_file(str(state)).values())


def test_cpu_refuses_fp16_and_adamw8bit_clearly(tmp_path, tiny_model, prepared):
    for train, expected in [({"mixed_precision": "fp16"}, "fp16 needs a GPU"), ({"optimizer": "adamw8bit"}, "CUDA")]:
        job = load_job(write_job(tmp_path, base_model=str(tiny_model[0]), method="lora", data=prepared,
                                 output=tmp_path / f"run-{expected[:4]}", train=dict(QUICK, **train)))
        with pytest.raises(UserError, match=expected):
            run_training(job)
        assert not Path(job.output).exists()  # nothing half-written


def test_raw_folder_is_prepared_on_the_fly_and_epochs_count_batches(tmp_path, tiny_model):
    from personae.data.samples import write_sample_subject

    write_sample_subject(tmp_path / "raw", count=3)
    job = load_job(write_job(tmp_path, base_model=str(tiny_model[0]), method="lora", data=tmp_path / "raw",
                             output=tmp_path / "run", train={"epochs": 2, "batch_size": 2, "resolution": 64,
                                                             "verify_exports": False, "validation": {"steps": 1},
                                                             "cache_latents": "disk"}))
    result = run_training(job)
    assert (tmp_path / "run/prepared/manifest.jsonl").is_file()
    assert result.steps == 4  # 3 images -> 2 batches of 2 per epoch
    assert (tmp_path / "run/cache/latents.safetensors").is_file()


def test_two_processes_of_batch_1_match_one_process_of_batch_2(tmp_path, tiny_model, prepared):
    """accelerate launch on 2 CPU processes (gloo DDP); each optimizer step's global batch is split between them."""
    common = dict(base_model=str(tiny_model[0]), method="lora", data=prepared, lora={"rank": 4, "alpha": 4},
                  train={"steps": 6, "learning_rate": 1e-4, "verify_exports": False, "validation": {"steps": 1}})
    one = write_job(tmp_path, output=tmp_path / "one", **{**common, "train": {**common["train"], "batch_size": 2}})
    two = write_job(tmp_path, output=tmp_path / "two", **{**common, "train": {**common["train"], "batch_size": 1}})
    env = dict(_subprocess_env(), ACCELERATE_USE_CPU="1")
    r = subprocess.run(_train_cmd(one), env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "-m", "personae", "train", str(two), "--quiet"]
    r = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    a = load_file(str(tmp_path / "one/checkpoints/step-000006/trainable.safetensors"))
    b = load_file(str(tmp_path / "two/checkpoints/step-000006/trainable.safetensors"))
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    moved = max(a[k].abs().max().item() for k in a if "lora_B" in k)
    print(f"2 x batch 1 vs 1 x batch 2: max weight difference {diff:.2e} (LoRA B weights moved up to {moved:.2e})")
    assert diff <= 1e-5 and moved > 1e-4


def test_the_export_check_catches_a_file_that_loads_differently(tmp_path, tiny_model):
    """The checker itself: a LoRA file with one module's weights changed must be reported, not passed."""
    from personae.methods.lora import add_lora, export_lora, freeze
    from personae.training.verify import verify_exports

    source = resolve_model(str(tiny_model[0]))
    pipe = load_pipeline(source)
    freeze(pipe)
    torch.manual_seed(0)
    add_lora(pipe, 4, 4.0, 0.0, ["to_q", "to_v"], False, None)
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    files = export_lora(pipe, tmp_path, name="lora", rank=4, alpha=4.0, te_alpha=None, steps=1, base_model="tiny",
                        trigger="", extra_meta={})
    assert all(c.ok for c in verify_exports(pipe, files, source, "a photo"))
    tensors = load_file(str(files[0].path))
    key = next(k for k in tensors if k.endswith("attn1_to_q.lora_up.weight"))
    tensors[key] = tensors[key] * 2
    save_file(tensors, str(files[0].path))
    checks = {c.family: c for c in verify_exports(pipe, files, source, "a photo")}
    assert not checks["a1111"].ok and checks["diffusers"].ok
