"""ControlNet 1.1's inpaint model as A1111's extension feeds it. "inpaint_global_harmonious": the picture with the part
its mask redraws at -1, fitted as the unit says, reaching the ControlNet as its hint; named as the extension names it
and read back from A1111's PNGs. "inpaint_only": that hint, the unit picture's latents kept outside its mask at every
model call and its pixels in the result; a unit's own mask (txt2img inpainting and outpainting, as A1111 users do it);
run as harmonious under img2img's own --mask."""

import numpy as np
import pytest
import torch
from PIL import Image

from personae.cli.main import main
from personae.config.generate import GenerateSettings
from personae.data.control import detect_control
from personae.data.control.inpaint import inpaint_hint
from personae.errors import UserError
from personae.inference.controlnet import controlnet_for
from personae.inference.inpaint_only import encoded, kept_prediction, latent_mask
from personae.inference.txt2img import txt2img
from personae.jobs.png_controls import unit_settings
from personae.media.controlnet_text import read_unit
from personae.media.png import read_png_text


@pytest.fixture(scope="module")
def controlnet(tiny_model, tmp_path_factory):
    from personae.models.controlnet import write_tiny_controlnet

    return write_tiny_controlnet(tmp_path_factory.mktemp("inpaint") / "cn", base=tiny_model[0], seed=0)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """A 64 x 64 photo, a 64 x 32 one, and a mask whose left half (columns 0-31) is redrawn."""
    root = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "photo.png")
    Image.fromarray(rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)).save(root / "wide.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[:, :32] = 255
    Image.fromarray(mask).save(root / "mask.png")
    return root


def _hint(session, settings) -> torch.Tensor:
    """The hint the ControlNet receives at its first call (the prompt's row)."""
    seen = []
    net = controlnet_for(session, settings.controls[0].model)
    hook = net.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["controlnet_cond"]) if not seen else None,
                                         with_kwargs=True)
    try:
        txt2img(settings, session)
    finally:
        hook.remove()
    return seen[0][-1]


def _settings(model, pictures, controlnet, image="photo.png", **kw):
    return GenerateSettings(**{"model": str(model), "prompt": "a cat", "steps": 3, "seed": 4, "width": 64, "height": 64,
                               "init_image": str(pictures / "photo.png"), "mask": str(pictures / "mask.png"),
                               "controls": [{"type": "inpaint", "image": str(pictures / image),
                                             "model": str(controlnet), **kw}]})


def test_the_hint_is_the_picture_with_the_masked_part_at_minus_one():
    picture = Image.fromarray(np.full((4, 4, 3), 51, np.uint8))
    mask = np.zeros((4, 4), np.uint8)
    mask[0, :] = 255
    mask[1, :] = 128  # above the extension's 0.5
    mask[2, :] = 127  # below it
    hint = inpaint_hint(picture, Image.fromarray(mask))
    assert (hint[:2] == -1).all() and np.allclose(hint[2:], 0.2)
    with pytest.raises(UserError, match="a PNG cannot hold"):
        detect_control("inpaint", picture)


def test_the_hint_reaches_the_controlnet_fitted_as_the_unit_says(tiny_model, tiny_session, pictures, controlnet):
    photo = np.asarray(Image.open(pictures / "photo.png"), dtype=np.float32) / 255
    hint = _hint(tiny_session, _settings(tiny_model[0], pictures, controlnet)).permute(1, 2, 0).numpy()
    assert (hint[:, :32] == -1).all() and np.allclose(hint[:, 32:], photo[:, 32:], atol=1e-6)
    # a 64 x 32 picture "Resize and Fill"ed into 64 x 64: the filled margins (16 rows above and below) redrawn too
    wide = _hint(tiny_session, _settings(tiny_model[0], pictures, controlnet, "wide.png",
                                         resize_mode="Resize and Fill")).permute(1, 2, 0).numpy()
    assert (wide[:16] == -1).all() and (wide[48:] == -1).all() and (wide[16:48, :32] == -1).all()
    assert (wide[16:48, 32:] >= 0).all()


