"""A1111's Soft inpainting (its built-in soft-inpainting extension): the blend at every model call, the overlay mask
from what changed, and `generate --soft-inpainting` end to end on the tiny model."""

import math

import numpy as np
import pytest
import torch
from cli_runs import a1111_png, drawn_again, generate, made
from PIL import Image

from personae.config.generate import GenerateSettings
from personae.data.samples import BACKGROUNDS, draw_star
from personae.inference.soft_inpaint import (
    SoftInpainting,
    gaussian_kernel,
    histogram_filter,
    latent_blend,
    overlay_masks,
)

# --- the arithmetic, against the extension's written out --------------------------------------------------------

def _reference_filter(image, kernel, low, high, min_width=1.0):
    """weighted_histogram_filter as the extension describes it: per pixel, the kernel window cut at the edges, its
    values sorted into a stack of their weights, the mean of what overlaps [low, high] of the stack (at least
    min_width wide, kept inside)."""
    r = kernel.shape[0] // 2
    out = np.zeros_like(image)
    for y in range(image.shape[0]):
        for x in range(image.shape[1]):
            items = sorted((float(image[yy, xx]), kernel[yy - y + r, xx - x + r])
                           for yy in range(max(0, y - r), min(image.shape[0], y + r + 1))
                           for xx in range(max(0, x - r), min(image.shape[1], x + r + 1)))
            total = sum(w for _, w in items)
            lo, hi = total * low, total * high
            if hi - lo < min_width:
                mid = (lo + hi) / 2
                lo, hi = mid - min_width / 2, mid + min_width / 2
                if hi > total:
                    lo, hi = total - min_width, total
                if lo < 0:
                    lo, hi = 0, min_width
            acc = weight = bottom = 0.0
            for value, w in items:
                top = bottom + w
                part = max(0.0, min(hi, top) - max(lo, bottom))
                acc, weight, bottom = acc + value * part, weight + part, top
            out[y, x] = acc / weight if weight else 0
    return out


def test_the_kernel_is_a_gaussian_cut_one_pixel_past_its_radius():
    k = gaussian_kernel(1.5, 2)
    zero = math.exp(-9 / 2.25)
    assert k.shape == (5, 5) and k[2, 2] == 1.0 and np.allclose(k, k.T) and np.allclose(k, k[::-1])
    assert k[2, 0] == pytest.approx((math.exp(-4 / 2.25) - zero) / (1 - zero))
    assert k[0, 0] == pytest.approx((math.exp(-8 / 2.25) - zero) / (1 - zero)) and k[0, 0] > 0


@pytest.mark.parametrize("low, high", [(0.9, 1.0), (0.25, 0.75), (0.0, 0.05)])
def test_the_percentile_filter_is_the_extensions_at_every_pixel_edges_included(low, high):
    image = np.random.default_rng(1).random((9, 11)).astype(np.float32)
    image[3, :4] = 0.5  # ties
    kernel = gaussian_kernel()
    np.testing.assert_allclose(histogram_filter(image, kernel, low, high), _reference_filter(image, kernel, low, high),
                               rtol=1e-6)
    assert histogram_filter(image, kernel, low, high).dtype == np.float32


