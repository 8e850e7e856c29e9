"""The zero-terminal-SNR world model (issue #19's base for motion): `personae world zero-snr` fine-tunes the world
UNet to v-prediction on its schedule rescaled to zero terminal SNR (Lin et al. 2023), and the result ships."""

import json

import pytest
import torch
from safetensors.torch import load_file

from personae.world.zero_snr_settings import ZERO_SNR_SCHEDULE

SHORT = ["--steps", "2", "--set", "dataset_size=64", "--set", "batch_size=8", "--set", "eval.samples=16",
         "--set", "eval.steps=2", "--quiet"]


@pytest.fixture(scope="module")
def short_runs(tmp_path_factory):
    """Two short fine-tunes with the same settings, as the command runs them."""
    from personae.cli.main import main

    root = tmp_path_factory.mktemp("zero-snr")
    for name in ("a", "b"):
        assert main(["world", "zero-snr", str(root / name), *SHORT]) == 0
    return root / "a", root / "b"


def test_the_fine_tune_writes_a_v_prediction_model_on_a_zero_terminal_snr_schedule(short_runs):
    """The folder's scheduler says v-prediction, rescaled betas and trailing steps; diffusers' DDIM built from it
    starts sampling at the timestep whose signal is exactly zero; only the UNet learnt (the VAE and text encoder
    are the base's, byte for byte)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from personae.world.model import WORLD_DIR

    out, _ = short_runs
    config = json.loads((out / "scheduler/scheduler_config.json").read_text())
    assert {k: config[k] for k in ZERO_SNR_SCHEDULE} == ZERO_SNR_SCHEDULE
    pipe = StableDiffusionPipeline.from_pretrained(str(out), safety_checker=None, requires_safety_checker=False)
    ddim = DDIMScheduler.from_config(pipe.scheduler.config)
    ddim.set_timesteps(25)
    assert int(ddim.timesteps[0]) == 999 and float(ddim.alphas_cumprod[999]) == 0.0
    base, tuned = (load_file(d / "unet/diffusion_pytorch_model.safetensors") for d in (WORLD_DIR, out))
    assert base.keys() == tuned.keys() and any(not torch.equal(base[k], tuned[k]) for k in base)
    for part, name in (("vae", "diffusion_pytorch_model.safetensors"), ("text_encoder", "model.safetensors")):
        a, b = load_file(WORLD_DIR / part / name), load_file(out / part / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    summary = json.loads((out / "training/summary.json").read_text())
    assert summary["steps"] == 2 and set(summary["scores"]) == {"background", "colour", "shape", "size", "all"}
    assert (out / "training/samples-000002.png").is_file() and (out / "training/settings.yaml").is_file()


def test_the_fine_tune_is_reproducible(short_runs):
    a, b = (load_file(d / "unet/diffusion_pytorch_model.safetensors") for d in short_runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (short_runs[0] / "training/losses.csv").read_text() == (short_runs[1] / "training/losses.csv").read_text()


def test_a_motion_adapter_learns_on_it_and_is_measured_on_it(short_runs, tmp_path, capsys):
    """`personae world motion --set base=OUT` trains on the fine-tuned model (animate samples it on its own schedule:
    v-prediction, zero terminal SNR), and `motion-eval` measures the adapter on the model its training record names
    unless --model says otherwise; a recorded model that is gone is a clear error, not a traceback."""
    import shutil

    import yaml

    from personae.cli.main import main
    from personae.world.model import WORLD_DIR

    base = short_runs[0]
    adapter = tmp_path / "motion"
    assert main(["world", "motion", str(adapter), "--steps", "1", "--set", f"base={base}", "--set", "dataset_size=4",
                 "--set", "batch_size=2", "--set", "eval.clips=1", "--set", "eval.long_clips=0", "--set",
                 "eval.steps=2", "--quiet"]) == 0
    assert yaml.safe_load((adapter / "training/settings.yaml").read_text())["base"] == str(base)
    capsys.readouterr()
    for name, extra, model in (("own", [], base), ("world", ["--model", "world"], WORLD_DIR)):
        assert main(["world", "motion-eval", "--out", str(tmp_path / name), "--motion-adapter", str(adapter),
                     "--clips", "1", "--long-clips", "0", *extra]) == 0
        assert json.loads((tmp_path / name / "results.json").read_text())["model"] == str(model)
    moved = tmp_path / "moved"
    shutil.copytree(base, moved)
    shutil.rmtree(base)  # the model the record names is gone
    try:
        capsys.readouterr()
        assert main(["world", "motion-eval", "--out", str(tmp_path / "gone"), "--motion-adapter", str(adapter),
                     "--clips", "1", "--long-clips", "0"]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and str(base) in err.replace("\n", " ") and "--model" in err
        assert not (tmp_path / "gone").exists()
    finally:
        shutil.copytree(moved, base)


def test_an_adapter_without_our_training_record_is_measured_on_the_world_model(tmp_path):
    """No record, or another tool's file in its place (a list, bytes that are not text): the shipped world model."""
    from personae.world.model import WORLD_DIR
    from personae.world.motion_eval import adapter_base

    (tmp_path / "listed/training").mkdir(parents=True)
    (tmp_path / "listed/training/settings.yaml").write_text("- not\n- ours\n")
    (tmp_path / "bare").mkdir()
    (tmp_path / "binary/training").mkdir(parents=True)
    (tmp_path / "binary/training/settings.yaml").write_bytes(b"\xff\xfe: [")
    assert [adapter_base(str(tmp_path / n)) for n in ("listed", "bare", "binary")] == [str(WORLD_DIR)] * 3


def test_the_shipped_zero_snr_model_was_made_by_the_default_fine_tune(tmp_path):
    """`personae model world-zero-snr` writes the fine-tune that ships (the world motion adapter's base): the
    defaults' run, on the zero-terminal-SNR schedule, only its UNet other than the world model's, drawing the world as
    well as the world model does (docs/world.md)."""
    import yaml

    from personae.cli.main import main
    from personae.world.model import WORLD_DIR, WORLD_ZERO_SNR_DIR, world_model_dir
    from personae.world.zero_snr_settings import WorldZeroSnr

    assert world_model_dir("world-zero-snr") == WORLD_ZERO_SNR_DIR
    recorded = yaml.safe_load((WORLD_ZERO_SNR_DIR / "training/settings.yaml").read_text())
    assert recorded == WorldZeroSnr().model_dump(mode="json")
    summary = json.loads((WORLD_ZERO_SNR_DIR / "training/summary.json").read_text())
    assert summary["steps"] == WorldZeroSnr().steps and summary["seconds"]["total"] < 30 * 60
    assert round(summary["scores"]["all"] * 64) == 61  # 95.3 % of the fixed prompts right in all four attributes
    assert main(["model", "world-zero-snr", str(tmp_path / "z")]) == 0
    out = tmp_path / "z"
    config = json.loads((out / "scheduler/scheduler_config.json").read_text())
    assert {k: config[k] for k in ZERO_SNR_SCHEDULE} == ZERO_SNR_SCHEDULE
    for part, name in (("vae", "diffusion_pytorch_model.safetensors"), ("text_encoder", "model.safetensors")):
        assert (out / part / name).read_bytes() == (WORLD_DIR / part / name).read_bytes(), part
    unet = "unet/diffusion_pytorch_model.safetensors"
    assert (out / unet).read_bytes() == (WORLD_ZERO_SNR_DIR / unet).read_bytes() != (WORLD_DIR / unet).read_bytes()
    assert main(["model", "world-zero-snr", str(tmp_path / "z")]) == 2  # a folder that is there is not replaced
