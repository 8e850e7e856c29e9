"""Training with another VAE (the job's `vae`, kohya's --vae): it encodes the training latents and decodes the
validation images, the exports' header names it, and the exports are checked against the model with it."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from train_helpers import prepared_subject, write_job

from personae.data.dataset import examples_from_prepared, load_pixels
from personae.jobs.kohya_job import kohya_settings
from personae.jobs.train import load_job, run_training
from personae.models.tiny import write_tiny_model

pytestmark = pytest.mark.slow


def test_the_jobs_vae_makes_the_latents_and_is_named_in_the_exports(tiny_model, tmp_path):
    from diffusers import AutoencoderKL

    other = write_tiny_model(tmp_path / "other", seed=1) / "vae"  # the same shapes, other weights
    prepared = prepared_subject(tmp_path / "data", count=2, trigger="sks")
    events = []
    job = load_job(write_job(tmp_path, base_model=str(tiny_model[0]), method="lora", data=prepared,
                             output=tmp_path / "run", vae=str(other), lora={"rank": 4, "alpha": 4},
                             train={"steps": 2, "batch_size": 2, "seed": 0, "cache_latents": "disk",
                                    "validation": {"steps": 2}}))
    result = run_training(job, on_event=events.append)
    assert result.checks and all(check.ok for check in result.checks), result.checks
    assert any("the VAE vae encodes the training images" in getattr(e, "text", "") for e in events)
    cached = load_file(str(tmp_path / "run/cache/latents.safetensors"))
    vae = AutoencoderKL.from_pretrained(str(other))
    base = AutoencoderKL.from_pretrained(str(tiny_model[0] / "vae"))
    for i, example in enumerate(examples_from_prepared(prepared)):
        [key] = [k for k in cached if k.startswith(example.image.name + "|") and k.endswith(f"|0|{i}|vae=vae:")]
        pixels = torch.from_numpy(load_pixels(example.image, False))[None]
        with torch.no_grad():
            want = vae.encode(pixels).latent_dist.parameters[0]
            theirs = base.encode(pixels).latent_dist.parameters[0]
        torch.testing.assert_close(cached[key], want, rtol=0, atol=1e-6)
        assert (cached[key] - theirs).abs().max() > 1e-3  # not the base model's VAE
    with safe_open(str(tmp_path / "run/lora.safetensors"), "pt") as fh:
        assert fh.metadata()["ss_vae_name"] == "vae"


def test_a_missing_or_foreign_vae_is_one_paragraph(tiny_model, tmp_path, capsys):
    from diffusers import AutoencoderKL

    from personae.cli.main import main

    prepared = prepared_subject(tmp_path / "data", count=1, trigger="sks")
    job = write_job(tmp_path, base_model=str(tiny_model[0]), method="lora", data=prepared, output=tmp_path / "run",
                    vae=str(tmp_path / "nowhere"), train={"steps": 1})
    assert main(["train", str(job), "--quiet"]) == 2 and not (tmp_path / "run").exists()
    AutoencoderKL(latent_channels=16, block_out_channels=(8,), norm_num_groups=4).save_pretrained(tmp_path / "vae16")
    job = write_job(tmp_path, base_model=str(tiny_model[0]), method="lora", data=prepared, output=tmp_path / "run2",
                    vae=str(tmp_path / "vae16"), train={"steps": 1})
    capsys.readouterr()
    assert main(["train", str(job), "--quiet"]) == 2
    err = " ".join(capsys.readouterr().err.split())  # wrapped to the terminal
    assert "makes latents of 16 channels" in err and "Traceback" not in err
    job, _ = kohya_settings({"pretrained_model_name_or_path": "./m", "train_data_dir": "./d",
                             "caption_extension": ".txt", "vae": "./vae.safetensors"}, tmp_path, "config.toml")
    assert job["vae"] == "./vae.safetensors"
