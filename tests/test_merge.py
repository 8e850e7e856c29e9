"""`personae merge` (jobs/merge.py): A1111's Checkpoint Merger formulas on every weight, its inpainting rule, the
result as an original-layout file (read back by diffusers' single-file loader) or a diffusers folder, a VAE and
LoRAs baked in so that the model alone draws what the model with the LoRA drew."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from personae.config.generate import GenerateSettings
from personae.config.merge import MergeSettings
from personae.errors import UserError
from personae.inference.txt2img import txt2img
from personae.jobs.merge import COMPONENTS, run_merge
from personae.models.resolve import load_pipeline, resolve_model
from personae.models.tiny import write_tiny_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def three(tmp_path_factory, tiny_model):
    """A (the tiny model), B and C: the same architecture, other seeds."""
    root = tmp_path_factory.mktemp("merge")
    return [tiny_model[0], write_tiny_model(root / "b", seed=1), write_tiny_model(root / "c", seed=2)]


def _weights(spec) -> dict[str, torch.Tensor]:
    pipe = load_pipeline(resolve_model(str(spec)))
    return {f"{part}.{k}": v for part in COMPONENTS for k, v in getattr(pipe, part).state_dict().items()}


@pytest.mark.parametrize("method, m", [("weighted-sum", 0.3), ("add-difference", 0.7)])
def test_every_weight_is_a1111s_formula_and_the_file_reads_back(three, tmp_path, method, m):
    models = [str(p) for p in three[:2 if method == "weighted-sum" else 3]]
    out = run_merge(models, tmp_path / "merged.safetensors", MergeSettings(method=method, multiplier=m))
    merged = _weights(out)  # read back through diffusers' single-file loader, as for any checkpoint
    a, b, c = (_weights(p) for p in three)
    floats = [k for k in a if a[k].is_floating_point()]
    assert len(floats) > 100 and set(merged) == set(a)
    for key in floats:
        want = (1 - m) * a[key] + m * b[key] if method == "weighted-sum" else a[key] + m * (b[key] - c[key])
        assert torch.equal(merged[key], want), key
    assert any(not torch.equal(a[k], merged[k]) for k in floats if k.startswith("text_encoder."))  # all three parts
    assert any(not torch.equal(a[k], merged[k]) for k in floats if k.startswith("vae."))


def test_an_inpainting_a_keeps_its_extra_channels_and_an_inpainting_b_is_refused(three, tmp_path):
    from diffusers import UNet2DConditionModel

    pipe = load_pipeline(resolve_model(str(three[0])))
    unet = UNet2DConditionModel.from_config({**pipe.unet.config, "in_channels": 9})
    torch.manual_seed(0)
    state = pipe.unet.state_dict()
    state["conv_in.weight"] = torch.randn(unet.conv_in.weight.shape) * 0.1
    unet.load_state_dict(state)
    pipe.unet = unet
    pipe.save_pretrained(tmp_path / "inpainting")
    out = run_merge([str(tmp_path / "inpainting"), str(three[1])], tmp_path / "mix", MergeSettings(multiplier=0.5))
    merged, a, b = (_weights(p) for p in (out, tmp_path / "inpainting", three[1]))
    assert merged["unet.conv_in.weight"].shape[1] == 9
    assert torch.equal(merged["unet.conv_in.weight"][:, :4], 0.5 * a["unet.conv_in.weight"][:, :4]
                       + 0.5 * b["unet.conv_in.weight"])
    assert torch.equal(merged["unet.conv_in.weight"][:, 4:], a["unet.conv_in.weight"][:, 4:])
    assert json.loads((out / "merge.json").read_text())["multiplier"] == 0.5
    with pytest.raises(UserError, match="B is an inpainting model .* pass it as A"):
        run_merge([str(three[1]), str(tmp_path / "inpainting")], tmp_path / "bad", MergeSettings())
    assert not (tmp_path / "bad").exists()


def _kohya_lora(pipe, path, seed=0):
    """A kohya / A1111 LoRA on the UNet's self-attention queries and the text encoder's first query."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for prefix, model, suffix in (("lora_unet_", pipe.unet, "attn1.to_q"),
                                  ("lora_te_", pipe.text_encoder, "layers.0.self_attn.q_proj")):
        for name, module in model.named_modules():
            if name.endswith(suffix):
                key = prefix + name.replace(".", "_")
                tensors |= {f"{key}.lora_down.weight": torch.randn(2, module.in_features, generator=g) * 0.5,
                            f"{key}.lora_up.weight": torch.randn(module.out_features, 2, generator=g) * 0.5,
                            f"{key}.alpha": torch.tensor(2.0)}
    save_file(tensors, str(path))
    return path


def test_a_baked_lora_and_vae_draw_what_the_model_with_them_drew(three, tmp_path):
    base = load_pipeline(resolve_model(str(three[0])))
    lora = _kohya_lora(base, tmp_path / "style.safetensors")
    settings = dict(prompt="a photo of a cat", steps=3, seed=5, width=64, height=64)
    other_vae = str(three[1] / "vae")
    baked = run_merge([str(three[0])], tmp_path / "baked", MergeSettings(
        method="none", loras=[f"{lora}:0.7"], vae=other_vae))
    with_lora = txt2img(GenerateSettings(model=str(three[0]), loras=[f"{lora}:0.7"], vae=other_vae, **settings))[0]
    alone = txt2img(GenerateSettings(model=str(baked), **settings))[0]
    plain = txt2img(GenerateSettings(model=str(three[0]), vae=other_vae, **settings))[0]
    got, want = (np.asarray(x.image, np.int16) for x in (alone, with_lora))
    assert np.abs(got - want).max() <= 2, np.abs(got - want).max()
    assert np.abs(np.asarray(plain.image, np.int16) - want).mean() > 2  # the LoRA changes the picture
    key = "vae.decoder.conv_out.weight"
    assert torch.equal(_weights(baked)[key], _weights(three[1])[key])
    half = run_merge([str(three[0])], tmp_path / "half.safetensors", MergeSettings(method="none", half=True))
    from safetensors import safe_open

    with safe_open(str(half), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}


