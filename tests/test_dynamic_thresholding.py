"""Dynamic Thresholding (CFG Scale Fix, the sd-dynamic-thresholding extension for A1111) in generate."""

import numpy as np
import pytest
import torch
from cli_runs import a1111_png, drawn_again, generate, made
from PIL import Image

from personae.inference.dynamic_thresholding import (
    DynamicThresholding,
    scheduled,
    thresholded,
)


def _pair(seed=0, shape=(2, 4, 6, 5)):
    g = torch.Generator().manual_seed(seed)
    uncond = torch.randn(shape, generator=g)
    return uncond, uncond + 0.3 * torch.randn(shape, generator=g)


# --- the combination ------------------------------------------------------------------------------------------------

def test_at_the_mimic_scale_it_is_plain_cfg():
    uncond, guided = _pair()
    dt = DynamicThresholding(mimic_scale=9.0)
    torch.testing.assert_close(dt.combine(uncond, guided, 9.0, 0.3), uncond + (guided - uncond) * 9.0)


def test_mean_ad_clamps_each_channel_to_the_mimic_spread_around_the_cfg_mean():
    uncond, guided = _pair(1)
    dt = DynamicThresholding(mimic_scale=4.0)
    out = dt.combine(uncond, guided, 15.0, 0.0).flatten(2)
    mimic = (uncond + (guided - uncond) * 4.0).flatten(2)
    cfg = (uncond + (guided - uncond) * 15.0).flatten(2)
    spread = (mimic - mimic.mean(2, keepdim=True)).abs().amax(2)
    torch.testing.assert_close((out - out.mean(2, keepdim=True)).abs().amax(2), spread)  # the mimic's range
    torch.testing.assert_close(out.mean(2), cfg.mean(2))  # around the CFG result's mean
    # the CFG result's order kept: a monotone map of each channel (clamp, then scale)
    ranks = lambda t: t.argsort(2).argsort(2)  # noqa: E731
    assert (ranks(out) == ranks(cfg)).float().mean() > 0.99


def test_the_other_measures_startpoints_and_phi():
    uncond, guided = _pair(2)
    mimic = (uncond + (guided - uncond) * 5.0).flatten(2)
    cfg = (uncond + (guided - uncond) * 12.0).flatten(2)
    centred = lambda t: t - t.mean(2, keepdim=True)  # noqa: E731
    zero_std = DynamicThresholding(mimic_scale=5.0, scaling_startpoint="ZERO", variability_measure="STD")
    torch.testing.assert_close(zero_std.combine(uncond, guided, 12.0, 0.0).flatten(2),
                               cfg * centred(mimic).std(2, keepdim=True) / centred(cfg).std(2, keepdim=True))
    mean_std = DynamicThresholding(mimic_scale=5.0, variability_measure="STD")
    torch.testing.assert_close(mean_std.combine(uncond, guided, 12.0, 0.0).flatten(2),
                               centred(cfg) / centred(cfg).std(2, keepdim=True) * centred(mimic).std(2, keepdim=True)
                               + cfg.mean(2, keepdim=True))
    whole = DynamicThresholding(mimic_scale=5.0, separate_feature_channels=False)
    spread = centred(mimic).abs().max()
    out = whole.combine(uncond, guided, 12.0, 0.0).flatten(2)
    assert torch.isclose(centred(out).abs().max(), spread)  # one spread for every channel and picture
    plain = DynamicThresholding(mimic_scale=5.0, interpolate_phi=0.0)
    torch.testing.assert_close(plain.combine(uncond, guided, 12.0, 0.0).flatten(2), cfg)
    top = DynamicThresholding(mimic_scale=5.0, threshold_percentile=95.0)
    q = torch.quantile(centred(cfg).abs(), 0.95, dim=2, keepdim=True)
    largest = torch.maximum(centred(mimic).abs().amax(2, keepdim=True), q)
    torch.testing.assert_close(top.combine(uncond, guided, 12.0, 0.0).flatten(2),
                               centred(cfg).clamp(-largest, largest) / largest
                               * centred(mimic).abs().amax(2, keepdim=True) + cfg.mean(2, keepdim=True))


@pytest.mark.parametrize("mode, frac, value, want", [
    ("Constant", 0.5, 4, 7.0), ("Linear Down", 0.5, 4, 2 + 5 * 0.5), ("Linear Up", 0.25, 4, 2 + 5 * 0.25),
    ("Cosine Down", 1.0, 4, 2 + 5 * np.cos(1.5707)), ("Half Cosine Up", 0.5, 4, 2 + 5 * (1 - np.cos(0.5))),
    ("Power Up", 0.5, 3, 2 + 5 * 0.125), ("Power Down", 0.5, 2, 2 + 5 * 0.75),
    ("Linear Repeating", 0.1, 4, 2 + 5 * ((0.5 - 0.4) * 2)), ("Cosine Repeating", 0.25, 2, 2 + 5 * 0.0),
    ("Sawtooth", 0.3, 2, 2 + 5 * 0.6)])
