"""The tiny model writer, the original-layout export and the model resolver's three kinds of input."""

import time

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

from personae.errors import UserError
from personae.models.original_layout import save_single_file
from personae.models.resolve import load_pipeline, resolve_model
from personae.models.tiny import TINY_UNET, build_tiny_pipeline, sd15_tokenizer, write_tiny_model


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path):
    write_tiny_model(tmp_path / "a", seed=3, single_file=tmp_path / "a.safetensors")
    write_tiny_model(tmp_path / "b", seed=3, single_file=tmp_path / "b.safetensors")
    write_tiny_model(tmp_path / "c", seed=4)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    unet = "unet/diffusion_pytorch_model.safetensors"
    assert _files(tmp_path / "a")[unet] != _files(tmp_path / "c")[unet]


def test_safetensors_with_several_metadata_keys_are_the_same_bytes_every_time(tmp_path):
    """safetensors orders a header's metadata as its Rust HashMap does, differently from call to call (the same
    tensors gave other bytes in CI); save_safetensors sorts the keys, and the file reads back whole."""
    from safetensors import safe_open
    from safetensors.torch import save

    from personae.models.folders import save_safetensors

    tensors = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(5, dtype=torch.float16)}
    metadata = {"format": "x", "version": "1", "ss_network_dim": "8", "name": "é ünïcode \"quoted\"\n"}
    assert len({save(tensors, metadata=metadata) for _ in range(16)}) > 1  # the library's own behaviour
    files = [save_safetensors(tensors, tmp_path / f"{i}.safetensors", metadata) for i in range(16)]
    assert len({f.read_bytes() for f in files}) == 1
    with safe_open(str(files[0]), framework="pt") as fh:
        assert fh.metadata() == metadata
        assert {k: fh.get_tensor(k).tolist() for k in fh.keys()} == {k: v.tolist() for k, v in tensors.items()}


def test_single_file_bytes_are_stable_across_writes(tmp_path):
    """safetensors writes header metadata from a hash map: with two or more keys their order (so the
    bytes) changes between calls in one process. Our single file keeps one key, so it is stable."""
    pipe = build_tiny_pipeline(seed=2)
    digests = {save_single_file(pipe, tmp_path / f"{i}.safetensors").read_bytes() for i in range(8)}
    assert len(digests) == 1


def test_shipped_tokenizer_gives_sd15_token_ids():
    tok = sd15_tokenizer()
    assert len(tok) == 49408
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def _assert_same_weights(a, b):
    for name in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert set(sa) == set(sb), name
        for key in sa:
            assert torch.equal(sa[key], sb[key]), f"{name}.{key}"


def test_single_file_reloads_through_diffusers_with_identical_weights(tiny_model):
    folder, single = tiny_model
    a = load_pipeline(resolve_model(str(folder)))
    b = load_pipeline(resolve_model(str(single)))
    assert resolve_model(str(single)).kind == "single_file"
    _assert_same_weights(a, b)
    # diffusers' from_single_file would reset the VAE scaling factor to SD-1.5's 0.18215
    assert b.vae.config.scaling_factor == a.vae.config.scaling_factor != 0.18215


def test_export_holds_for_sd15_block_layout_with_two_layers_per_block(tmp_path):
    """SD-1.5 itself has layers_per_block=2; the index arithmetic must hold there too."""
    pipe = build_tiny_pipeline(seed=1)
    torch.manual_seed(5)
    pipe.unet = UNet2DConditionModel(**{**TINY_UNET, "layers_per_block": 2})
    save_single_file(pipe, tmp_path / "lpb2.safetensors")
    _assert_same_weights(pipe, load_pipeline(resolve_model(str(tmp_path / "lpb2.safetensors"))))


def test_original_layout_keys_are_the_sd15_names(tiny_model):
    from safetensors import safe_open

    with safe_open(str(tiny_model[1]), framework="pt") as fh:
        keys = set(fh.keys())
    for key in ["model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.time_embed.0.weight",
                "model.diffusion_model.input_blocks.1.1.proj_in.weight", "model.diffusion_model.middle_block.1.proj_out.weight",
                "model.diffusion_model.output_blocks.1.1.conv.weight", "model.diffusion_model.out.2.weight",
                "first_stage_model.encoder.down.0.block.0.conv1.weight", "first_stage_model.decoder.up.3.upsample.conv.weight",
                "first_stage_model.encoder.mid.attn_1.q.weight", "first_stage_model.quant_conv.weight",
                "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"]:
        assert key in keys, key


def test_plain_sd15_file_without_header_uses_the_shipped_configs(tmp_path):
    """A model-site file has no personae header: the shipped SD-1.5 configs are used (here: shapes mismatch
    on purpose, proving those configs and not the tiny ones were read, offline)."""
    pipe = build_tiny_pipeline()
    from personae.models.original_layout import pipeline_to_original

    save_file(pipeline_to_original(pipe.unet, pipe.vae, pipe.text_encoder), str(tmp_path / "site.safetensors"))
    with pytest.raises(Exception) as err:
        load_pipeline(resolve_model(str(tmp_path / "site.safetensors")))
    assert "size" in str(err.value).lower() or "shape" in str(err.value).lower()


