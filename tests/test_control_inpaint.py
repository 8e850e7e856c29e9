"""ControlNet 1.1's inpaint model as A1111's extension feeds it ("inpaint_global_harmonious"): the picture with the
part --mask redraws at -1, fitted as the unit says, reaching the ControlNet as its hint; named as the extension names
it and read back from A1111's PNGs."""

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


def test_a_clip_has_no_mask_for_an_inpaint_unit(pictures, controlnet):
    from personae.config.addons import ControlRef
    from personae.inference.animate_control import prepare_clip_controls

    unit = ControlRef(type="inpaint", image=str(pictures / "photo.png"), model=str(controlnet))
    with pytest.raises(UserError, match="a clip has no mask"):
        prepare_clip_controls([unit], 4)
