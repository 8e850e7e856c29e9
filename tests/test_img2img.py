"""img2img and inpainting through `generate` (issue #5, must-show 1; ControlNet and motion are not built yet)."""

import numpy as np
import pytest
from PIL import Image

from personae.config.generate import GenerateSettings
from personae.data.samples import BACKGROUNDS, draw_star
from personae.inference.img2img import vae_roundtrip
from personae.inference.txt2img import txt2img

pytestmark = pytest.mark.slow  # models, training or CLI subprocesses: the full tier only


def _px(image):
    return np.asarray(image, dtype=np.int16)


def _settings(model, init, **kw):
    return GenerateSettings(**{"model": str(model), "prompt": "a photo of a star", "steps": 6, "seed": 3,
                               "init_image": str(init), **kw})


def test_strength_0_keeps_the_image_and_strength_1_redraws_it(tmp_path, tiny_model, tiny_session):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    draw_star(64, BACKGROUNDS["blue"], 0.7, (0, 0)).save(a)
    Image.new("RGB", (64, 64), (250, 250, 250)).save(b)
    kept = txt2img(_settings(tiny_model[0], a, strength=0.0), tiny_session)[0]
    assert np.abs(_px(kept.image) - _px(vae_roundtrip(tiny_session.pipe, Image.open(a).convert("RGB")))).max() <= 1
    assert "Denoising strength: 0" in kept.parameters

    def spread(strength):  # how much the result still depends on the init image
        out = [txt2img(_settings(tiny_model[0], p, strength=strength), tiny_session)[0].image for p in (a, b)]
        return np.abs(_px(out[0]) - _px(out[1])).mean()

    half, full = spread(0.5), spread(1.0)
    print(f"difference between results for two init images: strength 0.5 {half:.2f}, strength 1 {full:.2f}")
    assert full < 0.25 * half


def test_inpainting_redraws_only_the_white_part(tmp_path, tiny_model, tiny_session):
    init = tmp_path / "init.png"
    draw_star(64, BACKGROUNDS["green"], 0.6, (0, 0)).save(init)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # redraw the left half
    mask.save(tmp_path / "mask.png")
    out = txt2img(_settings(tiny_model[0], init, strength=1.0, mask=str(tmp_path / "mask.png"), mask_blur=2),
                  tiny_session)[0]
    original, result = _px(Image.open(init).convert("RGB")), _px(out.image)
    assert np.abs(result[:, 40:] - original[:, 40:]).max() <= 1  # kept (away from the feathered edge)
    assert np.abs(result[:, :24] - original[:, :24]).mean() > 10  # redrawn
    assert "Mask blur: 2" in out.parameters


def test_only_masked_draws_the_region_alone_at_the_full_size_and_pastes_it_back(tmp_path, tiny_model, tiny_session):
    """A1111's "Inpaint area: Only masked": the mask's box and its padding, grown to the drawing size's aspect
    ratio inside the picture, drawn at --width x --height and pasted back; the picture keeps its own size."""
    from personae.inference.img2img import crop_region, fit_region
    from personae.jobs.generate import settings_from_png
    from personae.media.png import parse_parameters, save_png

    mask = Image.new("L", (512, 512), 0)
    mask.paste(255, (100, 200, 228, 232))  # A1111's example: a 128 x 32 region drawn at 512 x 512 becomes 128 x 128
    assert crop_region(mask, 0) == (100, 200, 228, 232) and crop_region(mask, 8) == (92, 192, 236, 240)
    assert fit_region((100, 200, 228, 232), 512, 512, (512, 512)) == (100, 152, 228, 280)
    assert fit_region((0, 0, 128, 32), 512, 512, (512, 512)) == (0, 0, 128, 128)  # shifted inside the picture
    assert fit_region((500, 0, 512, 400), 512, 512, (512, 512)) == (112, 0, 512, 400)  # tall: widened to the left
    assert crop_region(Image.new("L", (8, 8), 0), 4) is None
    init, square = tmp_path / "init.png", tmp_path / "mask.png"
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 96, 3), dtype=np.uint8))
    picture.save(init)
    m = Image.new("L", (96, 80), 0)
    m.paste(255, (60, 20, 76, 36))  # 16 x 16
    m.save(square)
    s = _settings(tiny_model[0], init, strength=0.9, mask=str(square), mask_blur=0, inpaint_area="masked",
                  masked_padding=8, width=64, height=64)
    out = txt2img(s, tiny_session)[0]
    result, original = _px(out.image), _px(picture)
    assert out.image.size == (96, 80)  # the picture's own size, not the drawing size
    outside = np.asarray(m) == 0
    assert np.array_equal(result[outside], original[outside])  # untouched outside the mask
    assert np.abs(result[20:36, 60:76] - original[20:36, 60:76]).mean() > 10  # the region redrawn
    whole = txt2img(s.model_copy(update={"inpaint_area": "whole"}), tiny_session)[0]
    assert whole.image.size == (64, 64)
    params = parse_parameters(out.parameters)[2]
    assert (params["Inpaint area"], params["Masked area padding"]) == ("Only masked", "8")
    save_png(out.image, tmp_path / "a1111.png", out.parameters)
    data = settings_from_png(tmp_path / "a1111.png")
    assert (data["inpaint_area"], data["masked_padding"]) == ("masked", 8)
    blank = tmp_path / "blank.png"
    Image.new("L", (96, 80), 0).save(blank)
    events = []
    kept = txt2img(s.model_copy(update={"mask": str(blank)}), tiny_session, on_event=events.append)[0]
    assert kept.image.size == (64, 64) and any("mask is blank" in getattr(e, "text", "") for e in events)
    from personae.errors import UserError

    with pytest.raises(UserError, match="no --mask is given"):
        txt2img(s.model_copy(update={"mask": None}), tiny_session)
