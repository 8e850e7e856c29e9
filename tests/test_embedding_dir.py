"""--embeddings-dir (models/embedding_dir.py): embeddings used by writing their name, as A1111's embeddings folder;
an A1111 PNG whose negative prompt names one reproduces with the folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from personae.config.generate import GenerateSettings
from personae.errors import UserError
from personae.models.embedding_dir import embedding_files, expand_embedding_names, named_in


@pytest.fixture
def folder(tmp_path):
    """An A1111 webui folder: embeddings/ with two tensor files (one in a subfolder) and a preview picture."""
    from PIL import Image

    root = tmp_path / "webui"
    (root / "embeddings" / "neg").mkdir(parents=True)
    torch.manual_seed(0)
    save_file({"emb_params": torch.randn(2, 32) * 3}, str(root / "embeddings" / "EasyNegative.safetensors"))
    save_file({"emb_params": torch.randn(1, 32) * 3}, str(root / "embeddings" / "neg" / "bad-hands-5.safetensors"))
    save_file({"emb_params": torch.randn(1, 32) * 3}, str(root / "embeddings" / "bad.safetensors"))
    Image.new("RGB", (8, 8)).save(root / "embeddings" / "EasyNegative.preview.png")
    return root


def _settings(model, **kw) -> GenerateSettings:
    return GenerateSettings(**{"model": str(model), "prompt": "a photo of a cat", "steps": 4, "seed": 5,
                               "width": 64, "height": 64, **kw})


def test_names_are_found_as_words_of_their_own_in_any_case(folder):
    files = embedding_files(folder)  # the webui folder: its embeddings/, subfolders included, no preview picture
    assert set(files) == {"EasyNegative", "bad-hands-5", "bad"}
    assert named_in(["lowres, (easynegative:1.2), bad-hands-5"], list(files)) == {
        "EasyNegative": "easynegative", "bad-hands-5": "bad-hands-5"}  # not "bad" inside "bad-hands-5"
    assert named_in(["a badge, EasyNegatives"], list(files)) == {}
    with pytest.raises(UserError, match="--embeddings-dir"):
        embedding_files(folder / "nowhere")


def test_the_named_embeddings_join_the_run_and_change_the_picture(tiny_model, folder):
    from personae.inference.txt2img import txt2img

    named = _settings(tiny_model[0], negative="lowres, easynegative", embeddings_dir=str(folder))
    expanded = expand_embedding_names(named)
    assert [(e.token, e.path.endswith("EasyNegative.safetensors")) for e in expanded.embeddings] == [
        ("easynegative", True)]
    assert expand_embedding_names(expanded).embeddings == expanded.embeddings  # given once: not added again
    with_it = txt2img(named)[0]
    without = txt2img(named.model_copy(update={"embeddings_dir": None}))[0]
    by_hand = txt2img(GenerateSettings(**{**named.model_dump(), "embeddings_dir": None, "embeddings": [
        {"path": str(folder / "embeddings" / "EasyNegative.safetensors"), "token": "easynegative"}]}))[0]
    assert np.array_equal(np.asarray(with_it.image), np.asarray(by_hand.image))
    assert np.abs(np.asarray(with_it.image, np.int16) - np.asarray(without.image, np.int16)).max() > 4
    assert 'TI hashes: "easynegative: ' in with_it.parameters
    assert with_it.settings.embeddings[0].token == "easynegative"  # the PNG's own settings reproduce it alone


def test_an_a1111_png_naming_an_embedding_reproduces_with_the_folder(tiny_model, folder, tmp_path):
    from PIL import Image

    from personae.jobs.generate import png_not_applied, run_generate, settings_from_png
    from personae.media.png import save_png

    a1111 = ("a photo of a cat\nNegative prompt: EasyNegative, bad-hands-5\nSteps: 4, Sampler: Euler a, CFG scale: 7, "
             'Seed: 5, Size: 64x64, TI hashes: "EasyNegative: 0123456789ab, bad-hands-5: 0123456789ab", '
             "Version: v1.10.1")
    png = save_png(Image.new("RGB", (64, 64)), tmp_path / "a1111.png", a1111)
    data = settings_from_png(png)
    run = GenerateSettings(**{**data, "model": str(tiny_model[0]), "embeddings_dir": str(folder)})
    made = run_generate(run, tmp_path / "out")
    assert len(made) == 1
    tokens = {e.token for e in expand_embedding_names(run).embeddings}
    assert tokens == {"EasyNegative", "bad-hands-5"}
    assert not [m for m in png_not_applied(png, run) if m.startswith("TI hashes")]
    lost = png_not_applied(png, run.model_copy(update={"embeddings_dir": None}))
    assert [m for m in lost if m.startswith("TI hashes EasyNegative, bad-hands-5 (pass --embeddings-dir")]