# every form personae keeps beside the layers, written by LyCORIS itself (tests/lycoris_reference.py)
BESIDE = {"oft, rescaled": {"algo": "diag-oft", "rescaled": True}, "boft": {"algo": "boft"},
          "glora with conv": {"algo": "glora", "conv_dim": 2, "conv_alpha": 1}, "ia3": {"algo": "ia3"},
          "ia3 on the input side": {"algo": "ia3", "train_on_input": True},
          "dora on the input axis": {"algo": "lora", "conv_dim": 2, "conv_alpha": 1, "dora_wd": True,
                                     "wd_on_output": False},
          "locon with normalisation layers": {"algo": "lora", "conv_dim": 2, "conv_alpha": 1, "train_norm": True},
          "embeddings": {}}


@pytest.mark.parametrize("case", list(BESIDE))
def test_forms_kept_beside_the_layers_bake_into_the_weights_they_stand_for(three, tmp_path, case):
    from lycoris_reference import BOFT_PRESET, SD15_PRESET, outputs, probe_inputs, write_lycoris_file

    from personae.events import ignore
    from personae.jobs.merge import _bake_loras
    from personae.models.addons import load_loras

    def fresh():
        return load_pipeline(resolve_model(str(three[0])))

    pipe = fresh()
    inputs = probe_inputs(pipe)
    preset = tmp_path / "preset.toml"
    preset.write_text(BOFT_PRESET if BESIDE[case].get("algo") == "boft" else SD15_PRESET)
    path = tmp_path / "file.safetensors"
    if case == "embeddings":  # ComfyUI's Extract and Save Lora: LoRA pairs on the token and position tables
        g = torch.Generator().manual_seed(3)
        tensors = {}
        modules = dict(pipe.text_encoder.named_modules())  # transformers 4 has a text_model level, 5 not
        for table in ("token_embedding", "position_embedding"):
            rows, width = next(m for n, m in modules.items() if n.endswith(f"embeddings.{table}")).weight.shape
            key = f"text_encoders.clip_l.transformer.text_model.embeddings.{table}"
            tensors |= {f"{key}.lora_up.weight": torch.randn(rows, 2, generator=g),
                        f"{key}.lora_down.weight": torch.randn(2, width, generator=g)}
        save_file(tensors, str(path))
    else:
        write_lycoris_file(pipe, path, preset, inputs, **BESIDE[case])
    before = outputs(pipe.text_encoder, pipe.unet, inputs)
    applied = fresh()
    load_loras(applied, [(str(path), 0.6)])
    assert any(hasattr(m, "_personae_patches") for part in (applied.unet, applied.text_encoder)
               for m in part.modules())  # a form kept beside a layer
    want = outputs(applied.text_encoder, applied.unet, inputs)
    baked = fresh()
    _bake_loras(baked, MergeSettings(method="none", loras=[f"{path}:0.6"]), False, ignore)
    assert not any(hasattr(m, "_personae_patches") or hasattr(m, "lora_A") for part in (baked.unet, baked.text_encoder)
                   for m in part.modules())  # plain layers with changed weights
    for part, got, ref, base in zip(("text encoder", "unet"), outputs(baked.text_encoder, baked.unet, inputs), want,
                                    before):
        moved, diff = float((ref - base).abs().max()), float((got - ref).abs().max())
        assert moved > 1e-3 and diff <= 1e-4 * max(1.0, moved), f"{case}: {part} differs by {diff} (moved {moved})"


def test_wrong_inputs_are_refused_before_anything_is_written(three, tmp_path, tiny_model):
    a, b = str(three[0]), str(three[1])
    cases = [
        ([a], tmp_path / "o.safetensors", MergeSettings(), r"weighted-sum takes 2 models \(A, B\); 1 was given"),
        ([a, b], tmp_path / "o.safetensors", MergeSettings(method="add-difference"), "takes 3 models"),
        ([a], tmp_path / "o.safetensors", MergeSettings(method="none"), "with nothing to bake in"),
        ([a, b], three[1] / "unet" / "o.safetensors", MergeSettings(), "personae never writes its inputs"),
        ([a, b], tiny_model[1], MergeSettings(), "already exists"),
    ]
    for models, out, settings, message in cases:
        with pytest.raises(UserError, match=message):
            run_merge(models, out, settings)
    world = tmp_path / "world"
    from personae.world.model import write_world_model

    write_world_model(world)
    with pytest.raises(UserError, match="different tokenizers"):
        run_merge([a, str(world)], tmp_path / "x.safetensors", MergeSettings())
    with pytest.raises(UserError, match="a single checkpoint file carries no tokenizer"):
        run_merge([str(world)], tmp_path / "w.safetensors", MergeSettings(method="none", half=True))
    assert not any((tmp_path / n).exists() for n in ("o.safetensors", "x.safetensors", "w.safetensors"))


def test_the_command_line_merges_and_refuses_in_one_paragraph(three, tmp_path, capsys):
    from personae.cli.main import main

    out = tmp_path / "mix.safetensors"
    assert main(["merge", str(three[0]), str(three[1]), "--multiplier", "0.5", "--out", str(out), "--quiet"]) == 0
    assert out.is_file() and f"wrote {out}" in capsys.readouterr().out
    assert main(["merge", str(three[0]), str(three[1]), "--multiplier", "0.5", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in " ".join(err.split()) and "Traceback" not in err and "\n\n" not in err.strip()
