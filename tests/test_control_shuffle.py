"""ControlNet 1.1's shuffle model as A1111's ControlNet extension runs it: the "shuffle" preprocessor (a random warp
of the photo, drawn from the picture's seed) and global average pooling for a ControlNet file with "shuffle" in its
name (its control averaged over the picture, the negative prompt's rows given none), unit by unit."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from personae.cli.main import main
from personae.config.generate import GenerateSettings
from personae.data.control import detect_control
from personae.data.control.fit import processor_input
from personae.data.control.shuffle import content_shuffle, numpy_seed
from personae.inference.controlnet import make_map, prepare_controls
from personae.inference.txt2img import txt2img
from personae.jobs.generate import settings_from_png
from personae.media.png import read_png_text
from personae.models.controlnet import load_controlnet, resolve_controlnet


def _coordinates(width: int, height: int) -> Image.Image:
    """A picture whose red is its column and green its row (0..255), so a warp of it shows where it read from."""
    yy, xx = np.mgrid[0:height, 0:width]
    return Image.fromarray(np.stack([xx * 255 // (width - 1), yy * 255 // (height - 1), np.zeros_like(xx)],
                                    axis=2).astype(np.uint8))


@pytest.fixture(scope="module")
def controlnets(tiny_model, tmp_path_factory):
    """(the tiny ControlNet as one file, the same file named as ControlNet 1.1's shuffle model)."""
    from personae.models.controlnet import write_tiny_controlnet

    root = tmp_path_factory.mktemp("shuffle")
    write_tiny_controlnet(root / "folder", base=tiny_model[0], seed=0, single_file=root / "tiny_controlnet.safetensors")
    shutil.copy(root / "tiny_controlnet.safetensors", root / "control_v11e_sd15_shuffle.safetensors")
    return root / "tiny_controlnet.safetensors", root / "control_v11e_sd15_shuffle.safetensors"


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    _coordinates(150, 100).save(path)
    return path


def _settings(model, **kw):
    return GenerateSettings(**{"model": str(model), "prompt": "a photo of a cat", "steps": 3, "seed": 7,
                               "width": 64, "height": 64, **kw})


def test_the_shuffle_map_is_a_smooth_warp_of_the_photo_drawn_from_the_seed():
    """Every pixel is read from a place the two noise fields give; the fields span the whole picture and change
    slowly (one random number per 256 px); the same numpy seed draws the same map, another seed another one,
    whatever numpy's global generator holds. The seed is the extension's: seed + variation seed, the seed twice
    when there is none."""
    picture = _coordinates(420, 300)
    np.random.seed(1)
    warp = np.asarray(detect_control("shuffle", picture, seed=14)).astype(int)
    assert warp.shape == (300, 420, 3) and (warp[..., 2] == 0).all()  # every colour is the photo's own
    for channel in (0, 1):  # read from the first to the last column (row) somewhere, never jumping
        assert warp[..., channel].min() == 0 and warp[..., channel].max() == 255
        assert np.abs(np.diff(warp[..., channel], axis=0)).max() <= 3
        assert np.abs(np.diff(warp[..., channel], axis=1)).max() <= 3
    np.random.seed(2)
    assert np.array_equal(np.asarray(detect_control("shuffle", picture, seed=14)).astype(int), warp)
    assert (np.asarray(detect_control("shuffle", picture, seed=15)).astype(int) != warp).mean() > 0.5
    assert (numpy_seed(7), numpy_seed(7, 5), numpy_seed(2**32 + 3)) == (14, 12, 6)


def test_the_map_is_drawn_from_the_scaled_photo_without_padding_and_from_the_pictures_seed(photo, controlnets):
    """The extension scales the photo to Processor Res and cuts the padding off before shuffling (the padded
    picture would give another warp); a picture's units draw with numpy seed seed + seed, and a unit made for one
    seed is drawn again for another, an unseeded map is not."""
    from personae.config.addons import ControlRef

    ref = ControlRef(type="shuffle", image=str(photo), model=str(controlnets[1]), processor_res=100)
    padded, unpad = processor_input(Image.open(photo), 100)
    assert padded.shape[:2] == (128, 192)  # 150 x 100 is padded to multiples of 64 for the other preprocessors
    made = make_map(ref, Image.open(photo), 100, seed=14)
    assert made.size == (150, 100)
    assert np.array_equal(np.asarray(made), np.asarray(content_shuffle(Image.fromarray(unpad(padded)), {}, "", 14)))
    [unit] = prepare_controls([ref], seed=numpy_seed(7))
    assert np.array_equal(np.asarray(unit.map), np.asarray(made))
    again = unit.for_seed(numpy_seed(8))
    assert again.seed == 16 and not np.array_equal(np.asarray(again.map), np.asarray(made))
    assert unit.for_seed(14) is unit
    [canny] = prepare_controls([ControlRef(type="canny", image=str(photo), model=str(controlnets[0]))], seed=14)
    assert canny.for_seed(16) is canny


def _residuals(tiny_session, settings):
    """The ControlNet residuals the first UNet call receives (rows: negative prompt, prompt)."""
    seen = []
    hook = tiny_session.pipe.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs) if not seen else None, with_kwargs=True)
    try:
        txt2img(settings, tiny_session)
    finally:
        hook.remove()
    return [*seen[0]["down_block_additional_residuals"], seen[0]["mid_block_additional_residual"]]


