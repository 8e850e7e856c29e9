"""The LoRA family (issue #18): `lora.variant` lora | locon | dora | loha | lokr, trained through peft's own
classes, exported in the kohya / LyCORIS layout A1111 and ComfyUI read and as a diffusers or peft folder; each
export reloads with the in-memory model's image, and `personae generate --lora FILE` draws it too.

One short run per variant (3 steps on the tiny model, text encoder included), shared by the tests below.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lycoris_reference import lycoris_outputs, outputs, probe_inputs
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from train_helpers import prepared_subject, write_job

from personae.config.base import parse_settings
from personae.config.generate import GenerateSettings
from personae.config.train import TrainJob
from personae.errors import UserError
from personae.jobs.train import load_job, run_training
from personae.models.resolve import load_pipeline, resolve_model

pytestmark = pytest.mark.slow  # training runs: the full tier only

PROMPT = "a photo of <sks> star"
LORA_KEYS = {"lora_down.weight", "lora_up.weight", "alpha"}
LOKR_KEYS = {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "alpha"}
# variant: (lora settings beyond the common ones, kohya-file parameter names, ss_network_module, checks run)
VARIANTS = {
    "lora": ({}, LORA_KEYS, "networks.lora", {"a1111", "diffusers", "generate"}),
    "locon": ({"conv_rank": 2, "conv_alpha": 1}, LORA_KEYS, "networks.lora", {"a1111", "diffusers", "generate"}),
    "dora": ({"target_modules": ["to_q", "to_v", "conv1"]}, LORA_KEYS | {"dora_scale"}, "lycoris.kohya",
             {"diffusers", "generate"}),
    "loha": ({"target_modules": ["to_q", "to_v", "conv1"]}, {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b",
                                                              "alpha"}, "lycoris.kohya", {"peft", "generate"}),
    "lokr": ({"target_modules": ["to_q", "to_v", "conv1"]}, LOKR_KEYS, "lycoris.kohya", {"peft", "generate"}),
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepared_subject(tmp_path_factory.mktemp("data"), count=4, trigger="<sks>")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model, prepared):
    """variant -> (run result, run folder), each trained once on first use."""
    root = tmp_path_factory.mktemp("variants")
    runs = {}

    def get(variant: str):
        if variant not in runs:
            lora = {"variant": variant, "rank": 4, "alpha": 2, "text_encoder": True, "text_encoder_rank": 2,
                    **VARIANTS[variant][0]}
            job = load_job(write_job(root, base_model=str(tiny_model[0]), method="lora", data=prepared,
                                     output=root / variant, lora=lora, trigger="<sks>",
                                     train={"steps": 3, "batch_size": 2, "learning_rate": 5e-3, "seed": 0,
                                            "validation": {"steps": 2}}))
            runs[variant] = run_training(job), root / variant
        return runs[variant]

    return get


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, fh.metadata()


def _generate_cli(tiny_model, lora: Path, out: Path) -> np.ndarray:
    from personae.cli.main import main

    assert main(["generate", "--model", str(tiny_model[0]), "--prompt", PROMPT, "--seed", "3", "--steps", "3",
                 "--width", "64", "--height", "64", "--lora", str(lora), "--out", str(out), "--quiet"]) == 0
    [png] = sorted(out.glob("*.png"))
    return np.asarray(Image.open(png)).astype(int)


def _txt2img(pipe, source) -> np.ndarray:
    """The same picture as _generate_cli, drawn by personae's txt2img on a pipeline loaded otherwise."""
    from personae.inference.session import Session
    from personae.inference.txt2img import txt2img

    settings = GenerateSettings(model=source.location, prompt=PROMPT, seed=3, steps=3, width=64, height=64)
    pipe.set_progress_bar_config(disable=True)
    image = txt2img(settings, Session(pipe, source, torch.device("cpu"), torch.float32))[0].image
    return np.asarray(image).astype(int)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_exports_in_its_layout_and_reloads_with_the_same_image(tiny_model, trained, variant, tmp_path):
    from personae.training.verify import families, load_family

    extra, params, module, checks = VARIANTS[variant]
    result, run = trained(variant)
    # 1. the run reloaded every export and compared the image with the model in memory
    assert {c.family for c in result.checks} == checks
    assert all(c.max_abs_diff <= 1e-4 for c in result.checks), result.checks
    # 2. the kohya / LyCORIS file: its key families, both components, its header
    tensors, meta = _read(run / "lora.safetensors")
    assert {k.split(".", 1)[1] for k in tensors} <= params and {"alpha"} < {k.split(".", 1)[1] for k in tensors}
    assert any(k.startswith("lora_unet_") for k in tensors) and any(k.startswith("lora_te_text_model_")
                                                                     for k in tensors)
    assert meta["ss_network_module"] == module and meta["ss_network_dim"] == "4"
    args = json.loads(meta["ss_network_args"])
    if variant == "locon":
        assert args["conv_dim"] == "2" and args["conv_alpha"] == "1"
        down = tensors["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"]
        assert down.shape[0] == 2 and down.dim() == 4
        assert float(tensors["lora_unet_down_blocks_0_resnets_0_conv1.alpha"]) == 1.0
    if variant in ("dora", "loha", "lokr"):
        assert args["algo"] == {"dora": "lora"}.get(variant, variant)
    if variant == "dora":  # LyCORIS' wd_on_out: one value per output channel, shaped for ComfyUI's axis test
        assert args["dora_wd"] == "True" and args["wd_on_out"] == "True"
        q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
        conv = "lora_unet_down_blocks_0_resnets_0_conv1"
        assert tensors[f"{q}.dora_scale"].shape == (tensors[f"{q}.lora_up.weight"].shape[0], 1)
        assert tensors[f"{conv}.dora_scale"].shape == (tensors[f"{conv}.lora_up.weight"].shape[0], 1, 1, 1)
    # 3. the second export (diffusers or peft folder) loads by its own library; `personae generate --lora` on the
    # kohya / LyCORIS file draws the same picture, and that picture is not the base model's
    source = resolve_model(str(tiny_model[0]))
    other = [f for f in result.exports if f.format in ("diffusers", "peft")]
    family = "diffusers" if other[0].format == "diffusers" else "peft"
    assert families(other) == {family: other}
    reference = _txt2img(load_family(family, other, source, load_pipeline(source)), source)  # onto a fresh base
    drawn = _generate_cli(tiny_model, run / "lora.safetensors", tmp_path / "out")
    assert np.abs(drawn - reference).max() <= 1  # one level of 255 at most: float rounding
    assert np.abs(_txt2img(load_pipeline(source), source) - reference).max() > 3
    # 4. LyCORIS' own loader (how kohya's sd-scripts reads a lycoris.kohya network) gives the kohya / LyCORIS file
    # personae's numbers: text-encoder states and the UNet's prediction (tests/lycoris_reference.py)
    from personae.models.addons import load_loras

    pipe = load_pipeline(source)
    inputs = probe_inputs(pipe)
    base, theirs = outputs(pipe.text_encoder, pipe.unet, inputs), lycoris_outputs(pipe, run / "lora.safetensors", 1.0,
                                                                                 inputs)
    load_loras(pipe, [(str(run / "lora.safetensors"), 1.0)])
    for part, before, ref, mine in zip(("text encoder", "unet"), base, theirs, outputs(pipe.text_encoder, pipe.unet,
                                                                                        inputs)):
        assert (ref - before).abs().max() > 1e-5, f"LyCORIS applied nothing to the {part}"
        assert (mine - ref).abs().max() <= 1e-5, f"{variant}: the {part} differs in LyCORIS' loader"
    if family == "peft":  # 5. the peft folder (unet/, text_encoder/) is a --lora too, with the same numbers
        folder = load_pipeline(source)
        load_loras(folder, [(str(other[0].path), 1.0)])
        for ref, mine in zip(theirs, outputs(folder.text_encoder, folder.unet, inputs)):
            assert (mine - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_recipes_file_is_written_without_training_as_a_run_writes_it(tiny_model, trained, variant, tmp_path):
    """methods/lora_size.py, how docs/world.md sizes each recipe at SD-1.5 size: `lora_file` on the model's configs
    (zero weights, no training) writes exactly the trained run's tensors (names, shapes, types), so its size is the
    run's file size but for the header; in fp16 every weight takes half the bytes."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig

    from personae.config.train import LoraSection
    from personae.methods.lora_size import lora_file
    from personae.runs import read_run

    _, run = trained(variant)
    lora = LoraSection.model_validate(read_run(run).settings["lora"])
    configs = (UNet2DConditionModel.load_config(str(tiny_model[0] / "unet")),
               CLIPTextConfig.from_pretrained(str(tiny_model[0] / "text_encoder")))
    layout = {}
    for dtype in (torch.float32, torch.float16):
        tensors, _ = _read(lora_file(lora, *configs, tmp_path / str(dtype), dtype))
        layout[dtype] = {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}
        weights = sum(v.numel() * v.element_size() for k, v in tensors.items() if not k.endswith(".alpha"))
        layout[dtype, "bytes"] = weights
    trained_tensors, _ = _read(run / "lora.safetensors")
    assert layout[torch.float32] == {k: (tuple(v.shape), v.dtype) for k, v in trained_tensors.items()}
    assert {k: shape for k, (shape, _) in layout[torch.float16].items()} == {
        k: shape for k, (shape, _) in layout[torch.float32].items()}
    assert layout[torch.float16, "bytes"] * 2 == layout[torch.float32, "bytes"] > 0


def test_dora_files_with_either_axis_load_and_mixed_ones_are_refused(tiny_model, trained, tmp_path):
    """dora_scale on the input axis (A1111's layout, LyCORIS' wd_on_output=False) loads beside its layer (its numbers:
    tests/test_lycoris_files.py); a file mixing DoRA with plain LoRA layers is refused in one paragraph, not loaded
    with another image."""
    from personae.models.addons import load_loras

    _, run = trained("dora")
    tensors, meta = _read(run / "lora.safetensors")
    q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    pipe = load_pipeline(resolve_model(str(tiny_model[0])))
    input_axis = dict(tensors, **{f"{q}.dora_scale": torch.ones(1, tensors[f"{q}.lora_down.weight"].shape[1])})
    mixed = {k: v for k, v in tensors.items() if k != f"{q}.dora_scale"}
    save_file(input_axis, str(tmp_path / "input_axis.safetensors"), meta)
    (lora,) = load_loras(pipe, [(str(tmp_path / "input_axis.safetensors"), 1.0)])
    assert "DoRA + DoRA (input axis)" in lora.layout
    from personae.cli.main import main  # the diffusers layout has no input-axis DoRA: convert says so, writes nothing

    assert main(["convert", str(tmp_path / "input_axis.safetensors"), "--to", "diffusers", "--out",
                 str(tmp_path / "converted")]) == 2 and not (tmp_path / "converted").exists()
    pipe = load_pipeline(resolve_model(str(tiny_model[0])))
    save_file(mixed, str(tmp_path / "mixed.safetensors"), meta)
    with pytest.raises(UserError, match="mixes DoRA") as err:
        load_loras(pipe, [(str(tmp_path / "mixed.safetensors"), 1.0)])
    assert "\n" not in str(err.value)


def test_convert_keeps_dora_magnitudes(tiny_model, trained, tmp_path):
    """`personae convert` of a DoRA file, both ways, keeps its magnitudes: the same image after the round trip."""
    from personae.methods.lora_files import diffusers_to_kohya_file, kohya_to_diffusers_file
    from personae.models.addons import load_loras
    from personae.training.verify import render

    _, run = trained("dora")
    back = diffusers_to_kohya_file(run / "lora_diffusers/pytorch_lora_weights.safetensors", tmp_path / "k.safetensors")
    folder = kohya_to_diffusers_file(back, tmp_path / "d")
    assert any(k.endswith("dora_scale") for k in load_file(str(back)))
    images = []
    for path in (run / "lora.safetensors", back, folder):
        pipe = load_pipeline(resolve_model(str(tiny_model[0])))
        load_loras(pipe, [(str(path), 1.0)])
        images.append(render(pipe, PROMPT))
    assert max(np.abs(images[0] - image).max() for image in images[1:]) <= 1e-5


def test_bad_variant_settings_are_one_paragraph(tiny_model):
    from personae.methods.lora import add_lora, freeze

    base = {"base_model": "m", "method": "lora", "data": {"path": "d"}, "output": "o"}
    for lora, expected in [({"variant": "dora", "conv_rank": 8}, "set lora.variant: locon"),
                           ({"variant": "loha", "dropout": 0.1}, "lora.dropout: 0")]:
        with pytest.raises(UserError, match=expected) as err:
            parse_settings(TrainJob, {**base, "lora": lora})
        assert "\n" not in str(err.value)
    pipe = load_pipeline(resolve_model(str(tiny_model[0])))
    freeze(pipe)
    with pytest.raises(UserError, match="it is a LayerNorm") as err:
        add_lora(pipe, 4, 4.0, 0.0, ["to_q", "norm1"], False, None, "lokr")
    assert "\n" not in str(err.value) and "norm1" in str(err.value)
    with pytest.raises(UserError, match="name no layer"):
        add_lora(pipe, 4, 4.0, 0.0, ["to_qq"], False, None, "loha")
    assert not getattr(pipe.unet, "peft_config", None)  # refused before any layer was added


def test_pivotal_phases_train_the_tokens_then_the_lora(tmp_path, tiny_model, prepared):
    """pivotal.phases [2, 2]: after step 2 only the token moved (the LoRA's up matrices are still their zero
    start); from step 2 to 4 only the LoRA moved (the token is as step 2 left it)."""
    job = load_job(write_job(tmp_path, base_model=str(tiny_model[0]), method="pivotal", data=prepared,
                             output=tmp_path / "run", lora={"rank": 4, "alpha": 4, "text_encoder": True},
                             pivotal={"tokens": [{"token": "<sks>", "init_word": "star"}], "phases": [2, 2]},
                             train={"batch_size": 2, "learning_rate": 5e-3, "save_every": 2, "verify_exports": False,
                                    "validation": {"steps": 1}}))
    assert job.train.steps == 4
    run_training(job)
    at = {n: load_file(str(tmp_path / f"run/checkpoints/step-00000{n}/trainable.safetensors")) for n in (2, 4)}
    ups = [k for k in at[2] if "lora_B" in k]
    assert ups and all(not at[2][k].any() for k in ups)  # phase 1: the LoRA waits
    assert any(at[4][k].abs().max() > 1e-4 for k in ups)  # phase 2: it trains
    pipe = load_pipeline(resolve_model(str(tiny_model[0])))
    ids = pipe.tokenizer("star", add_special_tokens=False).input_ids
    start = pipe.text_encoder.get_input_embeddings().weight[ids].mean(0)
    assert (at[2]["embedding.<sks>"] - start).abs().max() > 1e-4  # phase 1: the token moves
    assert torch.equal(at[2]["embedding.<sks>"], at[4]["embedding.<sks>"])  # phase 2: it stays


@pytest.mark.parametrize("variant, checks", [("dora", {"diffusers", "generate"}), ("lokr", {"peft", "generate"})])
def test_pivotal_with_an_adapter_diffusers_cannot_read_checks_its_embeddings_beside_it(tmp_path, tiny_model,
                                                                                         prepared, variant, checks):
    """Pivotal tuning with DoRA (its kohya file is read by LyCORIS-aware loaders only) or LoKr: the A1111 embedding
    is checked with the LyCORIS file (generate), the diffusers one with the peft folder, never alone (alone it
    renders without the adapter: the bench's pivotal:variant=dora stopped with 'differ by 7.44e-01')."""
    job = load_job(write_job(tmp_path, base_model=str(tiny_model[0]), method="pivotal", data=prepared,
                             output=tmp_path / "run", lora={"variant": variant, "rank": 4, "alpha": 4,
                                                            "target_modules": ["to_q", "to_v", "conv1"]},
                             pivotal={"tokens": [{"token": "<sks>", "init_word": "star"}], "phases": [1, 2]},
                             train={"batch_size": 2, "learning_rate": 5e-3, "validation": {"steps": 1}}))
    run_training(job)  # raises if an export does not reproduce the model
    done = json.loads((tmp_path / "run/run.json").read_text())
    assert {c["family"] for c in done["checks"]} == checks
    assert all(c["max_abs_diff"] <= c["tolerance"] for c in done["checks"])
    embedded = [c for c in done["checks"] if any("embeddings" in f for f in c["files"])]
    assert {c["family"] for c in embedded} == checks  # every check renders the token with the adapter
    assert all(len(c["files"]) >= 2 for c in embedded)


@pytest.mark.parametrize("module, block", [
    # A1111's names for SD-1.5 (its diffusers -> LDM conversion: input_blocks 1 + 3 i + j, downsampler 3 + 3 i,
    # output_blocks 3 i + j, upsampler 3 i + 2), two layers per block
    ("conv_in", "IN00"), ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "IN01"),
    ("down_blocks.0.resnets.1.conv1", "IN02"), ("down_blocks.0.downsamplers.0.conv", "IN03"),
    ("down_blocks.1.attentions.0.proj_in", "IN04"), ("down_blocks.2.resnets.1.conv2", "IN08"),
    ("down_blocks.3.resnets.1.conv1", "IN11"), ("mid_block.attentions.0.transformer_blocks.0.attn2.to_k", "M00"),
    ("mid_block.resnets.1.conv1", "M00"), ("up_blocks.0.resnets.0.conv1", "OUT00"),
    ("up_blocks.0.upsamplers.0.conv", "OUT02"), ("up_blocks.1.attentions.2.proj_out", "OUT05"),
    ("up_blocks.3.attentions.2.transformer_blocks.0.attn1.to_out.0", "OUT11"), ("conv_out", None),
    ("time_embedding.linear_1", None),
])
def test_unet_modules_get_a1111_block_names(module, block):
    from personae.methods.lora_blocks import a1111_block

    assert a1111_block(module, layers_per_block=2) == block


def _blocks_job(root: Path, tiny_model, prepared, variant: str = "locon", **lora):
    lora = {"variant": variant, "rank": 4, "alpha": 4, "text_encoder": True, "text_encoder_rank": 2,
            "text_encoder_alpha": 3, "block_ranks": {"IN": 2, "MID": 8, "OUT": 4, "OUT03": 6},
            "block_alphas": {"MID": 4, "IN01": 1}, **lora}
    return load_job(write_job(root, base_model=str(tiny_model[0]), method="lora", data=prepared, output=root / "run",
                              lora=lora, trigger="<sks>", train={"steps": 2, "batch_size": 2, "learning_rate": 5e-3,
                                                                 "validation": {"steps": 2}}))


def _expected(module: str) -> tuple[int, float]:
    """(rank, alpha) _blocks_job asks for a UNet module of the tiny model (one layer per block: IN00-IN07,
    M00, OUT00-OUT07)."""
    from personae.methods.lora_blocks import a1111_block

    block = a1111_block(module, 1)
    rank = {None: 4, "OUT03": 6}.get(block) or {"I": 2, "M": 8, "O": 4}[block[0]]
    alpha = {"M00": 4, "IN01": 1}.get(block, 4)
    return rank, alpha


@pytest.mark.parametrize("variant", ["locon", "loha"])
def test_block_ranks_shape_the_peft_layers(tmp_path, tiny_model, prepared, variant):
    """lora.block_ranks / block_alphas by A1111 names reach every adapted layer of the UNet through peft's
    rank_pattern / alpha_pattern (a single block over its group), and the text encoder has its own rank and
    alpha."""
    from personae.methods.lora import LoraMethod, layer_alphas

    job = _blocks_job(tmp_path, tiny_model, prepared, variant)
    pipe = load_pipeline(resolve_model(str(tiny_model[0])))
    LoraMethod(job).setup(pipe)
    ranks = {name: m.r["default"] for name, m in pipe.unet.named_modules() if hasattr(m, "r") and "default" in m.r}
    alphas = layer_alphas(pipe.unet)
    assert {_expected(m)[0] for m in ranks} == {2, 4, 6, 8}  # every group and a single block
    for module, rank in ranks.items():
        assert (rank, pytest.approx(alphas[module])) == _expected(module), module
    if variant == "locon":  # the convolutions follow the blocks too (no conv_rank given)
        assert ranks["up_blocks.1.resnets.1.conv1"] == 6 and ranks["down_blocks.0.resnets.0.conv2"] == 2
    te = {name: (m.r["default"], round(layer_alphas(pipe.text_encoder)[name], 6)) for name, m in
          pipe.text_encoder.named_modules() if hasattr(m, "r") and "default" in m.r}
    assert te and set(te.values()) == {(2, 3.0)}


def test_block_ranks_are_exported_per_key_and_reload_equal(tmp_path, tiny_model, prepared):
    """A trained run with block ranks: the kohya file carries each module's own rank (lora_down rows), the text
    encoder's too, and every export reloaded with the in-memory image. Block alphas that differ on attention
    layers are folded into the up matrices over one written alpha (diffusers' kohya loader loses the attention
    layers' own alphas; lora_files.diffusers_safe_alphas), so the reload through diffusers is exact too."""
    job = _blocks_job(tmp_path, tiny_model, prepared)
    result = run_training(job)
    assert result.checks and all(c.max_abs_diff <= 1e-4 for c in result.checks), result.checks
    tensors, _ = _read(tmp_path / "run/lora.safetensors")
    unet = {k.removesuffix(".lora_down.weight") for k in tensors if k.startswith("lora_unet_") and "lora_down" in k}
    pipe = load_pipeline(resolve_model(str(tiny_model[0])))
    names = {"lora_unet_" + m.replace(".", "_"): m for m, _ in pipe.unet.named_modules()}
    seen = set()
    for key in unet:
        rank, alpha = _expected(names[key])
        assert tensors[f"{key}.lora_down.weight"].shape[0] == rank, key
        seen.add(rank)
    assert seen == {2, 4, 6, 8}
    assert {float(tensors[f"{key}.alpha"]) for key in unet} == {4.0}
    te = [k for k in tensors if k.startswith("lora_te_") and k.endswith(".lora_down.weight")]
    assert te and all(tensors[k].shape[0] == 2 and float(tensors[k.replace("lora_down.weight", "alpha")]) == 3
                      for k in te)


def test_bad_block_names_are_one_paragraph(tiny_model, prepared, tmp_path):
    base = {"base_model": "m", "method": "lora", "data": {"path": "d"}, "output": "o"}
    for lora, expected in [({"block_ranks": {"BASE": 4}}, "text_encoder_rank"),
                           ({"block_ranks": {"IN1": 4}}, "no UNet block name"),
                           ({"block_ranks": {"IN": 0}}, "positive whole number")]:
        with pytest.raises(UserError, match=expected) as err:
            parse_settings(TrainJob, {**base, "lora": lora})
        assert "\n" not in str(err.value)
    from personae.methods.lora import LoraMethod

    job = _blocks_job(tmp_path, tiny_model, prepared, block_ranks={"IN11": 4})  # the tiny UNet ends at IN07
    with pytest.raises(UserError, match="IN00-IN07, M00, OUT00-OUT07"):
        LoraMethod(job).setup(load_pipeline(resolve_model(str(tiny_model[0]))))


def test_kohya_alphas_stay_per_key_unless_diffusers_would_lose_an_attention_alpha():
    from personae.methods.lora_files import diffusers_safe_alphas

    q, conv = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "down_blocks.0.resnets.0.conv1"
    convs = {f"down_blocks.0.resnets.{i}.conv{j}": 1.0 for i in range(3) for j in (1, 2)}
    assert diffusers_safe_alphas({q: 4.0, conv: 1.0, "x.attn2.to_k": 4.0}) == {q: 4.0, conv: 1.0, "x.attn2.to_k": 4.0}
    # attention layers with their own alpha, or outnumbered by convolutions: one alpha for all (the common one)
    assert set(diffusers_safe_alphas({q: 1.0, "x.attn2.to_k": 4.0, conv: 4.0}).values()) == {4.0}
    assert set(diffusers_safe_alphas({q: 4.0, **convs}).values()) == {1.0}