def test_inpaint_units_need_a_mask_and_are_named_as_the_extension_names_them(tiny_model, pictures, controlnet,
                                                                             tmp_path, capsys):
    args = ["generate", "--model", str(tiny_model[0]), "--prompt", "a cat", "--steps", "3", "--width", "64",
            "--height", "64", "--seed", "4", "--control", f"inpaint:{pictures / 'photo.png'}", "--controlnet",
            f"inpaint={controlnet}", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "no-mask")]) == 2
    assert "no mask is given" in " ".join(capsys.readouterr().err.split()) and not (tmp_path / "no-mask").exists()
    assert main(args + ["--init-image", str(pictures / "photo.png"), "--mask", str(pictures / "mask.png"),
                        "--out", str(tmp_path / "a")]) == 0
    [made] = (tmp_path / "a").glob("*.png")
    assert 'ControlNet 0: "Module: inpaint_global_harmonious, Model: cn, Weight: 1' in read_png_text(made)["parameters"]
    assert main(["generate", "--from-png", str(made), "--quiet", "--out", str(tmp_path / "b")]) == 0
    [again] = (tmp_path / "b").glob("*.png")
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(made)))
    for module in ("inpaint_global_harmonious", "inpaint"):
        unit = unit_settings(read_unit(f"Module: {module}, Model: control_v11p_sd15_inpaint [ebff9138], Weight: 1"),
                             "x.png", "ControlNet 0")
        assert (unit["type"], unit["model"]) == ("inpaint", "lllyasviel/control_v11p_sd15_inpaint")
    assert "type" not in unit_settings(read_unit("Module: inpaint_only+lama, Model: x, Weight: 1"), "x.png",
                                       "ControlNet 0")
    assert main(["detect", "inpaint", str(pictures / "photo.png"), str(tmp_path / "m.png")]) == 2
    assert "a PNG cannot hold" in " ".join(capsys.readouterr().err.split())
    assert main(["detect", "inpaint_only", str(pictures / "photo.png"), str(tmp_path / "m.png")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "The inpaint_only map" in err and "--control-mask inpaint_only=MASK" in err
    assert not (tmp_path / "m.png").exists()


def test_a_clip_has_no_mask_for_an_inpaint_unit(pictures, controlnet):
    from personae.config.addons import ControlRef
    from personae.inference.animate_control import prepare_clip_controls

    unit = ControlRef(type="inpaint", image=str(pictures / "photo.png"), model=str(controlnet))
    with pytest.raises(UserError, match="a clip has no mask"):
        prepare_clip_controls([unit], 4)


# --- inpaint_only and a unit's own mask ---------------------------------------------------------------------------

def _only(model, pictures, controlnet, kind="inpaint_only", image="photo.png", **unit):
    return GenerateSettings(model=str(model), prompt="a cat", steps=4, seed=4, width=64, height=64,
                            sampler="Euler", controls=[{"type": kind, "image": str(pictures / image),
                                                        "model": str(controlnet), **unit}])


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_the_prediction_is_the_extensions():
    """The extension's arithmetic (scripts/hook.py) written out: x0 from the noise, the kept latents outside the
    mask, the noise again, mixed by the weight clamped to 0..1."""
    gen = torch.Generator().manual_seed(0)
    x_t, eps, kept = (torch.randn(2, 4, 8, 8, generator=gen) for _ in range(3))
    alphabar = torch.tensor([0.3, 0.7]).reshape(-1, 1, 1, 1)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1
    recip, recipm1 = (1 / alphabar).sqrt(), (1 / alphabar - 1).sqrt()
    x0 = (recip * x_t - recipm1 * eps) * mask + kept * (1 - mask)
    extension = (recip * x_t - x0) / recipm1
    assert torch.allclose(kept_prediction(eps, x_t, alphabar, kept, mask, 1.0), extension, atol=1e-5)
    assert torch.allclose(kept_prediction(eps, x_t, alphabar, kept, mask, 0.25), 0.25 * extension + 0.75 * eps,
                          atol=1e-5)
    assert torch.allclose(kept_prediction(eps, x_t, alphabar, kept, mask, 1.7), extension, atol=1e-5)
    # a v-prediction model: the v whose clean picture keeps the latents outside the mask
    a, b = alphabar.sqrt(), (1 - alphabar).sqrt()
    v = torch.randn(2, 4, 8, 8, generator=gen)
    new = kept_prediction(v, x_t, alphabar, kept, mask, 1.0, v_prediction=True)
    assert torch.allclose((a * x_t - b * new)[..., 4:], kept.expand(2, -1, -1, -1)[..., 4:], atol=1e-5)
    assert torch.allclose(new[..., :4], v[..., :4], atol=1e-5)
    # a zero-terminal-SNR model's first call (abar 0): an epsilon model's noise tells no clean picture; left as it is
    zero = torch.zeros(2, 1, 1, 1)
    assert torch.equal(kept_prediction(eps, x_t, zero, kept, mask, 1.0), eps)
    assert torch.isfinite(kept_prediction(v, x_t, zero, kept, mask, 1.0, v_prediction=True)).all()


def test_the_mask_reaches_the_latents_max_pooled_as_the_extension_pools_it():
    mask = np.zeros((64, 64), np.uint8)
    mask[:, :32] = 255
    pooled = latent_mask(Image.fromarray(mask), 8)
    assert pooled.shape == (1, 1, 8, 8)
    # a 10 x 10 window every 8 pixels, padded by 1: latent column 4 (pixels 31-40) sees the mask's last column
    assert pooled[0, 0, 0].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]


def test_txt2img_keeps_the_unit_picture_outside_its_mask(tiny_model, tiny_session, pictures, controlnet):
    settings = _only(tiny_model[0], pictures, controlnet, mask=str(pictures / "mask.png"))
    vae = tiny_session.pipe.vae
    decoded = []
    hook = vae.post_quant_conv.register_forward_pre_hook(lambda module, args: decoded.append(args[0].clone()))
    try:
        [only] = txt2img(settings, tiny_session)
    finally:
        hook.remove()
    photo = _pixels(pictures / "photo.png")
    drawn = np.asarray(only.image)
    # the pixels: the photo's wherever the dilated (3 px) and blurred (3 px) mask is 0, the model's inside the mask
    assert np.array_equal(drawn[:, 38:], photo[:, 38:])
    assert (drawn[:, :28] != photo[:, :28]).mean() > 0.9
    # the latents the picture is decoded from: the photo's encoding outside the pooled mask
    latents = decoded[0] * vae.config.scaling_factor
    kept = encoded(vae, Image.open(pictures / "photo.png"))
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    outside = latent_mask(Image.open(pictures / "mask.png"), factor)[0, 0, 0] == 0
    assert outside.any() and torch.allclose(latents[..., outside], kept[..., outside], atol=1e-4)
    assert not torch.allclose(latents[..., ~outside], kept[..., ~outside], atol=0.1)
    # inpaint_global_harmonious with the same mask keeps neither: it is the hint alone
    [harmonious] = txt2img(settings.model_copy(update={"controls": [
        settings.controls[0].model_copy(update={"type": "inpaint"})]}), tiny_session)
    assert (np.asarray(harmonious.image)[:, 38:] != photo[:, 38:]).mean() > 0.9
    assert 'ControlNet 0: "Module: inpaint_only, Model: cn, Weight: 1' in only.parameters


def test_a_unit_without_a_mask_outpaints_its_resize_and_fill_margin(tiny_model, tiny_session, pictures, controlnet):
    from personae.data.control.fit import fit_map

    settings = _only(tiny_model[0], pictures, controlnet, image="wide.png", resize_mode="Resize and Fill")
    settings = settings.model_copy(update={"hires_scale": 2.0, "hires_steps": 2, "hires_upscaler": "latent"})
    [outpainted] = txt2img(settings, tiny_session)
    drawn = np.asarray(outpainted.image)
    assert drawn.shape == (128, 128, 3)
    fitted = np.asarray(fit_map(Image.open(pictures / "wide.png"), (128, 128), "Resize and Fill"))
    # the 64 x 32 picture fills rows 32-95 of the redrawn 128 x 128; its rows away from the margins are kept
    assert np.array_equal(drawn[38:90], fitted[38:90])
    assert (drawn[:26] != fitted[:26]).mean() > 0.9 and (drawn[102:] != fitted[102:]).mean() > 0.9


def test_the_cli_reads_a_units_mask_and_reproduces_it_from_the_png(tiny_model, pictures, controlnet, tmp_path,
                                                                   capsys):
    args = ["generate", "--model", str(tiny_model[0]), "--prompt", "a cat", "--steps", "3", "--width", "64",
            "--height", "64", "--seed", "4", "--control", f"inpaint_only:{pictures / 'photo.png'}", "--controlnet",
            f"inpaint_only={controlnet}", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "no-mask")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "no mask is given" in err and "--control-mask inpaint_only=MASK" in err
    assert main(args + ["--control-mask", f"canny={pictures / 'mask.png'}", "--out", str(tmp_path / "c")]) == 2
    assert "a canny unit has no mask" in " ".join(capsys.readouterr().err.split())
    assert main(args + ["--control-mask", f"inpaint={pictures / 'mask.png'}", "--out", str(tmp_path / "c")]) == 2
    assert "no --control inpaint:... is given" in " ".join(capsys.readouterr().err.split())
    assert main(args + ["--control-mask", f"inpaint_only={tmp_path / 'gone.png'}", "--out", str(tmp_path / "c")]) == 2
    assert "gone.png does not exist" in " ".join(capsys.readouterr().err.split())  # before any model loads
    assert not (tmp_path / "no-mask").exists() and not (tmp_path / "c").exists()
    assert main(args + ["--control-mask", f"inpaint_only={pictures / 'mask.png'}", "--out", str(tmp_path / "a")]) == 0
    [made] = (tmp_path / "a").glob("*.png")
    assert np.array_equal(_pixels(made)[:, 38:], _pixels(pictures / "photo.png")[:, 38:])
    capsys.readouterr()
    assert main(["generate", "--from-png", str(made), "--out", str(tmp_path / "b")]) == 0
    assert f"control mask: {pictures / 'mask.png'}" in capsys.readouterr().err  # what the PNG makes us read, said
    [again] = (tmp_path / "b").glob("*.png")
    assert np.array_equal(_pixels(again), _pixels(made))
    # A1111's PNGs name it so
    unit = unit_settings(read_unit("Module: inpaint_only, Model: control_v11p_sd15_inpaint [ebff9138], Weight: 1"),
                         "x.png", "ControlNet 0")
    assert (unit["type"], unit["model"]) == ("inpaint_only", "lllyasviel/control_v11p_sd15_inpaint")


def test_a_mask_on_a_unit_that_has_none_is_an_error(tiny_model, tiny_session, pictures, controlnet):
    from personae.errors import UserError

    settings = _only(tiny_model[0], pictures, controlnet, kind="canny", mask=str(pictures / "mask.png"))
    with pytest.raises(UserError, match="only the inpaint and inpaint_only units have one"):
        txt2img(settings, tiny_session)


def test_under_img2imgs_own_mask_it_runs_as_harmonious(tiny_model, pictures, controlnet, tmp_path, capsys):
    assert main(["generate", "--model", str(tiny_model[0]), "--prompt", "a cat", "--steps", "3", "--seed", "4",
                 "--init-image", str(pictures / "photo.png"), "--mask", str(pictures / "mask.png"),
                 "--control", f"inpaint_only:{pictures / 'photo.png'}", "--controlnet", f"inpaint_only={controlnet}",
                 "--out", str(tmp_path / "a")]) == 0
    assert "runs as inpaint_global_harmonious" in " ".join(capsys.readouterr().err.split())
    [made] = (tmp_path / "a").glob("*.png")
    assert 'ControlNet 0: "Module: inpaint_global_harmonious, Model: cn' in read_png_text(made)["parameters"]


def test_a_comparison_suite_reads_a_units_mask_beside_it(pictures, tmp_path):
    import shutil

    import yaml

    from personae.jobs.compare_plan import load_suite

    for name in ("photo.png", "mask.png"):
        shutil.copy(pictures / name, tmp_path / name)
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump({
        "base_model": "./tiny", "prompts": ["a cat"], "seeds": [0],
        "controls": [{"type": "inpaint_only", "image": "photo.png", "mask": "mask.png"}]}))
    [unit] = load_suite(tmp_path / "suite.yaml").controls
    assert (unit.image, unit.mask) == (str(tmp_path / "photo.png"), str(tmp_path / "mask.png"))


def test_a_callers_prepared_inpaint_only_unit_runs_as_harmonious_under_a_mask(tiny_model, tiny_session, pictures,
                                                                              controlnet):
    """A caller drawing many pictures with the same units (a comparison) hands txt2img their maps: under --mask an
    inpaint_only unit among them runs as inpaint_global_harmonious too, as the one txt2img prepares itself."""
    from personae.inference.controlnet import prepare_controls

    only = _only(tiny_model[0], pictures, controlnet).model_copy(update={
        "init_image": str(pictures / "photo.png"), "mask": str(pictures / "mask.png"), "strength": 0.75})
    [handed] = txt2img(only, tiny_session, controls=prepare_controls(only.controls))
    harmonious = only.model_copy(update={"controls": [only.controls[0].model_copy(update={"type": "inpaint"})]})
    [own] = txt2img(harmonious, tiny_session)
    assert np.array_equal(np.asarray(handed.image), np.asarray(own.image))
    assert handed.parameters == own.parameters