def test_a_shuffle_file_averages_its_control_over_the_picture_and_gives_the_negative_prompt_none(
        tiny_model, tiny_session, photo, controlnets):
    """The same weights under ControlNet 1.1's shuffle file name: each residual on the prompt's row is the plain
    file's averaged over the picture (as diffusers' own ControlNet computes it when its config says
    global_pool_conditions), the negative prompt's row has none. diffusers' config says so after loading, so the
    file converts to a folder that keeps it."""
    plain, shuffle = controlnets
    assert load_controlnet(resolve_controlnet(str(shuffle))).config.global_pool_conditions is True
    assert load_controlnet(resolve_controlnet(str(plain))).config.global_pool_conditions is False

    def unit(path):
        return _settings(tiny_model[0], controls=[{"type": "shuffle", "image": str(photo), "model": str(path),
                                                   "weight": 0.8}])

    spread, pooled = _residuals(tiny_session, unit(plain)), _residuals(tiny_session, unit(shuffle))
    assert all(r.shape[0] == 2 for r in pooled) and pooled[0].shape[-2:] == (8, 8)  # 64 px: 8 x 8 latents
    for s, p in zip(spread, pooled):
        assert s[1].abs().max() > 0 and (p[0] == 0).all()
        assert torch.allclose(p[1], s[1].mean(dim=(1, 2), keepdim=True).expand_as(s[1]), atol=1e-6)

    # diffusers' own pooling: the pooled ControlNet in guess mode (the prompt's row alone) on the same inputs
    calls = []
    net = load_controlnet(resolve_controlnet(str(shuffle)))
    from personae.inference.controlnet import controlnet_for

    session_net = controlnet_for(tiny_session, str(shuffle))
    hook = session_net.register_forward_pre_hook(lambda m, a, kw: calls.append((a, kw)) if not calls else None,
                                                 with_kwargs=True)
    try:
        txt2img(unit(shuffle), tiny_session)
    finally:
        hook.remove()
    (sample, timestep), kw = calls[0]
    with torch.no_grad():
        down, mid = net(sample[1:], timestep, encoder_hidden_states=kw["encoder_hidden_states"][1:],
                        controlnet_cond=kw["controlnet_cond"][1:], conditioning_scale=kw["conditioning_scale"],
                        guess_mode=True, return_dict=False)
    for theirs, ours in zip([*down, mid], pooled):
        assert torch.allclose(theirs[0].expand_as(ours[1]), ours[1], atol=1e-5)


