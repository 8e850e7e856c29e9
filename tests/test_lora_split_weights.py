"""A LoRA's text-encoder and UNet weights apart: A1111's <lora:name:te:unet> (extra_networks_lora.py), --lora
FILE:TE:UNET, a LoraRef's unet_weight, ComfyUI's strength_clip / strength_model.

The pictures are checked against the file cut in two (its text-encoder keys, its UNet keys), each half loaded at
its own weight: the same layers changed by the same amounts.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from personae.config.addons import LoraRef
from personae.config.generate import GenerateSettings
from personae.errors import UserError
from personae.inference.txt2img import txt2img
from personae.models.lora_dir import lora_tags


def test_tags_are_read_as_a1111_reads_them():
    prompt, tags = lora_tags("a cat <lora:a:0.8:0.5>, <lora:b:te=0.2:unet=1> <lora:c> <lyco:d:unet=0.3> "
                             "<lora:e:0.5:0.5> <lora:f:1:>")
    assert prompt == "a cat ,"
    assert [(t.name, t.weight, t.unet_weight) for t in tags] == [
        ("a", 0.8, 0.5), ("b", 0.2, 1.0), ("c", 1.0, None), ("d", 1.0, 0.3), ("e", 0.5, None), ("f", 1.0, None)]
    for tag, said in (("<lora:a:1:1:8>", "dyn="), ("<lora:a:dyn=8>", "dyn="), ("<lora:a:x>", "not a number"),
                      ("<lora:a:te=1:unet=y>", "not a number")):
        with pytest.raises(UserError, match=said):
            lora_tags(f"a cat {tag}")
    # A1111 takes every <word:...> tag out as an extra network: a hypernetwork or an unknown kind is refused by name
    for tag, said in (("<hypernet:anime:0.8>", "an A1111 hypernetwork"), ("<foo:bar:1>", "knows only <lora:...>")):
        with pytest.raises(UserError, match=said):
            lora_tags(f"a cat {tag} <lora:a:1>")
    assert lora_tags("a cat <3, (smiling:1.2), a:b>")[0] == "a cat <3, (smiling:1.2), a:b>"  # not tags: kept
    assert LoraRef.from_cli("a.safetensors:0.5:0.25") == {"path": "a.safetensors", "weight": 0.5, "unet_weight": 0.25}
    assert LoraRef.from_cli("a.safetensors:0.5") == {"path": "a.safetensors", "weight": 0.5}


def _both(pipe, path, seed=0, patch=False):
    """A kohya LoRA on the UNet's self-attention queries and the text encoder's first query projection; with
    `patch`, a change of the text encoder's first layer norm too (a change beside its layer, layer_patches.py)."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for prefix, model, pick in (
            ("lora_unet_", pipe.unet, lambda n: n.endswith("attn1.to_q")),
            ("lora_te_text_model_", pipe.text_encoder, lambda n: n.endswith("layers.0.self_attn.q_proj"))):
        for name, module in model.named_modules():
            if pick(name):
                key = prefix + name.removeprefix("text_model.").replace(".", "_")  # kohya's names in any transformers
                tensors |= {f"{key}.lora_down.weight": torch.randn(2, module.in_features, generator=g),
                            f"{key}.lora_up.weight": torch.randn(module.out_features, 2, generator=g),
                            f"{key}.alpha": torch.tensor(2.0)}
    if patch:
        width = pipe.text_encoder.config.hidden_size
        key = "lora_te_text_model_encoder_layers_0_layer_norm1"
        tensors |= {f"{key}.w_norm": torch.randn(width, generator=g), f"{key}.b_norm": torch.randn(width, generator=g)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def _halves(path):
    tensors = load_file(str(path))
    halves = {}
    for part in ("te", "unet"):
        half = path.with_name(f"{path.stem}-{part}.safetensors")
        save_file({k: v for k, v in tensors.items() if k.startswith(f"lora_{part}_")}, str(half))
        halves[part] = str(half)
    return halves


def _px(result):
    return np.asarray(result.image, dtype=np.int16)


def _draw(model, session=None, **kw):
    base = {"model": str(model), "prompt": "a photo of a cat", "steps": 3, "seed": 5, "width": 64, "height": 64}
    return txt2img(GenerateSettings(**{**base, **kw}), session)[0]


@pytest.mark.parametrize("patch", [False, True])
def test_te_and_unet_weights_apart_draw_the_halves_at_theirs(tiny_model, tiny_session, tmp_path, patch):
    """<lora:both:0.7:0.3> is the text-encoder half at 0.7 with the UNet half at 0.3; <lora:both:1:0> the
    text-encoder half alone. The PNG writes A1111's tag, and --from-png of it draws the same picture."""
    from personae.jobs.generate import settings_from_png

    both = _both(tiny_session.pipe, tmp_path / "loras" / "both.safetensors", patch=patch)
    halves = _halves(both)
    model = tiny_model[0]
    split = _draw(model, prompt="a photo of a cat <lora:both:0.7:0.3>", lora_dir=str(tmp_path / "loras"))
    by_halves = _draw(model, loras=[{"path": halves["te"], "weight": 0.7}, {"path": halves["unet"], "weight": 0.3}])
    assert np.abs(_px(split) - _px(by_halves)).max() <= 1
    assert split.parameters.splitlines()[0] == "a photo of a cat <lora:both:0.7:0.3>"
    assert split.settings.loras[0].unet_weight == 0.3
    same = _draw(model, loras=[{"path": str(both), "weight": 0.7}])
    assert np.abs(_px(split) - _px(same)).max() > 5  # the UNet at 0.3, not 0.7: another picture
    te_only = _draw(model, loras=[{"path": str(both), "weight": 1.0, "unet_weight": 0.0}])
    half = _draw(model, loras=[{"path": halves["te"], "weight": 1.0}])
    assert np.abs(_px(te_only) - _px(half)).max() <= 1
    assert te_only.parameters.splitlines()[0].endswith("<lora:both:1:0>")
    split.image.save(tmp_path / "split.png", pnginfo=_info(split.parameters))
    stored = settings_from_png(tmp_path / "split.png")
    again = _draw(model, **{k: v for k, v in stored.items() if k not in ("model",)}, lora_dir=str(tmp_path / "loras"))
    assert np.array_equal(_px(again), _px(split))


def _info(parameters):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", parameters)  # A1111's chunk alone
    return info


def test_a_session_takes_a_tags_weights_for_one_call(tiny_model, tmp_path):
    """A caller holding a session (compare, storyboard) picks the weights per call: the tag's two weights, then the
    session's own again; the text encoder's weight reaches the prompt's encoding."""
    from personae.inference.session import open_session

    both = _both(open_session(str(tiny_model[0]), device="cpu").pipe, tmp_path / "both.safetensors", seed=1)
    halves = _halves(both)
    session = open_session(str(tiny_model[0]), device="cpu", loras=[(str(both), 1.0)])
    picked = _draw(tiny_model[0], session, prompt="a photo of a cat <lora:both:0:1>")
    unet_half = _draw(tiny_model[0], loras=[{"path": halves["unet"], "weight": 1.0}])
    assert np.abs(_px(picked) - _px(unet_half)).max() <= 1
    # one weight for both, picked per call, reaches the text encoder too (its texts were encoded before the call's
    # weights were set, at the session's)
    half = _draw(tiny_model[0], session, prompt="a photo of a cat <lora:both:0.5>")
    assert np.abs(_px(half) - _px(_draw(tiny_model[0], loras=[{"path": str(both), "weight": 0.5}]))).max() <= 1
    whole = _draw(tiny_model[0], session)
    assert np.abs(_px(whole) - _px(_draw(tiny_model[0], loras=[{"path": str(both), "weight": 1.0}]))).max() <= 1
    assert np.abs(_px(whole) - _px(picked)).max() > 5


def test_merge_bakes_each_models_own_weight(tiny_model, tiny_session, tmp_path):
    """`personae merge --lora FILE:TE:UNET`: the baked model draws what the halves at their weights draw (the text
    encoder's layer-norm change, kept beside its layer, at the text encoder's weight too)."""
    from personae.config.merge import MergeSettings
    from personae.jobs.merge import run_merge

    both = _both(tiny_session.pipe, tmp_path / "both.safetensors", seed=2, patch=True)
    halves = _halves(both)
    baked = run_merge([str(tiny_model[0])], tmp_path / "baked", MergeSettings(method="none", loras=[f"{both}:0.6:1"]))
    alone = _draw(baked)
    by_halves = _draw(tiny_model[0], loras=[{"path": halves["te"], "weight": 0.6},
                                            {"path": halves["unet"], "weight": 1.0}])
    assert np.abs(_px(alone) - _px(by_halves)).max() <= 2
    assert np.abs(_px(alone) - _px(_draw(tiny_model[0], loras=[{"path": str(both), "weight": 0.6}]))).max() > 5


def test_a_compare_variant_keeps_both_weights(tmp_path):
    """A suite's variant `loras: [FILE:TE:UNET]` reaches its row with both weights, shown as te:unet; a weight
    sweep sets both."""
    from personae.config.compare import CompareSuite
    from personae.jobs.compare_plan import expand

    suite = CompareSuite.model_validate({"version": 1, "base_model": "m", "prompts": ["a cat"], "variants": [
        {"label": "split", "loras": ["a.safetensors:0.8:0.3"]}, {"label": "one", "loras": ["b.safetensors:0.5"]}]})
    rows = {row.label: row for row in expand(suite)}
    assert rows["split"].loras == (("a.safetensors", 0.8, 0.3),) and rows["split"].settings["weight"] == "0.8:0.3"
    assert rows["one"].loras == (("b.safetensors", 0.5, None),) and rows["one"].settings["weight"] == "0.5"
    swept = expand(suite.model_copy(update={"sweep": {"weight": [1.0]}}))
    assert {row.loras for row in swept} == {(("a.safetensors", 1.0),), (("b.safetensors", 1.0),)}
