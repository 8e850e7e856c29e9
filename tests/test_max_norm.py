"""train.scale_weight_norms: kohya's max-norm regularisation of LoRA-family layers.

The reference is kohya's apply_max_norm_regularization written out on the kohya file's tensors (up @ down x alpha /
rank, a convolution's as its whole kernel; a norm above the limit scales up and down by sqrt(limit / norm) each),
and LyCORIS' for LoHa / LoKr (the ratio folded into the first factor).
"""

from __future__ import annotations

import json

import pytest
import torch
from train_helpers import prepared_subject, write_job

from personae.config.train import TrainJob
from personae.events import Progress
from personae.jobs.train import load_job, run_training
from personae.methods.lora import add_lora, freeze, layer_alphas
from personae.methods.lora_files import peft_to_kohya
from personae.models.resolve import load_pipeline, resolve_model
from personae.training.max_norm import apply_max_norm, trained_layers


def _pipe(tiny_model, variant: str, targets=("to_q", "to_v", "conv1", "proj_in")):
    pipe = load_pipeline(resolve_model(str(tiny_model[0])))
    freeze(pipe)
    add_lora(pipe, 4, 2.0, 0.0, list(targets), text_encoder=True, te_rank=2, variant=variant)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # peft starts B (or a LoHa / LoKr factor) at zero: every layer gets a change of its own
        for name, p in [*pipe.unet.named_parameters(), *pipe.text_encoder.named_parameters()]:
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * (0.05 + 0.3 * torch.rand(1, generator=g)))
    return pipe


def _kohya_norms(pipe) -> dict[str, float]:
    """kohya's per-module norm on the file it would load: (up @ down) x alpha / rank, a 3x3 kernel via conv2d."""
    from peft.utils import get_peft_model_state_dict

    tensors = peft_to_kohya(get_peft_model_state_dict(pipe.unet), get_peft_model_state_dict(pipe.text_encoder),
                            layer_alphas(pipe.unet), layer_alphas(pipe.text_encoder))
    norms = {}
    for key in [k for k in tensors if k.endswith(".lora_down.weight")]:
        name = key.removesuffix(".lora_down.weight")
        down, up, alpha = tensors[key], tensors[f"{name}.lora_up.weight"], float(tensors[f"{name}.alpha"])
        if down.dim() == 4 and down.shape[2:] != (1, 1):
            updown = torch.nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)
        else:
            updown = up.flatten(1) @ down.flatten(1)
        norms[name] = float(updown.norm()) * alpha / down.shape[0]
    return norms


def test_lora_layers_are_scaled_as_kohya_scales_them(tiny_model):
    pipe = _pipe(tiny_model, "lora")
    before = _kohya_norms(pipe)
    limit = sorted(before.values())[len(before) // 2]  # half the layers above it
    factors = {n: p.detach().clone() for n, p in pipe.unet.named_parameters() if p.requires_grad}
    report = apply_max_norm(trained_layers([pipe.unet, pipe.text_encoder]), limit)
    after = _kohya_norms(pipe)
    over = {n for n, v in before.items() if v > limit}
    assert report.scaled == len(over) > 0 and len(before) == len(after)
    for name, norm in before.items():
        want = min(norm, limit)
        assert after[name] == pytest.approx(want, rel=1e-5), name
    assert report.mean == pytest.approx(sum(min(v, limit) for v in before.values()) / len(before), rel=1e-5)
    assert report.largest == pytest.approx(limit, rel=1e-5)
    # kohya's split: down and up each times sqrt(ratio); layers under the limit untouched
    q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    ratio = min(1.0, limit / before["lora_unet_" + q.replace(".", "_")])
    for part in ("lora_A", "lora_B"):
        key = f"{q}.{part}.default.weight"
        torch.testing.assert_close(dict(pipe.unet.named_parameters())[key], factors[key] * ratio ** 0.5)


@pytest.mark.parametrize("variant", ["loha", "lokr"])
def test_loha_and_lokr_layers_fold_the_ratio_into_their_first_factor(tiny_model, variant):
    pipe = _pipe(tiny_model, variant)
    layers = trained_layers([pipe.unet, pipe.text_encoder])
    before = [float(layer.get_delta_weight("default").norm()) for layer in layers]
    limit = sorted(before)[len(before) // 2]
    params = {n: p.detach().clone() for n, p in pipe.unet.named_parameters() if p.requires_grad}
    report = apply_max_norm(layers, limit)
    after = [float(layer.get_delta_weight("default").norm()) for layer in layers]
    assert report.scaled == sum(v > limit for v in before) > 0
    assert after == pytest.approx([min(v, limit) for v in before], rel=1e-5)
    first = "hada_w1_a" if variant == "loha" else "lokr_w1"
    changed = {n.split(".default")[0].rsplit(".", 1)[-1] for n, p in pipe.unet.named_parameters()
               if p.requires_grad and not torch.equal(p, params[n])}
    assert changed == {first}  # LyCORIS' scalar on the first factor, the others as they were


def test_layers_kept_fixed_are_not_scaled(tiny_model):
    pipe = _pipe(tiny_model, "lora")
    for name, p in pipe.text_encoder.named_parameters():
        if "lora_" in name:
            p.requires_grad_(False)
    kept = {n: p.detach().clone() for n, p in pipe.text_encoder.named_parameters() if "lora_" in n}
    apply_max_norm(trained_layers([pipe.unet, pipe.text_encoder]), 1e-4)
    assert all(torch.equal(p, kept[n]) for n, p in pipe.text_encoder.named_parameters() if "lora_" in n)


def test_a_run_keeps_every_exported_layer_under_the_limit(tiny_model, tmp_path):
    prepared = prepared_subject(tmp_path / "data", count=2, trigger="<sks>")
    limit = 0.02
    job = load_job(write_job(tmp_path, base_model=str(tiny_model[0]), method="lora", data=prepared,
                             output=tmp_path / "run", lora={"rank": 4, "alpha": 4, "text_encoder": True},
                             train={"steps": 3, "batch_size": 2, "learning_rate": 3e-2, "seed": 0,
                                    "scale_weight_norms": limit, "validation": {"steps": 2}}))
    events = []
    result = run_training(job, on_event=events.append)
    assert result.checks and all(check.ok for check in result.checks)
    from safetensors.torch import load_file

    tensors = load_file(str(tmp_path / "run/lora.safetensors"))
    norms = []
    for key in [k for k in tensors if k.endswith(".lora_down.weight")]:
        name = key.removesuffix(".lora_down.weight")
        down, up = tensors[key], tensors[f"{name}.lora_up.weight"]
        norms.append(float((up.flatten(1) @ down.flatten(1)).norm()) * float(tensors[f"{name}.alpha"]) / down.shape[0])
    assert max(norms) <= limit * (1 + 1e-4) and max(norms) == pytest.approx(limit, rel=1e-3)  # reached, not passed
    shown = [e.info for e in events if isinstance(e, Progress) and e.stage == "train"]
    assert shown and all("keys scaled" in info and "key norm" in info for info in shown)
    assert int(shown[-1]["keys scaled"]) > 0
    assert json.loads((tmp_path / "run/run.json").read_text())["settings"]["train"]["scale_weight_norms"] == limit


def test_methods_without_a_lora_refuse_it():  # kohya's config is read in tests/test_kohya_job.py
    with pytest.raises(ValueError, match="method dreambooth trains none"):
        TrainJob.model_validate({"base_model": "m", "method": "dreambooth", "data": {"path": "."}, "output": "r",
                                 "train": {"scale_weight_norms": 1}})
