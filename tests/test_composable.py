"""A1111's composable diffusion (inference/composable.py): "a cat AND a dog :0.5".

The split is A1111's (its regular expressions, read case by case); the prediction is checked against a denoising
loop written out by hand with A1111's formula; a weight of 0 is the prompt without that part in every mode
(txt2img, img2img, inpainting, hires fix, ControlNet); a prompt without AND draws exactly as the pipeline does
with its embeddings; and on the shapes world the weights pick the shape the checker reads.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from personae.config.generate import GenerateSettings
from personae.errors import UserError
from personae.inference.composable import composable_parts, split_prompt
from personae.inference.samplers import get_sampler
from personae.inference.txt2img import txt2img

CAT, DOG = "a photo of a cat", "a red house by the sea"

A1111_SPLITS = {  # prompt -> [(text, weight written or None)], as get_multicond_prompt_list reads it
    "a cat AND a dog": [("a cat", None), (" a dog", None)],
    "a cat AND a dog :0.5": [("a cat", None), (" a dog", 0.5)],
    "a cat:1.5 AND a dog:-0.25 ": [("a cat", 1.5), (" a dog", -0.25)],
    "a cat:1.5AND a dog:-0.25": [("a cat:1.5AND a dog", -0.25)],  # "5AND" is one word to \b, as in A1111
    "a cat : +2 AND a dog :.5 AND a fox:3.": [("a cat", 2.0), (" a dog", 0.5), (" a fox", 3.0)],
    "a cat :0.5": [("a cat", 0.5)],  # a trailing weight without AND counts too
    "a cat,AND,a dog": [("a cat,", None), (",a dog", None)],
    "a cat AND": [("a cat", None), ("", None)],
    "a (red:1.2) cat AND [dog:fox:0.5]": [("a (red:1.2) cat", None), (" [dog:fox:0.5]", None)],
    "an ANDROID and a BAND": [("an ANDROID and a BAND", None)],  # inside a word, or lowercase: not a split
    "a cat ANDa dog and more": [("a cat ANDa dog and more", None)],
    "a cat :x": [("a cat :x", None)],
}


@pytest.mark.parametrize("prompt", list(A1111_SPLITS))
def test_parts_are_split_as_a1111(prompt):
    assert split_prompt(prompt) == A1111_SPLITS[prompt]


def test_only_one_part_without_a_weight_is_a_plain_prompt():
    assert composable_parts("an ANDROID and a BAND") is None
    assert composable_parts("a [cat:dog:0.5]") is None  # prompt editing's number is inside its brackets
    assert composable_parts("a cat :0.5") == [("a cat", 0.5)]
    assert composable_parts("a cat AND a dog :0") == [("a cat", 1.0), (" a dog", 0.0)]


def _base(model, **kw):
    return {"model": str(model), "steps": 4, "seed": 3, "width": 64, "height": 64, "cfg": 5.0, "sampler": "Euler",
            **kw}


def _px(result) -> np.ndarray:
    return np.asarray(result.image, dtype=np.int16)


def _hand_composed(session, parts, negative, cfg, steps, seed, size=64):
    """A1111's composable diffusion written out: the negative prompt and each part through the UNet one at a time,
    each part encoded alone; noise = uncond + cfg * sum w (cond - uncond), A1111's combine_denoised (CFG 1 and
    below: its value at 1); the sampler stepped on that; then decoded."""
    encoder = session.encoder
    return _hand_loop(session, encoder.encode(negative).embeds,
                      [(encoder.encode(text).embeds, weight) for text, weight in parts], cfg, steps, seed, size)


def _hand_loop(session, uncond_embeds, part_embeds, cfg, steps, seed, size=64):
    """The loop of _hand_composed on given text embeddings: the negative prompt's and each part's, as the UNet is
    to see them."""
    pipe = session.pipe
    scheduler = get_sampler("Euler").make(session.base_scheduler)
    scheduler.set_timesteps(steps)
    cell = pipe.vae_scale_factor
    shape = (1, pipe.unet.config.in_channels, size // cell, size // cell)
    latents = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed)) * scheduler.init_noise_sigma
    scale = max(cfg, 1.0)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.scale_model_input(latents, t)
            uncond = pipe.unet(x, t, encoder_hidden_states=uncond_embeds).sample
            noise = uncond.clone()
            for embeds, weight in part_embeds:
                noise += (pipe.unet(x, t, encoder_hidden_states=embeds).sample - uncond) * (weight * scale)
            latents = scheduler.step(noise, t, latents).prev_sample
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return np.asarray(pipe.image_processor.postprocess(image, output_type="pil")[0], dtype=np.int16)


@pytest.mark.parametrize("cfg", [5.0, 1.0])
def test_the_prediction_is_a1111s_formula(tiny_model, tiny_session, cfg):
    """Against the loop written by hand: the same picture (within one level of 255: the UNet runs the parts as one
    batch here, one at a time there). At CFG 1 the weights 1 + 0.5 do not sum to 1, so the uncond counts too, as in
    A1111. The UNet sees the negative prompt and each part encoded alone, one row each."""
    prompt, negative = f"{CAT} AND {DOG} :0.5", "blurry"
    seen = []
    hook = tiny_session.pipe.unet.register_forward_hook(
        lambda module, args, kwargs, output: seen.append(kwargs["encoder_hidden_states"]), with_kwargs=True)
    try:
        events = []
        drawn = txt2img(GenerateSettings(prompt=prompt, negative=negative, **_base(tiny_model[0], cfg=cfg)),
                        tiny_session, on_event=events.append)[0]
    finally:
        hook.remove()
    encoder = tiny_session.encoder
    rows = torch.cat([encoder.encode(text).embeds for text in (negative, CAT, " " + DOG)])
    assert len(seen) == 4 and all(torch.equal(embeds, rows) for embeds in seen)
    assert any("composable diffusion (AND): 2 part(s) at weight(s) 1, 0.5" in e.text for e in events
               if hasattr(e, "text"))
    by_hand = _hand_composed(tiny_session, [(CAT, 1.0), (DOG, 0.5)], negative, cfg, steps=4, seed=3)
    assert np.abs(_px(drawn) - by_hand).max() <= 1
    plain = txt2img(GenerateSettings(prompt=CAT, negative=negative, **_base(tiny_model[0], cfg=cfg)), tiny_session)[0]
    assert np.abs(_px(plain) - by_hand).max() > 10  # the second part changes the picture: the check above bites


def test_the_negative_prompt_meets_the_parts_as_a1111s_pad_modes_say(tiny_model, tiny_session):
    """A long part (two chunks) and a short one, padded to it by repeating its last vector; against them a short
    negative prompt, then a long one. "on": the shorter side padded with the empty prompt's chunk; "v0": the
    negative prompt padded by its last vector, or cut; "off": the negative prompt over its own length, the UNet run
    apart. Each against the loop written by hand; the three differ; the PNG's "Pad conds" keys are A1111's."""
    encode = lambda text: tiny_session.encoder.encode(text).embeds  # noqa: E731
    long = ", ".join(["a red house by the sea"] * 14)
    assert encode(long).shape[1] == 154 and encode(CAT).shape[1] == 77

    def repeated(embeds, to):
        return torch.cat([embeds, embeds[:, -1:].repeat(1, max(0, to - embeds.shape[1]), 1)], dim=1)[:, :to]

    cases = {  # prompt, negative prompt: the parts as the UNet sees them, padded among themselves
        (f"{CAT} AND {long}", "blurry"): [repeated(encode(CAT), 154), encode(" " + long)],
        (f"{CAT} AND {DOG}", long): [encode(CAT), encode(" " + DOG)]}
    empty = encode("")
    for (prompt, negative), parts in cases.items():
        uncond = encode(negative)
        short_negative = uncond.shape[1] < parts[0].shape[1]
        hand = {"on": (torch.cat([uncond, empty], dim=1), parts) if short_negative else
                (uncond, [torch.cat([p, empty], dim=1) for p in parts]),
                "v0": (repeated(uncond, parts[0].shape[1]), parts), "off": (uncond, parts)}
        drawn = {}
        for mode, (hand_uncond, hand_parts) in hand.items():
            drawn[mode] = txt2img(GenerateSettings(prompt=prompt, negative=negative, pad_conds=mode,
                                                   **_base(tiny_model[0])), tiny_session)[0]
            by_hand = _hand_loop(tiny_session, hand_uncond, [(p, 1.0) for p in hand_parts], 5.0, 4, 3)
            assert np.abs(_px(drawn[mode]) - by_hand).max() <= 1, (negative, mode)
        assert np.abs(_px(drawn["on"]) - _px(drawn["off"])).max() > 5 and \
            np.abs(_px(drawn["v0"]) - _px(drawn["off"])).max() > 5 and \
            np.abs(_px(drawn["on"]) - _px(drawn["v0"])).max() > 5, negative
        keys = [("Pad conds: True" in drawn[m].parameters, "Pad conds v0: True" in drawn[m].parameters) for m in hand]
        assert keys == [(True, False), (False, True), (False, False)], negative
    # parts of different lengths against a negative prompt as long as the longer: nothing met unequal, no key
    equal = txt2img(GenerateSettings(prompt=f"{CAT} AND {long}", negative=long, **_base(tiny_model[0])),
                    tiny_session)[0]
    assert "Pad conds" not in equal.parameters


def test_a_prompt_without_and_draws_as_before(tiny_model, tiny_session):
    """No AND and no trailing weight: no hooks, the UNet gets diffusers' own two rows, and the picture is bit for
    bit the pipeline's with the prompt's embeddings (what personae drew before AND was read)."""
    prompt, negative = "an ANDROID and a BAND, (red:1.2)", "blurry AND dark"  # the negative prompt is never split
    rows = []
    hook = tiny_session.pipe.unet.register_forward_pre_hook(
        lambda module, args, kwargs: rows.append(kwargs["encoder_hidden_states"]), with_kwargs=True)
    try:
        drawn = txt2img(GenerateSettings(prompt=prompt, negative=negative, **_base(tiny_model[0])), tiny_session)[0]
    finally:
        hook.remove()
    positive, uncond = tiny_session.encoder.encode_pair(prompt, negative)
    assert all(torch.equal(r, torch.cat([uncond.embeds, positive.embeds])) for r in rows)
    pipe = tiny_session.pipeline(scheduler=get_sampler("Euler").make(tiny_session.base_scheduler))
    with torch.no_grad():
        direct = pipe(prompt_embeds=positive.embeds, negative_prompt_embeds=uncond.embeds, num_inference_steps=4,
                      guidance_scale=5.0, generator=[torch.Generator("cpu").manual_seed(3)], width=64,
                      height=64).images[0]
    assert np.array_equal(_px(drawn), np.asarray(direct, dtype=np.int16))
    assert not tiny_session.pipe.unet._forward_hooks and not tiny_session.pipe.unet._forward_pre_hooks


def test_each_part_follows_its_own_prompt_editing(tiny_model, tiny_session):
    """"[cat:house:2] AND dog": the first part switches after step 2, the second never; the negative prompt's
    schedule applies to the uncond row."""
    seen = []
    hook = tiny_session.pipe.unet.register_forward_hook(
        lambda module, args, kwargs, output: seen.append(kwargs["encoder_hidden_states"]), with_kwargs=True)
    try:
        txt2img(GenerateSettings(prompt="[a cat:a house:2] AND a dog", negative="[blurry::3]",
                                 **_base(tiny_model[0], steps=6)), tiny_session)
    finally:
        hook.remove()
    encode = lambda text: tiny_session.encoder.encode(text).embeds  # noqa: E731
    for step, embeds in enumerate(seen):
        expected = [encode("blurry" if step <= 3 else ""), encode("a cat" if step <= 2 else "a house"),
                    encode(" a dog")]
        assert torch.equal(embeds, torch.cat(expected)), step


def test_a_weight_of_0_is_the_prompt_without_that_part_in_every_mode(tiny_model, tiny_session, photo, tmp_path):
    """txt2img, img2img, inpainting and the hires fix (whose redraw composes its own prompt): the part at weight 0
    put first, so the part that counts is the second row of the expanded batch."""
    mask = tmp_path / "mask.png"
    Image.fromarray(np.tile((np.arange(64) >= 32).astype(np.uint8)[None, :] * 255, (64, 1))).save(mask)
    modes = {"txt2img": {}, "img2img": {"init_image": str(photo), "strength": 0.75},
             "inpaint": {"init_image": str(photo), "mask": str(mask), "strength": 1.0},
             "hires": {"hires_scale": 1.5, "hires_denoise": 0.6, "hires_upscaler": "latent"},
             "batch of 2": {"batch_size": 2}}
    for mode, extra in modes.items():
        base = _base(tiny_model[0], **extra)
        composed = txt2img(GenerateSettings(prompt=f"{DOG} :0 AND {CAT}", **base), tiny_session)
        plain = txt2img(GenerateSettings(prompt=CAT, **base), tiny_session)
        other = txt2img(GenerateSettings(prompt=f"{DOG} :0.5 AND {CAT}", **base), tiny_session)
        for a, b, c in zip(composed, plain, other):
            assert np.abs(_px(a) - _px(b)).max() <= 1, mode
            assert np.abs(_px(c) - _px(b)).max() > 5, mode


def test_the_hires_redraw_composes_its_own_prompt(tiny_model, tiny_session):
    """The base pass runs three rows (uncond and two parts), the redraw with a plain --hires-prompt two."""
    rows = []
    hook = tiny_session.pipe.unet.register_forward_hook(
        lambda module, args, kwargs, output: rows.append(kwargs["sample"].shape[0] if "sample" in kwargs
                                                         else args[0].shape[0]), with_kwargs=True)
    try:
        txt2img(GenerateSettings(prompt=f"{CAT} AND {DOG}", hires_prompt=CAT, **_base(
            tiny_model[0], hires_scale=1.5, hires_denoise=0.5, hires_upscaler="latent")), tiny_session)
    finally:
        hook.remove()
    assert rows == [3] * 4 + [2] * 4  # 4 base steps; the redraw runs its 4 (A1111's, of a schedule of 4 / 0.5)


def test_controlnet_residuals_are_computed_for_every_part(tiny_model, tiny_session, tmp_path):
    """Each part gets the ControlNet's residuals computed with its own text (as A1111's extension does): the part
    that counts is second, at weight 1, the first at 0, and the picture is the plain prompt's with the control; with
    one unit, and with two units sharing one ControlNet (diffusers' MultiControlNetModel)."""
    from personae.models.controlnet import write_tiny_controlnet

    net = write_tiny_controlnet(tmp_path / "controlnet", base=tiny_model[0], seed=0)
    edges = tmp_path / "edges.png"
    Image.fromarray(np.kron(np.indices((8, 8)).sum(0) % 2 * 255, np.ones((8, 8))).astype(np.uint8)).save(edges)
    unit = {"type": "canny", "image": str(edges), "model": str(net), "weight": 1.0}
    without = txt2img(GenerateSettings(prompt=CAT, **_base(tiny_model[0])), tiny_session)[0]
    for units in ([unit], [unit, {**unit, "weight": 0.5}]):
        base = _base(tiny_model[0], controls=units)
        composed = txt2img(GenerateSettings(prompt=f"{DOG} :0 AND {CAT}", **base), tiny_session)[0]
        plain = txt2img(GenerateSettings(prompt=CAT, **base), tiny_session)[0]
        assert np.abs(_px(composed) - _px(plain)).max() <= 1, len(units)
        assert np.abs(_px(plain) - _px(without)).max() > 5, len(units)  # the control acts on this picture


def test_the_png_keeps_the_prompt_as_written_and_from_png_reproduces(tiny_model, tiny_session, tmp_path):
    from personae.jobs.generate import settings_from_png

    prompt = f"{CAT} AND {DOG} :0.5"
    drawn = txt2img(GenerateSettings(prompt=prompt, **_base(tiny_model[0])), tiny_session)[0]
    assert drawn.parameters.splitlines()[0] == prompt
    info = PngInfo()
    info.add_text("parameters", drawn.parameters)  # A1111's chunk alone, as A1111 writes it
    drawn.image.save(tmp_path / "a1111.png", pnginfo=info)
    stored = settings_from_png(tmp_path / "a1111.png")
    assert stored["prompt"] == prompt
    again = txt2img(GenerateSettings(**{**stored, "model": str(tiny_model[0])}), tiny_session)[0]
    assert np.array_equal(_px(again), _px(drawn))


def test_animate_refuses_and_rather_than_drawing_it_as_words(tiny_model):
    from personae.config.animate import AnimateSettings
    from personae.inference.animate import animate

    for prompt in (f"{CAT} AND {DOG}", f"{CAT} :0.5"):
        with pytest.raises(UserError, match="composable diffusion"):
            animate(AnimateSettings(model=str(tiny_model[0]), motion_adapter="x", prompt=prompt, steps=2))


@pytest.mark.slow
def test_on_the_world_the_weights_pick_the_shape(tmp_path):
    """"circle :w AND square :1-w" (both red on blue, close-up), 20 steps of Euler a, seeds 0-7. Measured over
    seeds 0-23: w = 1 (square at 0) draws exactly the picture of the circle prompt alone; w = 0.8, 24 circles;
    0.7, 23 circles; 0.6, 16 circles and 8 squares; 0.5, 7 and 17; 0.3 and below, 24 squares."""
    from personae.world.check import check
    from personae.world.model import write_world_model

    world = write_world_model(tmp_path / "world")
    circle = "a red circle on a blue background, close-up"
    square = "a red square on a blue background, close-up"
    base = dict(model=str(world), steps=20, seed=0, batch_size=8, sampler="Euler a")
    draw = lambda prompt: txt2img(GenerateSettings(prompt=prompt, **base))  # noqa: E731
    alone, zero = draw(circle), draw(f"{circle} AND {square} :0")
    assert all(np.abs(_px(a) - _px(z)).max() <= 1 for a, z in zip(alone, zero))
    shapes = {w: [check(g.image).shape for g in draw(f"{circle} :{w} AND {square} :{1 - w:g}")] for w in (0.8, 0.2)}
    assert shapes[0.8].count("circle") >= 7 and shapes[0.2].count("square") >= 7, shapes