def test_the_schedules_are_the_extensions(mode, frac, value, want):
    assert scheduled(7.0, mode, 2.0, frac, value) == pytest.approx(want, abs=1e-6)


# --- the hook on the UNet ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_the_unet_output_carries_the_thresholded_estimate_on_both_rows(tiny_session, prediction):
    """The hook turns the UNet's two rows into denoised estimates with the call's sigma (k-diffusion's CompVis
    wrappers), combines them, and hands the prediction of the result back on both rows: the pipeline's CFG step
    then gives exactly that estimate."""
    from personae.inference.ksampler import KDiffusionScheduler

    unet = tiny_session.pipe.unet
    sched = KDiffusionScheduler(sampler="Euler", prediction_type=prediction)
    sched.set_timesteps(4)
    t = sched.timesteps[0]  # the pass's first call
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 8, 8, generator=g)
    model_in = sched.scale_model_input(torch.cat([x, x]), t)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    dt = DynamicThresholding(mimic_scale=3.0)
    with torch.no_grad():
        raw = unet(model_in, t, text).sample
        with thresholded(unet, sched, dt, 11.0, 1):
            out = unet(model_in, t, text).sample
    sigma = sched.sigmas[0]
    if prediction == "epsilon":
        to_x0 = lambda p: x - p * sigma  # noqa: E731
    else:
        to_x0 = lambda p: p * (-sigma / (sigma ** 2 + 1) ** 0.5) + x / (sigma ** 2 + 1)  # noqa: E731
    want = dt.combine(to_x0(raw[:1]), to_x0(raw[1:]), 11.0, 0.0)
    torch.testing.assert_close(out[0], out[1])
    guided = out[:1] + 11.0 * (out[1:] - out[:1])  # the pipeline's CFG step
    torch.testing.assert_close(to_x0(guided), want, atol=2e-5, rtol=1e-5)


# --- generate ---------------------------------------------------------------------------------------------------

def _settings(model, **kw):
    from personae.config.generate import GenerateSettings

    return GenerateSettings(**{"model": str(model), "prompt": "a red cube AND a blue sky", "negative": "blurry",
                               "steps": 4, "seed": 5, "cfg": 12.0, "sampler": "Euler a", "width": 64, "height": 64,
                               **kw})


@pytest.mark.slow
def test_generate_thresholds_every_call_of_both_passes(tiny_model, tiny_session, monkeypatch):
    """At the mimic scale equal to the CFG scale the picture is the plain one; below it, another; every model call
    of both hires passes goes through the combination at its share of the pass (A1111's total_steps), AND's parts
    composed before it; the infotext is the extension's."""
    from personae.inference import dynamic_thresholding as dtm
    from personae.inference.txt2img import txt2img

    plain = txt2img(_settings(tiny_model[0]), tiny_session)[0]
    same = txt2img(_settings(tiny_model[0], dynamic_thresholding=True, mimic_scale=12.0), tiny_session)[0]
    assert np.abs(np.asarray(plain.image, np.int16) - np.asarray(same.image, np.int16)).max() <= 1
    seen = []
    real = DynamicThresholding.combine

    def spy(self, uncond, guided, cfg, frac):
        seen.append((cfg, round(frac, 6), uncond.shape[0]))
        return real(self, uncond, guided, cfg, frac)

    monkeypatch.setattr(dtm.DynamicThresholding, "combine", spy)
    hires = _settings(tiny_model[0], dynamic_thresholding=True, mimic_scale=4.0, hires_scale=1.5, hires_steps=3,
                      hires_cfg=9.0, hires_denoise=0.6)
    out = txt2img(hires, tiny_session)[0]
    first = [(12.0, round(i / 3, 6), 1) for i in range(4)]
    second = [(9.0, round(i / 2, 6), 1) for i in range(3)]  # the redraw: its own 3 steps, at the hires CFG
    assert seen == first + second, seen
    assert np.abs(np.asarray(plain.image, np.int16) - np.asarray(
        txt2img(_settings(tiny_model[0], dynamic_thresholding=True, mimic_scale=4.0), tiny_session)[0].image,
        np.int16)).max() > 5
    for key in ("Dynamic thresholding enabled: True", "Mimic scale: 4", "Separate Feature Channels: True",
                "Scaling Startpoint: MEAN", "Variability Measure: AD", "Interpolate Phi: 1",
                "Threshold percentile: 100"):
        assert key in out.parameters, out.parameters
    assert "Mimic mode" not in out.parameters and "Scheduler value" not in out.parameters


