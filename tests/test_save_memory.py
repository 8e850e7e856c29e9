"""A save's export check reloads every file onto a fresh base model built on the trained pipeline's own frozen
weights: no second copy of the base model (at SD-1.5's size, 4.3 GB more at every checkpoint: a full-size LoRA run
that trained in 5.4 GB peaked at 8.7 GB at its save before, 6.1 GB now; benchmarks/RESULTS.md)."""

from __future__ import annotations

import pytest
import torch

from personae.methods.lora import add_lora, export_lora, freeze
from personae.models.resolve import load_pipeline, resolve_model
from personae.training.verify import borrowed_base, verify_exports


def storages(module: torch.nn.Module) -> set[int]:
    return {p.untyped_storage().data_ptr() for p in module.parameters()}


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def trained_lora(source):
    pipe = load_pipeline(source)
    freeze(pipe)
    torch.manual_seed(0)
    add_lora(pipe, 4, 4.0, 0.0, ["to_q", "to_v"], True, None)  # the UNet's and the text encoder's layers
    with torch.no_grad():
        for name, p in [*pipe.unet.named_parameters(), *pipe.text_encoder.named_parameters()]:
            if "lora_B" in name:
                p.normal_(0, 0.3)
    return pipe


@pytest.mark.parametrize("kind", ["folder", "single file"])
def test_the_check_borrows_the_frozen_weights_and_leaves_the_run_as_it_was(tmp_path, tiny_model, kind):
    source = resolve_model(str(tiny_model[0] if kind == "folder" else tiny_model[1]))
    pipe = trained_lora(source)
    base = borrowed_base(pipe, source)
    fresh = load_pipeline(source)
    for name in ("unet", "text_encoder"):
        borrowed, trained = getattr(base, name), getattr(pipe, name)
        assert storages(borrowed) <= storages(trained), f"the {name} was copied or read again"
        assert not any("lora" in k for k in borrowed.state_dict()), f"the {name} carries the run's adapter"
        expected = getattr(fresh, name).state_dict()
        assert borrowed.state_dict().keys() == expected.keys()
        assert all(torch.equal(v, expected[k]) for k, v in borrowed.state_dict().items()), name
    assert base.vae is pipe.vae
    assert len(base.tokenizer) == len(fresh.tokenizer)

    files = export_lora(pipe, tmp_path, name="lora", rank=4, alpha=4.0, te_alpha=4.0, steps=1, base_model="tiny",
                        trigger="", extra_meta={})
    before = {name: state(getattr(pipe, name)) for name in ("unet", "text_encoder", "vae")}
    checks = verify_exports(pipe, files, source, "a photo")
    assert {c.family for c in checks} == {"a1111", "diffusers", "generate"}
    assert all(c.ok for c in checks), [(c.family, c.max_abs_diff) for c in checks]
    for name, values in before.items():  # the loaders put their adapters on the new modules, not on the run's
        after = getattr(pipe, name).state_dict()
        assert after.keys() == values.keys(), name
        assert all(torch.equal(after[k], v) for k, v in values.items()), name


@pytest.mark.parametrize("trains", ["token table", "unet"])
def test_what_trains_is_read_from_the_base_models_files(tiny_model, trains):
    """Textual inversion trains the text encoder's token table, DreamBooth the UNet: those come from the files (at
    the base model's values), the rest is still borrowed."""
    source = resolve_model(str(tiny_model[0]))
    pipe = load_pipeline(source)
    freeze(pipe)
    learning = pipe.text_encoder.get_input_embeddings().weight if trains == "token table" else pipe.unet.conv_in.weight
    learning.requires_grad_(True)
    with torch.no_grad():
        learning += 1  # it learned
    read, kept = ("text_encoder", "unet") if trains == "token table" else ("unet", "text_encoder")
    base = borrowed_base(pipe, source)
    fresh = load_pipeline(source)
    assert not storages(getattr(base, read)) & storages(getattr(pipe, read))
    expected = getattr(fresh, read).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in getattr(base, read).state_dict().items())
    assert storages(getattr(base, kept)) <= storages(getattr(pipe, kept))
