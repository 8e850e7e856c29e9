"""`personae extract`: a LoRA from a fine-tuned model's difference from its base, as kohya's
extract_lora_from_models computes it. A difference of low rank comes back exactly (read by personae's loader and by
diffusers' load_lora_weights); the layers are kohya's; what cannot be extracted is one paragraph. The world test
(a DreamBooth star extracted and drawn) is in tests/test_train_learning.py, beside the DreamBooth run it reuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from train_helpers import model_outputs

from personae.config.extract import ExtractSettings
from personae.errors import UserError
from personae.jobs.extract import run_extract
from personae.methods.lora_resize import low_rank
from personae.models.addons import load_loras
from personae.models.resolve import load_pipeline, resolve_model

pytestmark = pytest.mark.slow

Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
CONV = "down_blocks.0.resnets.0.conv1"
TE_Q = "encoder.layers.0.self_attn.q_proj"


def _pipe(path):
    pipe = load_pipeline(resolve_model(str(path)))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _tuned(tiny_model, out: Path, text: bool = True) -> Path:
    """The tiny model with rank-2 changes on a query projection, a resnet's 3x3 convolution and (with `text`) a text
    encoder query projection: what a fine-tune could have made."""
    pipe = _pipe(tiny_model[0])
    g = torch.Generator().manual_seed(3)
    layers = [pipe.unet.get_submodule(Q), pipe.unet.get_submodule(CONV)]
    if text:
        layers.append(next(m for n, m in pipe.text_encoder.named_modules() if n.endswith(TE_Q)))
    with torch.no_grad():
        for layer in layers:
            w = layer.weight
            change = torch.randn(w.shape[0], 2, generator=g) @ torch.randn(2, w[0].numel(), generator=g)
            w += 0.2 * change.reshape(w.shape)
    pipe.save_pretrained(out)
    return out



def test_a_low_rank_difference_comes_back_exactly_in_kohyas_layout(tiny_model, tmp_path):
    tuned = _tuned(tiny_model, tmp_path / "tuned")
    events = []
    out = run_extract(str(tuned), tmp_path / "x.safetensors", ExtractSettings(base=str(tiny_model[0]), rank=4,
                                                                             conv_rank=4, clamp_quantile=1.0),
                      on_event=events.append)
    want = model_outputs(_pipe(tuned))
    for loader in ("personae", "diffusers"):
        pipe = _pipe(tiny_model[0])
        if loader == "personae":
            load_loras(pipe, [(str(out), 1.0)])
        else:
            pipe.load_lora_weights(str(out))
        got = model_outputs(pipe)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=0, atol=2e-4)
    with safe_open(str(out), "pt") as fh:
        keys, meta = list(fh.keys()), fh.metadata()
        alpha = fh.get_tensor(f"lora_unet_{Q.replace('.', '_')}.alpha")
    names = {k.rsplit(".", 2)[0] for k in keys if k.endswith(".lora_down.weight")}
    assert f"lora_unet_{Q.replace('.', '_')}" in names and f"lora_unet_{CONV.replace('.', '_')}" in names
    assert f"lora_te_text_model_{TE_Q.replace('.', '_')}" in names
    assert not any("conv_in" in n or "norm" in n for n in names)  # kohya's layers only
    assert float(alpha) == 4.0 and meta["ss_network_dim"] == "4" and json.loads(meta["ss_network_args"]) == {
        "conv_dim": "4", "conv_alpha": "4.0"}
    said = " ".join(getattr(e, "text", "") for e in events)
    assert "keeps 100.0% of the difference" in said and "0.0% of the base-to-tuned distance" in said

    # without conv_rank the resnets are left out (kohya's LoRA without conv_dim), so the conv change is not
    plain = run_extract(str(tuned), tmp_path / "y.safetensors", ExtractSettings(base=str(tiny_model[0]), rank=4))
    with safe_open(str(plain), "pt") as fh:
        names = {k.rsplit(".", 2)[0] for k in fh.keys()}
    assert f"lora_unet_{CONV.replace('.', '_')}" not in names and not any("resnets" in n for n in names)


def test_the_factors_are_kohyas_rank_cut_and_quantile_clamp():
    g = torch.Generator().manual_seed(0)
    diff = torch.randn(40, 30, generator=g)
    diff[3, 7] = 50.0  # an outlier the clamp cuts
    part = low_rank(diff, 8, 0.99)
    u, s, vh = torch.linalg.svd(diff)  # kohya's: the full SVD, up = U S, down = Vh, at the rank
    up, down = u[:, :8] @ torch.diag(s[:8]), vh[:8]
    limit = torch.quantile(torch.cat([up.flatten(), down.flatten()]), 0.99)
    assert float(part.up.abs().max()) <= float(limit) + 1e-5 and float(part.down.abs().max()) <= float(limit) + 1e-5
    exact = low_rank(diff, 8, 1.0)
    torch.testing.assert_close(exact.up @ exact.down, up @ down, rtol=0, atol=1e-4)  # signs aside, the same pair
    assert exact.kept == pytest.approx(float((s[:8] ** 2).sum()), rel=1e-5)
    conv = low_rank(torch.randn(6, 4, 3, 3, generator=g), 2, 1.0)
    assert conv.up.shape == (6, 2, 1, 1) and conv.down.shape == (2, 4, 3, 3)


def test_same_text_encoders_leave_it_out_and_bad_input_is_one_paragraph(tiny_model, tmp_path, capsys):
    from personae.cli.main import main

    tuned = _tuned(tiny_model, tmp_path / "tuned", text=False)
    events = []
    out = run_extract(str(tuned), tmp_path / "u.safetensors", ExtractSettings(base=str(tiny_model[0]), rank=2),
                      on_event=events.append)
    with safe_open(str(out), "pt") as fh:
        assert not any(k.startswith("lora_te") for k in fh.keys())
    assert any("the text encoders are the same" in getattr(e, "text", "") for e in events)
    (tmp_path / "mine.safetensors").write_bytes(b"the user's")
    other = tmp_path / "other"
    from personae.models.tiny import write_tiny_model

    write_tiny_model(other, seed=1)
    for argv, said in (
            ([str(tiny_model[0]), "--base", str(tiny_model[0]), "--out", str(tmp_path / "z.safetensors")],
             "no difference to extract"),
            ([str(tuned), "--base", str(tiny_model[0]), "--out", str(tmp_path / "z.pt")], "does not end in"),
            ([str(tuned), "--base", str(tiny_model[0]), "--out", str(tmp_path / "mine.safetensors")], "mine"),
            ([str(tuned), "--base", str(tmp_path / "nowhere"), "--out", str(tmp_path / "z.safetensors")], "nowhere"),
            ([str(tuned), "--out", str(tmp_path / "z.safetensors")], "base")):
        capsys.readouterr()
        assert main(["extract", *argv, "--quiet"]) == 2, argv
        err = " ".join(capsys.readouterr().err.split())
        assert said in err and "Traceback" not in err, err
    assert (tmp_path / "mine.safetensors").read_bytes() == b"the user's" and not (tmp_path / "z.safetensors").exists()
    with pytest.raises(UserError, match="not the same architecture|different tokenizers"):
        run_extract(str(tuned), tmp_path / "w.safetensors", ExtractSettings(base=str(_other_shape(tmp_path))))


def _other_shape(tmp_path: Path) -> Path:
    """A model of another architecture: the tiny model with its text encoder's width changed."""
    from diffusers import UNet2DConditionModel

    from personae.models.tiny import write_tiny_model

    folder = write_tiny_model(tmp_path / "odd", seed=2)
    config = json.loads((folder / "unet" / "config.json").read_text())
    config["block_out_channels"] = [c * 2 for c in config["block_out_channels"]]
    UNet2DConditionModel.from_config(config).save_pretrained(folder / "unet")
    return folder