@pytest.mark.slow
@pytest.mark.parametrize("extra, said", [
    (["--dynamic-thresholding", "--sampler", "DDIM"], "--sampler DDIM is not one"),
    (["--dynamic-thresholding", "--cfg", "1"], "at --cfg 1 there is no guidance"),
    (["--mimic-scale", "4"], "tunes Dynamic Thresholding, which is off"),
    (["--dt-cfg-mode", "Linear Down"], "tunes Dynamic Thresholding, which is off"),
])
def test_generate_refuses_it_where_it_cannotgenerate(tiny_model, tmp_path, extra, said):
    out = tmp_path / "out"
    r = generate("--model", str(tiny_model[0]), "--prompt", "x", "--steps", "2", *extra, "--out", str(out))
    assert r.returncode == 2, r.stderr
    assert said in " ".join(r.stderr.split()) and "Traceback" not in r.stderr  # the paragraph, wrapped
    assert not out.exists()


@pytest.mark.slow
def test_the_extensions_png_is_read_and_personae_draws_its_own_again(tiny_model, tmp_path):
    from personae.jobs.generate import settings_from_png

    text = ("a cube\nSteps: 4, Sampler: Euler a, CFG scale: 14, Seed: 2, Size: 64x64, Dynamic thresholding enabled: "
            "True, Mimic scale: 6, Separate Feature Channels: False, Scaling Startpoint: ZERO, Variability Measure: "
            "STD, Interpolate Phi: 0.8, Threshold percentile: 99.5, Mimic mode: Power Up, Mimic scale minimum: 2, "
            "CFG mode: Cosine Down, CFG scale minimum: 3, Scheduler value: 2, Version: v1.10.1")
    png = a1111_png(tmp_path / "a1111.png", text)
    data = settings_from_png(png)
    assert {k: data[k] for k in ("dynamic_thresholding", "mimic_scale", "dt_separate_feature_channels",
                                 "dt_scaling_startpoint", "dt_variability_measure", "dt_interpolate_phi",
                                 "dt_threshold_percentile", "dt_mimic_mode", "dt_mimic_scale_min", "dt_cfg_mode",
                                 "dt_cfg_scale_min", "dt_scheduler_value")} == {
        "dynamic_thresholding": True, "mimic_scale": 6, "dt_separate_feature_channels": False,
        "dt_scaling_startpoint": "ZERO", "dt_variability_measure": "STD", "dt_interpolate_phi": 0.8,
        "dt_threshold_percentile": 99.5, "dt_mimic_mode": "Power Up", "dt_mimic_scale_min": 2,
        "dt_cfg_mode": "Cosine Down", "dt_cfg_scale_min": 3, "dt_scheduler_value": 2}
    r = generate("--from-png", png, "--model", tiny_model[0], "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert "Mimic" not in r.stderr  # nothing of the extension's said as not applied
    written = Image.open(made(tmp_path / "out")).text["parameters"]
    assert "Mimic mode: Power Up, Mimic scale minimum: 2, CFG mode: Cosine Down, CFG scale minimum: 3, " \
           "Scheduler value: 2" in written
    drawn_again(made(tmp_path / "out"), tmp_path / "again")


@pytest.mark.slow
def test_on_the_world_model_it_keeps_a_high_cfgs_pictures_in_range():
    """The shapes world burns at CFG 15 (pixels clipped to black or white, many times more than at its CFG 4);
    Dynamic Thresholding at mimic scale 4 keeps the value range: under half the clipped pixels (docs/world.md has
    the checker's numbers, which it does not restore at a constant mimic scale)."""
    from personae.inference.session import open_session
    from personae.inference.txt2img import txt2img
    from personae.world.evaluate import EVAL_PROMPTS
    from personae.world.model import WORLD_DIR

    session = open_session(str(WORLD_DIR))
    prompts = [EVAL_PROMPTS[i % len(EVAL_PROMPTS)] for i in range(16)]

    def clipped(**kw):
        share = []
        for i, prompt in enumerate(prompts):
            settings = _settings(WORLD_DIR, prompt=prompt, negative="", seed=i, steps=25, width=None,
                                 height=None, **kw)
            picture = np.asarray(txt2img(settings, session)[0].image, dtype=np.float32)
            share.append(((picture < 3) | (picture > 252)).mean())
        return float(np.mean(share))

    low, high, fixed = clipped(cfg=4.0), clipped(cfg=15.0), clipped(cfg=15.0, dynamic_thresholding=True,
                                                                     mimic_scale=4.0)
    print(f"clipped pixels: CFG 4 {low:.4f}, CFG 15 {high:.4f}, CFG 15 thresholded at mimic 4 {fixed:.4f}")
    assert high > 5 * low and fixed < 0.5 * high