def test_hub_id_fails_fast_offline_with_a_helpful_message():
    source = resolve_model("stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert source.kind == "hub"
    start = time.monotonic()
    with pytest.raises(UserError) as err:
        load_pipeline(source)
    assert time.monotonic() - start < 30
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in str(err.value) and "--model ./" in str(err.value)


@pytest.mark.parametrize("name", ["model.ckpt", "model.pt", "model.bin", "model.pkl", "model"])
def test_pickle_checkpoints_are_refused_unless_allowed(tmp_path, name):
    torch.save({"model.diffusion_model.x": torch.zeros(1)}, tmp_path / name)  # a pickle, whatever its name
    with pytest.raises(UserError, match="arbitrary code"):
        resolve_model(str(tmp_path / name))
    assert resolve_model(str(tmp_path / name), allow_pickle=True).kind == "single_file"


def test_bad_paths_say_what_is_wrong(tmp_path):
    with pytest.raises(UserError, match="not found"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="model_index.json"):
        resolve_model(str(tmp_path))
    (tmp_path / "sdxl.safetensors").write_bytes(b"")
    save_file({"conditioner.embedders.0.x": torch.zeros(1), "model.diffusion_model.x": torch.zeros(1)},
              str(tmp_path / "sdxl.safetensors"))
    with pytest.raises(UserError, match="SDXL"):
        load_pipeline(resolve_model(str(tmp_path / "sdxl.safetensors")))
    save_file({"lora_unet_down.alpha": torch.zeros(1)}, str(tmp_path / "lora.safetensors"))
    with pytest.raises(UserError, match="--lora"):
        load_pipeline(resolve_model(str(tmp_path / "lora.safetensors")))


def test_a_hub_id_that_left_the_hub_names_its_maintained_copy():
    with pytest.raises(UserError, match="stable-diffusion-v1-5/stable-diffusion-v1-5"):
        load_pipeline(resolve_model("runwayml/stable-diffusion-v1-5"))


def test_written_folders_are_conventional_for_transformers_4_and_5(tmp_path):
    """Text-encoder names with `text_model.` (transformers 4 reads bare names as missing and initialises them at
    random), the tokenizer's vocab.json / merges.txt, files readable by others; transformers 5 loads the same weights."""
    from safetensors import safe_open
    from transformers import CLIPTextModel, CLIPTokenizer

    from personae.world.model import write_world_model

    pipe = build_tiny_pipeline(seed=0)
    write_tiny_model(tmp_path / "tiny", seed=0)
    write_world_model(tmp_path / "world")
    for folder in (tmp_path / "tiny", tmp_path / "world"):
        with safe_open(str(folder / "text_encoder" / "model.safetensors"), "pt") as fh:
            assert all(k.startswith("text_model.") for k in fh.keys()), folder
        assert (folder / "tokenizer" / "vocab.json").is_file() and (folder / "tokenizer" / "merges.txt").is_file()
        assert all(p.stat().st_mode & 0o777 == 0o644 for p in folder.rglob("*") if p.is_file()), folder
        loaded, info = CLIPTextModel.from_pretrained(str(folder / "text_encoder"), output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], folder
    reloaded = CLIPTextModel.from_pretrained(str(tmp_path / "tiny" / "text_encoder")).state_dict()
    assert all(torch.equal(v, reloaded[k]) for k, v in pipe.text_encoder.state_dict().items())
    # the slow tokenizer (what transformers 4 pipelines build) from vocab.json / merges.txt gives SD-1.5's ids
    slow = CLIPTokenizer(str(tmp_path / "tiny/tokenizer/vocab.json"), str(tmp_path / "tiny/tokenizer/merges.txt"))
    assert slow("a photo of a cat").input_ids == sd15_tokenizer()("a photo of a cat").input_ids


def test_folder_and_single_file_give_the_same_pixels_on_one_thread(tiny_model):
    """safetensors hands out weights at the file's offsets; CPU kernels round differently on unaligned memory
    (seen: 1 level apart with one thread). Loaded weights are re-homed to aligned memory, so the same weights
    give the same pixels whatever file they came from."""
    from personae.config.generate import GenerateSettings
    from personae.inference.session import open_session
    from personae.inference.txt2img import txt2img
    from personae.models.resolve import ALIGNMENT

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sessions = [open_session(str(path), device="cpu") for path in tiny_model]
        for session in sessions:
            for part in ("unet", "vae", "text_encoder"):
                module = getattr(session.pipe, part)
                assert all(t.data_ptr() % ALIGNMENT == 0 for t in [*module.parameters(), *module.buffers()]), part
        settings = GenerateSettings(model=str(tiny_model[0]), prompt="a photo of a cat", steps=4, seed=7,
                                    width=64, height=64)
        folder, single = (np.asarray(txt2img(settings, s)[0].image) for s in sessions)
        assert np.array_equal(folder, single)
    finally:
        torch.set_num_threads(threads)
