"""A prompt and a negative prompt of different lengths (inference/cond_lengths.py): A1111's default draws each over
its own length, "Pad conds" pads with empty chunks, "Pad conds v0" with the negative's last vector; each against a
hand-written Euler loop; the infotext keys both ways."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from personae.config.generate import GenerateSettings

LONG = ", ".join(["a photo of a cat on a red sofa in the sun"] * 12)  # several chunks of 75 tokens
SHORT = "blurry"


def _settings(model, **kw) -> GenerateSettings:
    return GenerateSettings(**{"model": str(model), "prompt": LONG, "negative": SHORT, "steps": 4, "seed": 3,
                               "width": 64, "height": 64, "sampler": "Euler", "cfg": 6.0, **kw})


def _reference(session, settings: GenerateSettings, mode: str) -> np.ndarray:
    """Euler on A1111's sigmas (personae's scheduler gives them: tests/test_ksampler.py) with the UNet given the
    texts as A1111 would under `mode`."""
    from personae.inference.samplers import get_sampler

    pipe, encoder = session.pipe, session.encoder
    cond, uncond = encoder.encode(settings.prompt).embeds, encoder.encode(settings.negative).embeds
    empty = encoder.encode("").embeds
    assert cond.shape[1] > uncond.shape[1] == empty.shape[1]  # the case at hand: a long prompt, a short negative
    if mode == "on":
        uncond = torch.cat([uncond] + [empty] * ((cond.shape[1] - uncond.shape[1]) // empty.shape[1]), dim=1)
    elif mode == "v0":
        uncond = torch.cat([uncond, uncond[:, -1:].repeat(1, cond.shape[1] - uncond.shape[1], 1)], dim=1)
    scheduler = get_sampler("Euler").make(dict(pipe.scheduler.config))
    scheduler.set_timesteps(settings.steps)
    x = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(settings.seed)) * scheduler.init_noise_sigma
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            sigma, after = scheduler.sigmas[i], scheduler.sigmas[i + 1]
            x_in = x / (sigma**2 + 1) ** 0.5
            if mode == "off":
                eps_u = pipe.unet(x_in, t, encoder_hidden_states=uncond).sample
                eps = pipe.unet(x_in, t, encoder_hidden_states=cond).sample
            else:
                eps_u, eps = pipe.unet(torch.cat([x_in, x_in]), t,
                                       encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
            denoised = x - (eps_u + settings.cfg * (eps - eps_u)) * sigma
            x = x + (x - denoised) / sigma * (after - sigma)
        image = pipe.vae.decode(x / pipe.vae.config.scaling_factor).sample
    return np.asarray(pipe.image_processor.postprocess(image, output_type="pil")[0], dtype=np.int16)


def _drawn(session, settings):
    from personae.inference.txt2img import txt2img

    image = txt2img(settings, session)[0]
    return np.asarray(image.image, dtype=np.int16), image.parameters


@pytest.mark.parametrize("mode", ["on", "off", "v0"])
def test_each_way_draws_as_a1111_does(tiny_model, tiny_session, mode):
    drawn, parameters = _drawn(tiny_session, _settings(tiny_model[0], pad_conds=mode))
    assert np.abs(drawn - _reference(tiny_session, _settings(tiny_model[0]), mode)).max() <= 1
    others = [m for m in ("on", "off", "v0") if m != mode]
    assert all(np.abs(drawn - _reference(tiny_session, _settings(tiny_model[0]), m)).max() > 4 for m in others)
    assert ("Pad conds: True" in parameters) == (mode == "on")
    assert ("Pad conds v0: True" in parameters) == (mode == "v0")


def test_no_key_when_the_lengths_agree_and_the_unet_is_left_as_it_was(tiny_model, tiny_session):
    unet = tiny_session.pipe.unet
    drawn, parameters = _drawn(tiny_session, _settings(tiny_model[0], prompt="a photo of a cat", pad_conds="off"))
    padded, _ = _drawn(tiny_session, _settings(tiny_model[0], prompt="a photo of a cat"))
    assert np.array_equal(drawn, padded) and "Pad conds" not in parameters
    _drawn(tiny_session, _settings(tiny_model[0], pad_conds="off"))
    assert "forward" not in vars(unet)  # the wrapper is gone after the pass


def test_cfg_1_and_the_hires_fix_and_a_negative_longer_than_the_prompt(tiny_model, tiny_session):
    # CFG 1 runs no negative rows: "off" draws the short prompt over its own length, "on" padded to the negative's
    alone = _settings(tiny_model[0], prompt=SHORT, negative=LONG, cfg=1.0)
    off, on = (_drawn(tiny_session, alone.model_copy(update={"pad_conds": m}))[0] for m in ("off", "on"))
    unpadded = _drawn(tiny_session, alone.model_copy(update={"negative": ""}))[0]  # nothing to pad
    assert np.array_equal(off, unpadded) and np.abs(on - off).max() > 4
    swapped = _settings(tiny_model[0], prompt=SHORT, negative=LONG)
    off, on = (_drawn(tiny_session, swapped.model_copy(update={"pad_conds": m}))[0] for m in ("off", "on"))
    assert np.abs(off - on).max() > 4
    hires = _settings(tiny_model[0], pad_conds="off", hires_scale=1.5, hires_denoise=0.5)
    picture, parameters = _drawn(tiny_session, hires)
    assert picture.shape == (96, 96, 3) and "Pad conds" not in parameters


def test_a1111_infotext_without_the_key_draws_each_over_its_own_length(tmp_path):
    from personae.jobs.generate import settings_from_infotext

    a1111 = f"{LONG}\nNegative prompt: {SHORT}\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 512x512"
    assert settings_from_infotext(a1111, tmp_path)["pad_conds"] == "off"
    assert settings_from_infotext(a1111 + ", Pad conds: True", tmp_path)["pad_conds"] == "on"
    assert settings_from_infotext(a1111 + ", Pad conds v0: True", tmp_path)["pad_conds"] == "v0"
    ours = a1111 + ", Version: personae 0.1.0"  # personae's own padded before it said so
    assert "pad_conds" not in settings_from_infotext(ours, tmp_path)