def test_a_shuffle_unit_leaves_the_other_units_of_a_multi_controlnet_as_they_are(tiny_model, tiny_session, photo,
                                                                                  controlnets):
    """diffusers would put the whole pipeline into guess mode for a pooled first ControlNet (every unit on the
    prompt's rows, the others scaled down layer by layer); here the units' residuals add up as each gives them
    alone."""
    plain, shuffle = controlnets
    shuffled = {"type": "shuffle", "image": str(photo), "model": str(shuffle), "weight": 0.8}
    edges = {"type": "canny", "image": str(photo), "model": str(plain), "weight": 0.6}
    both = _residuals(tiny_session, _settings(tiny_model[0], controls=[shuffled, edges]))
    alone = [_residuals(tiny_session, _settings(tiny_model[0], controls=[u])) for u in (shuffled, edges)]
    assert alone[1][0][0].abs().max() > 0  # the canny unit controls the negative prompt's row too
    for b, s, e in zip(both, *alone):
        assert torch.allclose(b, s + e, atol=1e-5)


def test_detect_and_generate_draw_the_shuffle_map_from_the_seed_and_a_png_draws_again(tiny_model, photo, controlnets,
                                                                                      tmp_path, capsys):
    plain, shuffle = controlnets
    out = tmp_path / "shuffled.png"
    assert main(["detect", "shuffle", str(photo), str(out), "--seed", "7"]) == 0
    expected = content_shuffle(Image.open(photo), {}, "", numpy_seed(7))
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), np.asarray(expected))
    assert "Seed: 7" in read_png_text(out)["parameters"]
    assert main(["detect", "canny", str(photo), str(tmp_path / "c.png"), "--seed", "7"]) == 2
    assert "the canny map is not random" in capsys.readouterr().err and not (tmp_path / "c.png").exists()

    args = ["generate", "--model", str(tiny_model[0]), "--prompt", "a cat", "--steps", "3", "--width", "64",
            "--height", "64", "--control", f"shuffle:{photo}", "--controlnet", f"shuffle={shuffle}", "--quiet"]
    assert main(args + ["--seed", "7", "--out", str(tmp_path / "a")]) == 0
    [made] = (tmp_path / "a").glob("*.png")
    text = read_png_text(made)["parameters"]
    assert "Module: shuffle, Model: control_v11e_sd15_shuffle [" in text
    assert settings_from_png(made)["controls"][0]["type"] == "shuffle"
    assert main(["generate", "--from-png", str(made), "--model", str(tiny_model[0]), "--control", f"shuffle:{photo}",
                 "--controlnet", f"shuffle={shuffle}", "--quiet", "--out", str(tmp_path / "again")]) == 0
    [again] = (tmp_path / "again").glob("*.png")
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(made)))


def test_a_comfyui_graph_with_a_shuffle_controlnet_says_how_its_negative_prompt_differs(tmp_path):
    from test_comfy_png import controlnet_graph, not_applied

    notes = not_applied(tmp_path, controlnet_graph(name="control_v11e_sd15_shuffle.pth"))
    assert "applies a shuffle ControlNet (its control averaged over the picture) to the negative prompt too" in notes
    assert "shuffle" not in not_applied(tmp_path, controlnet_graph())


def test_a_comparison_shows_the_shuffle_map_of_its_first_seed(photo, controlnets):
    from personae.config.compare import CompareSuite
    from personae.jobs.compare_controls import prepare_suite_controls

    unit = {"type": "shuffle", "image": str(photo), "model": str(controlnets[1])}
    suite = CompareSuite(base_model="m", seeds=[5, 6], controls=[unit])
    [prepared] = prepare_suite_controls(suite).values()
    [expected] = prepare_controls(suite.controls, seed=numpy_seed(5))
    assert prepared.seed == 10 and np.array_equal(np.asarray(prepared.map), np.asarray(expected.map))
