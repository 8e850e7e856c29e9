"""Comparison metrics: DINO / CLIP-I / CLIP-T on tiny real models match a direct transformers computation;
offline metrics behave; face identity finds the astronaut and reports images without a face."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny_metric_models import write_tiny_clip, write_tiny_dino

from personae.config.compare import MetricSettings
from personae.evaluation.metrics import Diversity, PixelSimilarity, Sample, SSIMSimilarity, build_metrics


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def tiny_dino(tmp_path_factory):
    return write_tiny_dino(tmp_path_factory.mktemp("dino"))


def _images(n, seed):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)) for _ in range(n)]


def _samples(images, prompts):
    return [Sample(img, "v", p, i, 0, p) for i, (img, p) in enumerate(zip(images, prompts))]


def test_clip_and_dino_match_direct_transformers(tiny_clip, tiny_dino):
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel, ViTModel

    gens, refs = _images(3, 0), _images(2, 1)
    prompts = ["a photo of a dog", "a dog on the beach", "a painting of a dog"]
    metrics, skipped = build_metrics(MetricSettings(pixel=False, ssim=False, diversity=False, clip=str(tiny_clip),
                                                    dino=str(tiny_dino)))
    assert skipped == {} and [m.name for m in metrics] == ["dino", "clip_i", "clip_t"]
    ours = {m.name: m.score(_samples(gens, prompts), refs) for m in metrics}
    # the same cosine similarities, computed directly
    clip = CLIPModel.from_pretrained(tiny_clip).eval()
    proc = AutoImageProcessor.from_pretrained(tiny_clip)
    tok = AutoTokenizer.from_pretrained(tiny_clip)
    with torch.no_grad():
        g = clip.get_image_features(**proc(images=gens, return_tensors="pt")).pooler_output
        r = clip.get_image_features(**proc(images=refs, return_tensors="pt")).pooler_output
        t = clip.get_text_features(**tok(prompts, padding=True, return_tensors="pt")).pooler_output
        vit = ViTModel.from_pretrained(tiny_dino).eval()
        vproc = AutoImageProcessor.from_pretrained(tiny_dino)
        dg = vit(**vproc(images=gens, return_tensors="pt")).last_hidden_state[:, 0]
        dr = vit(**vproc(images=refs, return_tensors="pt")).last_hidden_state[:, 0]
    direct = {"clip_i": F.cosine_similarity(g[:, None], r[None], dim=-1).mean(1),
              "clip_t": F.cosine_similarity(g, t, dim=-1),
              "dino": F.cosine_similarity(dg[:, None], dr[None], dim=-1).mean(1)}
    for name, values in direct.items():
        np.testing.assert_allclose(ours[name], values.numpy(), atol=1e-5, err_msg=name)
        assert np.ptp(ours[name]) > 0  # distinct images get distinct scores


def test_hub_ids_offline_are_skipped_with_the_reason():
    metrics, skipped = build_metrics(MetricSettings(clip="openai/clip-vit-base-patch32", dino="facebook/dino-vits16"))
    assert [m.name for m in metrics] == ["pixel", "ssim", "diversity"]
    assert set(skipped) == {"dino", "clip_i", "clip_t"}
    assert "facebook/dino-vits16" in skipped["dino"] and "local folder" in skipped["dino"]
    _, skipped = build_metrics(MetricSettings(clip=None, dino=None), has_references=False)
    assert set(skipped) == {"pixel", "ssim"} and "references" in skipped["pixel"]


def test_offline_metrics():
    refs = _images(2, 1)
    same = PixelSimilarity().score(_samples([refs[1]], ["x"]), refs)
    assert same == [1.0]
    noisy = PixelSimilarity().score(_samples(_images(1, 5), ["x"]), refs)[0]
    assert 0.5 < noisy < 0.8  # two uniform noise images differ by about 1/3 on average
    assert SSIMSimilarity().score(_samples([refs[0]], ["x"]), refs) == [pytest.approx(1.0)]
    flat = [Image.new("RGB", (48, 48), (128, 128, 128))] * 2
    assert Diversity().score(_samples(flat, ["x", "x"]), []) == [None, None]  # different prompt indexes: no pairs
    grouped = [Sample(img, "v", "p", 0, seed) for seed, img in enumerate(flat + _images(1, 3))]
    scores = Diversity().score(grouped, [])
    assert scores[0] == scores[1] > 0 and scores[2] > scores[0]


def test_face_identity_on_the_astronaut():
    from skimage import data

    from personae.evaluation.face import FaceIdentity

    astronaut = Image.fromarray(data.astronaut())
    metric = FaceIdentity()
    mirrored = astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    scores = metric.score(_samples([mirrored, Image.fromarray(data.coffee()), Image.new("RGB", (256, 256), "gray")],
                                   ["a", "b", "c"]), [astronaut])
    assert scores[0] > 0.6  # the same person (dlib's same-person threshold is 0.4 in these units)
    assert scores[1] is None and scores[2] is None  # no face found: reported, not an error


def test_a_hub_id_already_in_the_cache_loads_offline(tiny_clip, tmp_path, monkeypatch):
    """Users download metric models once; afterwards the hub id works with no network (HF_HUB_OFFLINE is set here)."""
    import shutil

    import huggingface_hub.constants as hub

    shutil.copytree(tiny_clip, tmp_path / "models--tiny--clip/snapshots/abc123")
    (tmp_path / "models--tiny--clip/refs").mkdir()
    (tmp_path / "models--tiny--clip/refs/main").write_text("abc123")
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    metrics, skipped = build_metrics(MetricSettings(pixel=False, ssim=False, diversity=False, clip="tiny/clip", dino=None))
    assert skipped == {} and [m.name for m in metrics] == ["clip_i", "clip_t"]
    gens = _images(2, 0)
    direct, _ = build_metrics(MetricSettings(pixel=False, ssim=False, diversity=False, clip=str(tiny_clip), dino=None))
    assert metrics[1].score(_samples(gens, ["a", "b"]), []) == direct[1].score(_samples(gens, ["a", "b"]), [])