def test_the_latent_blend_mixes_vectors_and_their_lengths_apart():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 4, 3, 5, generator=g), torch.randn(2, 4, 3, 5, generator=g) * 3
    t = torch.rand(1, 4, 3, 5, generator=g)
    t[:, 1:] = t[:, :1]  # the mask's channels are one
    mixed = a * (1 - t) + b * t
    boost = 4.0
    length = ((a.norm(dim=1, keepdim=True).double() ** boost * (1 - t[:, :1].double())
               + b.norm(dim=1, keepdim=True).double() ** boost * t[:, :1].double()) ** (1 / boost))
    want = mixed * (length / (mixed.norm(dim=1, keepdim=True).double() + 1e-5)).float()
    torch.testing.assert_close(latent_blend(a, b, t, boost), want)
    # kept where t is 0 (the length of the picture's vector), the drawing where t is 1
    zero, one = torch.zeros_like(t), torch.ones_like(t)
    torch.testing.assert_close(latent_blend(a, b, zero, boost), a, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(latent_blend(a, b, one, boost), b, atol=1e-4, rtol=1e-4)


def test_the_drawings_share_falls_with_the_noise_level_as_the_schedule_bias_says():
    soft = SoftInpainting(schedule_bias=2.0, preservation=0.5)
    a, b = torch.zeros(1, 4, 1, 1), torch.ones(1, 4, 1, 1)
    redraw = torch.full((1, 4, 1, 1), 0.5)
    for sigma in (0.1, 1.0, 3.0):
        share = 0.5 ** (sigma ** 2.0 * 0.5)  # the drawing's share; lengths: 0 for the picture, 2 for the drawing
        length = (2 ** 4 * share) ** (1 / 4)
        torch.testing.assert_close(soft.blend(a, b, redraw, sigma)[0, :, 0, 0],
                                   torch.full((4,), share * length / (2 * share + 1e-5)), rtol=1e-5, atol=1e-7)


def test_the_overlay_mask_is_half_open_at_the_difference_threshold():
    soft = SoftInpainting(difference_threshold=0.5, difference_contrast=2.0)
    redraw = torch.ones(1, 4, 8, 8)
    original = torch.zeros(2, 4, 8, 8)
    at = 0.5 * 0.5 / (1.00001 - 0.5)  # Mask influence 0: every pixel's threshold is the threshold x 0.99998
    drawn = torch.stack([torch.zeros(4, 8, 8), torch.full((4, 8, 8), at / 2)])  # unchanged; moved by `at`
    masks = overlay_masks(soft, redraw, original, drawn, (64, 64))
    assert [m.size for m in masks] == [(64, 64)] * 2 and masks[0].mode == "L"
    assert np.asarray(masks[0]).max() == 0  # nothing changed: the original everywhere
    assert set(np.unique(np.asarray(masks[1]))) == {127}  # 1 / (1 + 1) -> smootherstep 0.5 -> 255 x 0.5, truncated
    far = overlay_masks(soft, redraw, original, drawn * 100, (64, 64))[1]
    assert np.asarray(far).min() == 255


def test_mask_influence_one_shows_the_drawing_wherever_the_mask_is_white():
    soft = SoftInpainting(mask_influence=1.0)
    redraw = torch.zeros(1, 4, 8, 8)
    redraw[..., :4] = 1.0
    drawn = torch.full((1, 4, 8, 8), 0.01)  # a small change everywhere
    mask = np.asarray(overlay_masks(soft, redraw, torch.zeros(1, 4, 8, 8), drawn, (64, 64))[0])
    assert mask[:, :8].min() == 255 and mask[:, 56:].max() == 0  # (Lanczos and the blur soften the middle)


# --- the sampler: A1111's Euler loop with the extension's blend at each call ---------------------------------------

def test_the_k_diffusion_sampler_blends_each_estimate_at_its_sigma_and_not_the_result():
    from personae.inference.ksampler import KDiffusionScheduler

    sched = KDiffusionScheduler(sampler="Euler")
    sched.set_timesteps(5)
    g = torch.Generator().manual_seed(2)
    init, noise = torch.randn(1, 4, 4, 4, generator=g), torch.randn(1, 4, 4, 4, generator=g)
    redraw = torch.rand(1, 1, 4, 4, generator=g).expand(1, 4, 4, 4).contiguous()  # an unrounded latent mask
    soft = SoftInpainting(schedule_bias=1.0, preservation=0.5, contrast_boost=4.0)
    sched.inpaint, sched.soft = (1 - redraw, redraw), soft
    x = sched.add_noise(init, noise, sched.timesteps[:1])
    outputs = [torch.randn(1, 4, 4, 4, generator=g) for _ in sched.timesteps]
    for t, eps in zip(sched.timesteps, outputs):
        x = sched.step(eps, t, x).prev_sample
    # A1111: x = init + noise x sigma_0; each call's denoised blended by nmask ** (sigma ** bias x scale); Euler
    sigmas = sched.sigmas
    want = init + noise * sigmas[0]
    for i, eps in enumerate(outputs):
        denoised = want - eps * sigmas[i]
        denoised = latent_blend(init, denoised, redraw ** (float(sigmas[i]) ** 1.0 * 0.5), 4.0)
        want = want + (want - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
    torch.testing.assert_close(x, want)
    torch.testing.assert_close(sched.drawn, want)  # kept for the overlay mask, and not blended at the end


# --- generate ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def photo_and_mask(tmp_path_factory):
    root = tmp_path_factory.mktemp("soft")
    draw_star(128, BACKGROUNDS["green"], 0.6, (0, 0)).save(root / "init.png")
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (0, 0, 24, 128))  # the left part redrawn; a wide feathered edge
    mask.save(root / "mask.png")
    return root


def _settings(model, root, **kw):
    return GenerateSettings(**{"model": str(model), "prompt": "a photo of a star", "steps": 6, "seed": 3,
                               "init_image": str(root / "init.png"), "mask": str(root / "mask.png"),
                               "strength": 0.9, "mask_blur": 8, "sampler": "Euler a", **kw})


@pytest.mark.slow
def test_soft_inpainting_keeps_the_far_side_and_blends_the_edge(photo_and_mask, tiny_model, tiny_session):
    from personae.inference.txt2img import txt2img

    hard = txt2img(_settings(tiny_model[0], photo_and_mask), tiny_session)[0]
    soft = txt2img(_settings(tiny_model[0], photo_and_mask, soft_inpainting=True), tiny_session)[0]
    original = np.asarray(Image.open(photo_and_mask / "init.png").convert("RGB"), dtype=np.int16)
    hard_px, soft_px = np.asarray(hard.image, dtype=np.int16), np.asarray(soft.image, dtype=np.int16)
    # far from the mask (the filters look 2 + 2 latent pixels around each, the blur 4 more): the picture, exactly
    assert np.array_equal(soft_px[:, 96:], original[:, 96:])
    assert np.abs(soft_px[:, :8] - original[:, :8]).mean() > 10  # the masked part is drawn
    assert np.abs(soft_px - hard_px).max() > 10  # and not as the rounded mask draws it
    for key in ("Soft inpainting enabled: True", "Soft inpainting schedule bias: 1",
                "Soft inpainting preservation strength: 0.5", "Soft inpainting transition contrast boost: 4",
                "Soft inpainting mask influence: 0", "Soft inpainting difference threshold: 0.5",
                "Soft inpainting difference contrast: 2"):
        assert key in soft.parameters
    assert "Soft inpainting" not in hard.parameters


@pytest.mark.slow
def test_the_result_is_the_samplers_latents_under_the_overlay_it_computes(photo_and_mask, tiny_model, tiny_session,
                                                                          monkeypatch):
    """The picture is the decoded, unblended result of the sampler with the original laid over by overlay_masks of
    that result: every pixel where that overlay is black is the original; the latent mask is not rounded."""
    import personae.inference.txt2img as t2i
    from personae.inference.txt2img import txt2img

    seen = {}
    real, composite = t2i.overlay_masks, t2i.composite

    def spy(soft, redraw, original, drawn, size):
        seen["masks"] = real(soft, redraw, original, drawn, size)
        seen["redraw"] = redraw
        return seen["masks"]

    def laid(original, drawn, mask):
        seen["laid with"] = mask
        return composite(original, drawn, mask)

    monkeypatch.setattr(t2i, "overlay_masks", spy)
    monkeypatch.setattr(t2i, "composite", laid)
    out = txt2img(_settings(tiny_model[0], photo_and_mask, soft_inpainting=True, soft_difference_threshold=0.1),
                  tiny_session)[0]
    assert seen["laid with"] is seen["masks"][0]  # the overlay is Soft inpainting's, not the feathered mask doubled
    mask = np.asarray(seen["masks"][0])
    assert set(np.unique(seen["redraw"].numpy())) - {0.0, 1.0}  # the latent mask's grey edge is not rounded
    original = np.asarray(Image.open(photo_and_mask / "init.png").convert("RGB"), dtype=np.int16)
    result = np.asarray(out.image, dtype=np.int16)
    assert np.array_equal(result[mask == 0], original[mask == 0]) and (mask == 0).any()
    assert (mask == 255).any() and np.abs(result[mask == 255] - original[mask == 255]).mean() > 5


@pytest.mark.slow
def test_only_masked_soft_inpainting_keeps_the_picture_outside_the_region(tmp_path, tiny_model, tiny_session):
    from personae.inference.txt2img import txt2img

    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 96, 3), dtype=np.uint8))
    picture.save(tmp_path / "init.png")
    m = Image.new("L", (96, 80), 0)
    m.paste(255, (60, 20, 76, 36))
    m.save(tmp_path / "mask.png")
    out = txt2img(_settings(tiny_model[0], tmp_path, soft_inpainting=True, inpaint_area="masked", masked_padding=8,
                            width=64, height=64, mask_blur=2), tiny_session)[0]
    result, original = np.asarray(out.image, dtype=np.int16), np.asarray(picture, dtype=np.int16)
    assert out.image.size == (96, 80)
    assert np.array_equal(result[:, :40], original[:, :40])  # left of the region: untouched
    assert np.abs(result[24:32, 64:72] - original[24:32, 64:72]).mean() > 5  # the mask's middle is drawn


