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


def _gaussian_rows(pixels: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    """A Gaussian of `sigma` along `axis` over A1111's 2 x int(2.5 sigma + 0.5) + 1 taps, the border mirrored without
    repeating the edge pixel (OpenCV's default), written out here as the reference."""
    half = int(2.5 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    taps /= taps.sum()
    padded = np.pad(pixels.astype(np.float64), [(half, half) if a == axis else (0, 0) for a in range(2)],
                    mode="reflect")
    out = np.zeros(pixels.shape)
    for i, w in enumerate(taps):
        out += w * np.take(padded, range(i, i + pixels.shape[axis]), axis=axis)
    return out


def test_mask_blur_masks_and_overlay_are_a1111s(tmp_path):
    """A1111's inpainting mask: "Mask blur" is a Gaussian of sigma = blur across then down (OpenCV, its kernel size),
    at the mask's own size before the resize; a picture with transparency is its alpha channel (> 128); "Inpaint not
    masked" inverts; inpainting the whole picture keeps the original where the doubled mask is black."""
    from personae.inference.img2img import composite, feather, load_mask, overlay_mask

    square = np.zeros((48, 40), np.uint8)
    square[10:30, 12:28] = 255
    for blur in (1, 4, 7):
        ours = np.asarray(feather(Image.fromarray(square), blur), dtype=np.float64)
        across = np.clip(np.round(_gaussian_rows(square, blur, 1)), 0, 255)
        reference = _gaussian_rows(across, blur, 0)
        assert np.abs(ours - reference).max() <= 2.0, blur  # PIL's blur: 2.5-11.7 off; OpenCV's own size: 3.9
        assert 0 < ours[10, 20] < ours[20, 20] and (blur > 1 or (ours[20, 20] == 255 and ours[0, 0] == 0))
    Image.fromarray(square).save(tmp_path / "m.png")
    big = Image.fromarray(square).resize((80, 96), Image.Resampling.NEAREST)
    big.save(tmp_path / "big.png")
    loaded = load_mask(str(tmp_path / "big.png"), (40, 48), 4)  # feathered at 80 x 96, then resized
    assert loaded.size == (40, 48)
    assert np.abs(np.asarray(loaded, np.int16) - np.asarray(feather(big, 4).resize((40, 48), Image.Resampling.LANCZOS),
                                                            np.int16)).max() == 0
    assert np.abs(np.asarray(loaded, np.int16) - np.asarray(feather(Image.fromarray(square), 4), np.int16)).max() > 8
    inverted = np.asarray(load_mask(str(tmp_path / "m.png"), (40, 48), 0, invert=True))
    assert inverted[20, 20] == 0 and inverted[0, 0] == 255
    rgba = np.zeros((48, 40, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere: only the alpha says where
    rgba[10:30, 12:28, 3] = 200
    rgba[30:34, 12:28, 3] = 100  # painted faintly: not part of the mask (A1111 rounds at 128)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "painted.png")
    assert np.array_equal(np.asarray(load_mask(str(tmp_path / "painted.png"), (40, 48), 0)), square)
    opaque = rgba.copy()
    opaque[..., 3] = 255
    opaque[10:30, 12:28, :3] = 0
    Image.fromarray(opaque, "RGBA").save(tmp_path / "opaque.png")  # no transparency: its grey levels
    assert np.array_equal(np.asarray(load_mask(str(tmp_path / "opaque.png"), (40, 48), 0)), 255 - square)
    levels = Image.fromarray(np.tile(np.arange(0, 256, 4, dtype=np.uint8), (4, 1)))
    original, drawn = Image.new("RGB", levels.size, (0, 0, 0)), Image.new("RGB", levels.size, (200, 200, 200))
    mixed = _px(composite(original, drawn, overlay_mask(levels)))[0, :, 0]
    expected = np.minimum(2 * np.arange(0, 256, 4), 255) / 255 * 200
    assert np.abs(mixed - expected).max() <= 1  # the redrawn part at full strength from the feather's middle on


def test_masked_content_fill_paints_the_mask_with_the_colours_around_it():
    from personae.inference.img2img import fill_masked

    picture = np.zeros((64, 64, 3), np.uint8)
    picture[:, :32] = (200, 40, 40)  # red left, blue right, a white square over the seam
    picture[:, 32:] = (40, 40, 200)
    picture[20:44, 20:44] = 255
    mask = np.zeros((64, 64), np.uint8)
    mask[20:44, 20:44] = 255
    filled = _px(fill_masked(Image.fromarray(picture), Image.fromarray(mask)))
    assert np.array_equal(filled[mask == 0], picture[mask == 0])  # the rest kept
    inside = filled[22:42, 22:42]
    assert inside.max() < 215 and inside[..., 1].max() < 60  # no white left: red and blue around it
    assert inside[:, 0, 0].mean() > inside[:, 0, 2].mean() + 40  # reddish on the red side
    assert inside[:, -1, 2].mean() > inside[:, -1, 0].mean() + 40  # bluish on the blue side


def test_masked_content_and_mask_mode_draw_and_are_written_and_read_as_a1111s(tmp_path, tiny_model, tiny_session):
    """"Masked content" changes only what the redrawn part starts from, with a k-diffusion sampler and with a
    diffusers one (DDIM); "Inpaint not masked" keeps the white part. Both are written as A1111 writes them (only when
    not the default) and read back from the PNG."""
    from personae.jobs.generate import png_not_applied, settings_from_png
    from personae.media.png import parse_parameters, save_png

    init = tmp_path / "init.png"
    draw_star(64, BACKGROUNDS["green"], 0.6, (0, 0)).save(init)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # the left half
    mask.save(tmp_path / "mask.png")
    original = _px(Image.open(init).convert("RGB"))
    for sampler in ("Euler a", "DDIM"):
        runs = {content: txt2img(_settings(tiny_model[0], init, strength=0.6, mask=str(tmp_path / "mask.png"),
                                           mask_blur=2, sampler=sampler, masked_content=content), tiny_session)[0]
                for content in ("original", "fill", "latent noise", "latent nothing")}
        base = _px(runs["original"].image)
        for content, out in runs.items():
            result = _px(out.image)
            assert np.abs(result[:, 40:] - original[:, 40:]).max() <= 1, (sampler, content)  # the rest kept
            if content != "original":
                assert np.abs(result[:, :24] - base[:, :24]).mean() > 3, (sampler, content)  # another start
                assert parse_parameters(out.parameters)[2]["Masked content"] == content
            else:
                assert "Masked content" not in out.parameters
    inverted = txt2img(_settings(tiny_model[0], init, strength=1.0, mask=str(tmp_path / "mask.png"), mask_blur=2,
                                 mask_invert=True, masked_content="latent nothing"), tiny_session)[0]
    result = _px(inverted.image)
    assert np.abs(result[:, :24] - original[:, :24]).max() <= 1  # the white half kept
    assert np.abs(result[:, 40:] - original[:, 40:]).mean() > 10  # the black half redrawn
    assert "Mask mode: Inpaint not masked" in inverted.parameters
    save_png(inverted.image, tmp_path / "a1111.png", inverted.parameters.replace("personae", "v1.10.1"))
    data = settings_from_png(tmp_path / "a1111.png")
    assert data["masked_content"] == "latent nothing" and data["mask_invert"] is True and data["mask_blur"] == 2
    unblurred = inverted.parameters.replace("personae", "v1.10.1").replace("Mask blur: 2, ", "")
    save_png(inverted.image, tmp_path / "unblurred.png", unblurred)  # A1111 leaves out a mask blur of 0
    assert settings_from_png(tmp_path / "unblurred.png")["mask_blur"] == 0
    strange = inverted.parameters.replace("latent nothing", "latent everything").replace("personae", "v1.10.1")
    save_png(inverted.image, tmp_path / "strange.png", strange)
    assert "masked_content" not in settings_from_png(tmp_path / "strange.png")
    said = png_not_applied(tmp_path / "strange.png", GenerateSettings(model=str(tiny_model[0]), prompt="x"))
    assert any("Masked content" in item for item in said)
    # a PNG does not carry its mask: without --mask its inpainting settings are named, not applied, and not an error
    from personae.errors import UserError
    from personae.jobs.generate import png_without_mask

    stored = settings_from_png(tmp_path / "a1111.png")
    read = GenerateSettings(**{**stored, "model": str(tiny_model[0]), "init_image": None})
    plain = png_without_mask(read, stored)
    assert (plain.masked_content, plain.mask_invert) == ("original", False)
    assert txt2img(plain.model_copy(update={"steps": 2}), tiny_session)[0].image.size == (64, 64)
    said = png_not_applied(tmp_path / "a1111.png", plain)
    assert 'Masked content "latent nothing" (no --mask)' in said
    assert 'Mask mode "Inpaint not masked" (no --mask)' in said
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "personae", "generate", "--model", str(tiny_model[0]), "--from-png",
                          str(tmp_path / "a1111.png"), "--steps", "2", "--out", str(tmp_path / "drawn")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and 'Masked content "latent nothing" (no --mask)' in run.stderr, run.stderr
    assert len(list((tmp_path / "drawn").glob("*.png"))) == 1
    with_mask = read.model_copy(update={"mask": str(tmp_path / "mask.png")})
    assert png_without_mask(with_mask, stored) is with_mask
    for wrong in ({"masked_content": "fill"}, {"mask_invert": True}):  # typed without --mask: said, before loading
        with pytest.raises(UserError, match="no --mask is given"):
            txt2img(GenerateSettings(model=str(tiny_model[0]), prompt="x", **wrong))


def _drawn_with_unet_inputs(session, settings):
    """txt2img's pictures for `settings`, and every input the UNet was called with (in order)."""
    seen = []
    hook = session.pipe.unet.register_forward_pre_hook(lambda mod, args, kw: seen.append(args[0]), with_kwargs=True)
    try:
        return txt2img(settings, session), seen
    finally:
        hook.remove()


def test_noise_multiplier_is_a1111s_and_written_only_when_not_1(tmp_path, tiny_model, tiny_session):
    """A1111's "Noise multiplier for img2img" scales the starting noise with every sampler (DDIM too; the k-diffusion
    oracle in test_ksampler checks the numbers): the UNet's first input moves in equal steps for equal steps of the
    multiplier. Written as "Noise multiplier" when not 1, read back by --from-png; txt2img never writes it."""
    import torch

    from personae.jobs.generate import settings_from_png
    from personae.media.png import parse_parameters, save_png

    init = tmp_path / "init.png"
    draw_star(64, BACKGROUNDS["blue"], 0.7, (0, 0)).save(init)
    for sampler in ("Euler a", "DDIM"):
        first, runs = {}, {}
        for m in (0.0, 0.5, 1.0):
            [runs[m]], seen = _drawn_with_unet_inputs(tiny_session, _settings(
                tiny_model[0], init, strength=0.8, sampler=sampler, noise_multiplier=m))
            first[m] = seen[0].double()
        step, again = first[0.5] - first[0.0], first[1.0] - first[0.5]
        assert step.abs().max() > 0.05 and torch.allclose(step, again, atol=1e-5), sampler
        assert "Noise multiplier" not in runs[1.0].parameters
        assert parse_parameters(runs[0.5].parameters)[2]["Noise multiplier"] == "0.5"
    save_png(runs[0.5].image, tmp_path / "a1111.png", runs[0.5].parameters.replace("personae", "v1.10.1"))
    assert settings_from_png(tmp_path / "a1111.png")["noise_multiplier"] == 0.5
    plain = txt2img(GenerateSettings(model=str(tiny_model[0]), prompt="a star", steps=2, noise_multiplier=0.5),
                    tiny_session)[0]
    assert "Noise multiplier" not in plain.parameters


def test_extra_noise_is_a1111s_at_every_start_and_in_the_hires_redraw(tmp_path, tiny_model, tiny_session):
    """A1111's "Extra noise": the starting noise added again x the extra, in the sampler's own scale (DDIM's start
    moves by extra x sqrt(alphabar) x noise: equal steps for equal steps of the extra; the k-diffusion oracle in
    test_ksampler checks Euler's numbers), at the start of every picture of a batch count, never in the steps after
    it; the hires fix's redraw starts so too. Written as "Extra noise" when not 0, read back from A1111's PNGs;
    txt2img without img2img or the hires fix has no start to add it to and says so."""
    import torch

    from personae.errors import UserError
    from personae.jobs.generate import settings_from_png
    from personae.media.png import parse_parameters, save_png

    init = tmp_path / "init.png"
    draw_star(64, BACKGROUNDS["blue"], 0.7, (0, 0)).save(init)
    first, runs = {}, {}
    for extra in (0.0, 0.2, 0.4):
        runs[extra], seen = _drawn_with_unet_inputs(tiny_session, _settings(
            tiny_model[0], init, strength=0.8, sampler="DDIM", extra_noise=extra, batch_count=2))
        first[extra] = seen[0].double()
    step, again = first[0.2] - first[0.0], first[0.4] - first[0.2]
    assert step.abs().max() > 0.05 and torch.allclose(step, again, atol=1e-5)
    # the second picture of the batch count starts with its extra noise as a run of its own seed does
    [alone] = txt2img(_settings(tiny_model[0], init, strength=0.8, sampler="DDIM", extra_noise=0.2, seed=4),
                      tiny_session)
    assert np.array_equal(np.asarray(runs[0.2][1].image), np.asarray(alone.image))
    assert "Extra noise" not in runs[0.0][0].parameters
    assert parse_parameters(runs[0.2][0].parameters)[2]["Extra noise"] == "0.2"
    save_png(runs[0.2][0].image, tmp_path / "a1111.png", runs[0.2][0].parameters.replace("personae", "v1.10.1"))
    assert settings_from_png(tmp_path / "a1111.png")["extra_noise"] == 0.2
    # the hires fix: the first pass as without it, the redraw's start moved
    hires = dict(model=str(tiny_model[0]), prompt="a star", steps=3, seed=2, width=64, height=64, hires_scale=1.5,
                 hires_steps=2, hires_upscaler="latent", sampler="Euler")
    inputs = {extra: _drawn_with_unet_inputs(tiny_session, GenerateSettings(**hires, extra_noise=extra))[1]
              for extra in (0.0, 0.3)}
    assert all(torch.equal(a, b) for a, b in zip(inputs[0.0][:3], inputs[0.3][:3]))  # the first pass: 3 calls
    assert inputs[0.0][3].shape[-1] == 12 and (inputs[0.0][3] - inputs[0.3][3]).abs().max() > 0.05
    with pytest.raises(UserError, match="this is txt2img without the hires fix"):
        txt2img(GenerateSettings(model=str(tiny_model[0]), prompt="a star", steps=2, extra_noise=0.2), tiny_session)


def _bands(size=(96, 64)):
    """Red, green and blue vertical thirds: where each mode puts which part of the picture is plain to see."""
    w, h = size
    bands = Image.new("RGB", size, (255, 0, 0))
    bands.paste((0, 255, 0), (w // 3, 0, 2 * w // 3, h))
    bands.paste((0, 0, 255), (2 * w // 3, 0, w, h))
    return bands


def test_resize_modes_are_a1111s():
    """A1111's img2img "Resize mode" on a 3:2 picture drawn square: Just resize squeezes all three bands in, Crop and
    resize keeps the middle one (scaled to cover, the overhang cut evenly), Resize and fill fits the whole picture
    in the middle and fills above and below with its first and last rows stretched; a tall picture fills at the
    sides. A picture already the size is untouched."""
    from personae.inference.img2img import a1111_resize

    bands = _bands()
    just = _px(a1111_resize(bands, (64, 64), "Just resize"))
    assert (just[:, 5] == (255, 0, 0)).all() and (just[:, 32] == (0, 255, 0)).all()
    assert (just[:, 58] == (0, 0, 255)).all()
    crop = _px(a1111_resize(bands, (64, 64), "Crop and resize"))  # 96x64 at its size, columns 16-80 kept
    assert (crop == _px(bands.crop((16, 0, 80, 64)))).all()
    fill = a1111_resize(bands, (64, 64), "Resize and fill")  # scaled to 64x42, pasted at y 11, 11 rows above/below
    scaled = _px(bands.resize((64, 42), Image.Resampling.LANCZOS))
    got = _px(fill)
    assert (got[11:53] == scaled).all()
    assert (got[:11] == scaled[0]).all() and (got[53:] == scaled[-1]).all()
    tall = _px(a1111_resize(bands.rotate(90, expand=True), (64, 64), "Resize and fill"))  # 64x96: bands at the sides
    assert (tall[:, :11] == tall[:, 11:12]).all() and (tall[:, 53:] == tall[:, 52:53]).all()
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    cut = np.asarray(a1111_resize(mask, (64, 64), "Crop and resize"))  # a mask is cut as its picture is, still "L"
    assert a1111_resize(mask, (64, 64), "Crop and resize").mode == "L" and cut[:, :16].min() == 255 \
        and cut[:, 16:].max() == 0
    assert a1111_resize(bands, (96, 64), "Resize and fill") is bands


def test_resize_mode_cuts_the_init_and_the_mask_alike(tmp_path, tiny_model, tiny_session):
    """--resize-mode "Crop and resize": at strength 0 the picture is the middle of the wide init as the VAE gives it
    back; inpainting keeps the cut picture outside the cut mask (the mask's white third is at the left edge)."""
    init, mask = tmp_path / "wide.png", tmp_path / "mask.png"
    _bands().save(init)
    white = Image.new("L", (96, 64), 0)
    white.paste(255, (0, 0, 40, 64))  # after the cut: columns 0-24 redrawn
    white.save(mask)
    middle = _bands().crop((16, 0, 80, 64))
    kept = txt2img(_settings(tiny_model[0], init, strength=0.0, width=64, height=64, resize_mode="Crop and resize"),
                   tiny_session)[0]
    assert kept.image.size == (64, 64)
    assert np.abs(_px(kept.image) - _px(vae_roundtrip(tiny_session.pipe, middle))).max() <= 1
    assert kept.settings.resize_mode == "Crop and resize"
    out = txt2img(_settings(tiny_model[0], init, strength=1.0, width=64, height=64, resize_mode="Crop and resize",
                            mask=str(mask), mask_blur=2), tiny_session)[0].image
    assert np.abs(_px(out)[:, 32:] - _px(middle)[:, 32:]).max() <= 1  # kept, away from the feathered edge
    assert np.abs(_px(out)[:, :16] - _px(middle)[:, :16]).mean() > 10  # redrawn


def test_latent_resize_stretches_the_latents(tmp_path, tiny_model, tiny_session):
    """"Just resize (latent upscale)": the init encoded at its own size, its latents stretched bilinearly. An init
    already the size gives exactly the pixels of Just resize (the generators advance as in diffusers' img2img); a
    wide one drawn at 64x32 at strength 0 is the VAE's decoding of its stretched latents."""
    import torch
    import torch.nn.functional as F

    square, wide = tmp_path / "square.png", tmp_path / "wide.png"
    draw_star(64, BACKGROUNDS["blue"], 0.7, (0, 0)).save(square)
    _bands().save(wide)
    for sampler in ("Euler a", "DDIM"):
        kw = dict(strength=0.6, sampler=sampler, batch_size=2)
        plain = txt2img(_settings(tiny_model[0], square, **kw), tiny_session)
        latent = txt2img(_settings(tiny_model[0], square, resize_mode="Just resize (latent upscale)", **kw),
                         tiny_session)
        assert [_px(a.image).tolist() == _px(b.image).tolist() for a, b in zip(plain, latent)] == [True, True]
    kept = txt2img(_settings(tiny_model[0], wide, strength=0.0, width=64, height=32,
                             resize_mode="Just resize (latent upscale)"), tiny_session)[0].image
    vae = tiny_session.pipe.vae
    with torch.no_grad():
        x = torch.from_numpy(_px(Image.open(wide)).astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        z = F.interpolate(vae.encode(x).latent_dist.mode(), size=(4, 8), mode="bilinear")
        by_hand = ((vae.decode(z).sample[0].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().numpy()
    assert kept.size == (64, 32) and np.abs(_px(kept) - by_hand).max() <= 1
    drawn = txt2img(_settings(tiny_model[0], wide, strength=0.5, width=64, height=32,
                              resize_mode="Just resize (latent upscale)"), tiny_session)[0].image
    assert drawn.size == (64, 32)


@pytest.mark.parametrize("extra, match", [
    ({"init_image": None}, "no --init-image"),
    ({"resize_mode": "Just resize (latent upscale)", "mask": "MASK"}, "resized as latents"),
    ({"inpaint_area": "masked", "mask": "MASK"}, "ignores its Resize mode"),
])
def test_resize_mode_refusals(tmp_path, tiny_model, extra, match):
    from personae.errors import UserError

    init, mask = tmp_path / "init.png", tmp_path / "mask.png"
    Image.new("RGB", (64, 64)).save(init)
    Image.new("L", (64, 64), 255).save(mask)
    extra = {k: str(mask) if v == "MASK" else v for k, v in extra.items()}
    settings = _settings(tiny_model[0], init, **{"resize_mode": "Crop and resize", **extra})
    with pytest.raises(UserError, match=match):
        txt2img(settings)


def test_only_masked_fits_a_region_clamped_at_the_edge_as_a1111():
    """A region that cannot grow to the drawing size's aspect ratio (the picture ends first) is fitted as A1111 fits
    it: cut out and "Resize and fill"ed to the drawing size (the gaps filled with its edge rows), then drawn, then put
    back by "Crop and resize", which cuts those filled rows away again."""
    from personae.inference.img2img import crop_region, cut_region, fit_region, paste_back

    ramp = np.linspace(0, 160, 64)[None, :] + np.linspace(0, 90, 32)[:, None]  # 64x32, brighter right and down
    picture = Image.fromarray(np.repeat(ramp[..., None], 3, axis=2).round().astype(np.uint8))
    mask = Image.new("L", (64, 32), 0)
    mask.paste(255, (2, 10, 62, 20))
    region = fit_region(crop_region(mask, 4), 32, 32, picture.size)
    assert region == (0, 0, 64, 32)  # wanted 64 rows; the picture has 32
    cut = _px(cut_region(picture, region, (32, 32)))  # 32x16 in the middle, 8 rows above and below filled
    assert (cut[:8] == cut[0]).all() and (cut[24:] == cut[31]).all()  # the edge rows stretched (PIL's resample of
    assert np.abs(cut[0] - cut[8]).max() <= 2 and np.abs(cut[31] - cut[23]).max() <= 2  # a zero-high box: ~ the edge)
    assert np.abs(cut[8:24] - _px(picture.resize((32, 16), Image.Resampling.LANCZOS))).max() == 0
    drawn = Image.fromarray(cut.astype(np.uint8))
    drawn.paste((255, 0, 0), (0, 0, 32, 8))  # whatever the model drew in the filled band is cut away again
    back = _px(paste_back(picture, drawn, region, Image.new("L", (64, 32), 255)))
    assert (back[2:, :, 0] - back[2:, :, 1]).max() < 40  # no red band at the top (Lanczos bleeds into row 0-1)
    assert np.abs(back - _px(picture)).mean() < 4