@pytest.mark.slow
@pytest.mark.parametrize("extra, said", [
    (["--soft-inpainting"], "no --mask is given"),
    (["--soft-preservation", "2"], "--soft-preservation tunes Soft inpainting, which is off"),
    (["--soft-inpainting", "--mask", "{mask}", "--sampler", "DDIM"], "DDIM is one of diffusers' samplers"),
])
def test_generate_refuses_soft_inpainting_where_it_cannot_run(photo_and_mask, tiny_model, tmp_path, extra, said):
    args = [a.format(mask=photo_and_mask / "mask.png", init=photo_and_mask / "init.png") for a in extra]
    out = tmp_path / "out"
    r = generate("--model", tiny_model[0], "--prompt", "x", "--steps", "2", "--init-image",
                 photo_and_mask / "init.png", *args, "--out", out)
    assert r.returncode == 2, r.stderr
    assert said in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


@pytest.mark.slow
def test_an_a1111_png_with_soft_inpainting_is_read_back(photo_and_mask, tiny_model, tiny_session, tmp_path):
    from personae.jobs.generate import png_not_applied, settings_from_png

    text = ("a star\nNegative prompt: blurry\nSteps: 6, Sampler: Euler a, CFG scale: 7, Seed: 3, Size: 64x64, "
            "Denoising strength: 0.9, Mask blur: 8, Soft inpainting enabled: True, Soft inpainting schedule bias: 1.5, "
            "Soft inpainting preservation strength: 2.15, Soft inpainting transition contrast boost: 11, "
            "Soft inpainting mask influence: 0.75, Soft inpainting difference threshold: 3.25, "
            "Soft inpainting difference contrast: 1.75, Version: v1.10.1")
    png = a1111_png(tmp_path / "a1111.png", text)
    data = settings_from_png(png)
    assert data["soft_inpainting"] is True
    assert (data["soft_schedule_bias"], data["soft_preservation"], data["soft_contrast_boost"],
            data["soft_mask_influence"], data["soft_difference_threshold"], data["soft_difference_contrast"]) == \
        (1.5, 2.15, 11, 0.75, 3.25, 1.75)
    without_mask = GenerateSettings(model=str(tiny_model[0]), prompt="a star")
    assert any(m.startswith("Soft inpainting enabled") and "(no --mask)" in m
               for m in png_not_applied(png, without_mask))
    with_mask = _settings(tiny_model[0], photo_and_mask, **{k: v for k, v in data.items()
                                                            if k.startswith("soft")})
    assert not [m for m in png_not_applied(png, with_mask) if "Soft" in m]
    # without --mask the PNG's soft inpainting (and its six settings) wait for one: drawn without it, and said
    r = generate("--from-png", png, "--model", tiny_model[0], "--steps", "2", "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert 'Soft inpainting enabled "True" (no --mask)' in r.stderr


@pytest.mark.slow
def test_generate_writes_soft_inpainting_and_from_png_draws_it_again(photo_and_mask, tiny_model, tmp_path):
    """The flags reach the run and its PNG; --from-png of that PNG (settings read whole) draws the same pixels."""
    first, again = tmp_path / "first", tmp_path / "again"
    common = ["--model", str(tiny_model[0]), "--steps", "4"]
    r = generate(*common, "--prompt", "a star", "--seed", "5", "--init-image", photo_and_mask / "init.png",
                 "--mask", photo_and_mask / "mask.png", "--mask-blur", "8", "--sampler", "Euler",
                 "--soft-inpainting", "--soft-preservation", "2", "--soft-difference-threshold", "1.5", "--out", first)
    assert r.returncode == 0, r.stderr
    text = Image.open(made(first)).text["parameters"]
    assert "Soft inpainting enabled: True" in text and "Soft inpainting preservation strength: 2," in text
    assert "Soft inpainting difference threshold: 1.5" in text
    drawn_again(made(first), again)


@pytest.mark.slow
def test_controlnet_inpainting_is_a1111s_and_takes_soft_inpainting(photo_and_mask, tiny_model, tiny_session, tmp_path,
                                                                   monkeypatch):
    """Under a ControlNet, inpainting with an ordinary model and a k-diffusion sampler is A1111's too: the ControlNet
    img2img pipeline, the sampler keeping the picture (with Soft inpainting's blend); the far side is the photo."""
    import personae.inference.controlnet as cn
    from personae.inference.txt2img import txt2img
    from personae.models.controlnet import write_tiny_controlnet

    net = write_tiny_controlnet(tmp_path / "cn", base=tiny_model[0], seed=0)
    used = {}
    real = cn.control_pipeline

    def spy(session, controlnets, img2img, inpaint, scheduler):
        used.update(inpaint=inpaint, kept=scheduler.inpaint is not None, soft=scheduler.soft)
        return real(session, controlnets, img2img, inpaint, scheduler)

    monkeypatch.setattr(cn, "control_pipeline", spy)
    unit = {"type": "canny", "image": str(photo_and_mask / "init.png"), "model": str(net)}
    for soft in (False, True):
        out = txt2img(_settings(tiny_model[0], photo_and_mask, controls=[unit], soft_inpainting=soft),
                      tiny_session)[0]
        assert used["inpaint"] is False and used["kept"] and (used["soft"] is not None) == soft
        original = np.asarray(Image.open(photo_and_mask / "init.png").convert("RGB"), dtype=np.int16)
        result = np.asarray(out.image, dtype=np.int16)
        assert np.abs(result[:, 96:] - original[:, 96:]).max() <= (0 if soft else 1)
        assert np.abs(result[:, :8] - original[:, :8]).mean() > 10
        assert ("Soft inpainting enabled: True" in out.parameters) == soft


@pytest.fixture(scope="module")
def inpainting_session(tiny_model, tmp_path_factory):
    """The tiny model with an inpainting UNet (9 input channels: latents, mask, masked picture), seeded."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from personae.inference.session import open_session

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_model[0]), safety_checker=None,
                                                   requires_safety_checker=False)
    torch.manual_seed(7)
    pipe.unet = UNet2DConditionModel.from_config({**pipe.unet.config, "in_channels": 9})
    folder = tmp_path_factory.mktemp("inpainting") / "tiny-inpainting"
    pipe.save_pretrained(folder)
    return open_session(str(folder)), folder


@pytest.mark.slow
@pytest.mark.parametrize("strength", [1.0, 0.8])
def test_an_inpainting_model_keeps_the_picture_as_a1111s_sampler_does(photo_and_mask, inpainting_session, strength):
    """An inpainting model (9 channels) draws through diffusers' inpainting pipeline, and a k-diffusion sampler keeps
    the encoded picture outside the rounded latent mask in every estimate, as A1111's CFG denoiser does for every
    model: the latents the VAE decodes are the picture's there (at strength 1 too, where the pipeline starts from
    noise alone and never encodes the picture itself)."""
    from personae.inference.img2img import encoded, load_mask
    from personae.inference.txt2img import txt2img

    session, folder = inpainting_session
    settings = _settings(folder, photo_and_mask, sampler="Euler", strength=strength, mask_blur=0)
    vae = session.pipe.vae
    decoded = []
    hook = vae.post_quant_conv.register_forward_pre_hook(lambda module, args: decoded.append(args[0].clone()))
    try:
        txt2img(settings, session)
    finally:
        hook.remove()
    latents = decoded[-1] * vae.config.scaling_factor
    picture = encoded(session.pipe, Image.open(photo_and_mask / "init.png").convert("RGB"))
    kept = load_mask(settings.mask, (128, 128), 0).resize((16, 16), Image.Resampling.BICUBIC)
    kept = torch.from_numpy(np.around(np.asarray(kept.convert("RGB"), np.float32)[..., 0] / 255)) == 0
    assert kept.sum() > 100
    if strength == 1.0:
        torch.testing.assert_close(latents[..., kept], picture[..., kept], atol=1e-4, rtol=1e-4)
    else:  # the pipeline's own encoding, drawn with the image's generator: within the VAE's spread of the mean
        assert (latents[..., kept] - picture[..., kept]).abs().max() < 0.5
        assert (latents[..., ~kept] - picture[..., ~kept]).abs().mean() > 0.1


@pytest.mark.slow
def test_soft_inpainting_gives_an_inpainting_model_the_unrounded_mask(photo_and_mask, inpainting_session):
    """A1111 1.7+'s soft conditioning: the model's mask channel holds the feathered mask's grey, its masked-picture
    channels the picture faded by it; the far side is the picture, byte for byte."""
    from personae.inference.txt2img import txt2img

    session, folder = inpainting_session
    seen = []
    hook = session.pipe.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0][:, 4].clone()))
    try:
        out = txt2img(_settings(folder, photo_and_mask, soft_inpainting=True), session)[0]
    finally:
        hook.remove()
    mask_channel = seen[0]
    grey = ((mask_channel > 0.01) & (mask_channel < 0.99)).sum()
    assert grey > 0  # diffusers' own pipeline would have rounded it to 0 or 1
    original = np.asarray(Image.open(photo_and_mask / "init.png").convert("RGB"), dtype=np.int16)
    assert np.array_equal(np.asarray(out.image, dtype=np.int16)[:, 96:], original[:, 96:])
