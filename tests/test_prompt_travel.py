"""Prompt travel in animate: "frame: prompt" lines between head and tail lines, read as A1111's AnimateDiff extension
reads them; every frame conditioned on the slerp of the keyframes around it.

Tiny model + tiny motion adapter, 32 px, 2 steps. What the UNet is given is read at its first cross-attention layer,
so the tests see the conditioning each frame really gets, in the plain path and in FreeNoise's windows.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from personae.config.animate import AnimateSettings
from personae.config.base import parse_settings
from personae.config.prompt_travel import TravelError, parse_travel
from personae.errors import UserError
from personae.inference.animate import animate, open_for
from personae.inference.prompt_travel import frame_blend, slerp
from personae.media.png import parse_parameters

TRAVEL = "a photo of a cat\n0: sitting on a red sofa\n3: running in the snow\nlate evening"


def test_head_keyframes_and_tail_are_joined_as_a1111_joins_them():
    travel = parse_travel(TRAVEL, 4)
    assert travel.keyframes == ((0, "a photo of a cat, sitting on a red sofa, late evening"),
                                (3, "a photo of a cat, running in the snow, late evening"))
    # several head and tail lines, joined by ", "; without the extension's empty parts and doubled commas
    assert parse_travel("a\nb,\n2: c\n5:d,\n\ne\nf", 8).keyframes == ((2, "a, b, c, e, f"), (5, "a, b, d, e, f"))
    assert parse_travel("0: a cat\n7: a dog", 8).keyframes == ((0, "a cat"), (7, "a dog"))
    # an ordinary prompt, also one with numbers or colons in it, is not a travel
    for prompt in ("a photo of a cat", "a cat: sitting, 3 dogs", "(red:1.2) fox\n1girl, solo", ""):
        assert parse_travel(prompt, 16) is None


@pytest.mark.parametrize("prompt, frames, says", [
    ("0: a cat\n16: a dog", 16, "keyframe 16 is past the clip's last frame (16 frames"),
    ("8: a cat\n2: a dog", 16, "keyframe 2 comes after keyframe 8"),
    ("0: a cat\n0: a dog", 16, "keyframe 0 comes after keyframe 0"),
    ("0: a cat\n5:\n9: a dog", 16, 'the keyframe "5:" has no prompt'),
    ("0: a cat\nsnow\n9: a dog", 16, 'the keyframe line "9: a dog" comes after a line that is not a keyframe'),
])
def test_a_travel_that_cannot_be_drawn_is_refused_by_the_settings(prompt, frames, says):
    with pytest.raises(TravelError, match=says.replace("(", r"\(")):
        parse_travel(prompt, frames)
    with pytest.raises(UserError) as err:
        parse_settings(AnimateSettings, {"model": "m", "motion_adapter": "a", "prompt": prompt, "frames": frames},
                       "the animate options")
    assert says in str(err.value) and "prompt:" in str(err.value)


def test_frames_blend_the_keyframes_around_them():
    # before the first keyframe the first, after the last the last, between them by distance
    assert frame_blend([2, 6], 9) == [(2, 2, 0.0), (2, 2, 0.0), (2, 6, 0.0), (2, 6, 0.25), (2, 6, 0.5),
                                      (2, 6, 0.75), (6, 6, 0.0), (6, 6, 0.0), (6, 6, 0.0)]
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 6, generator=gen), torch.randn(4, 6, generator=gen)
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-6) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-6)
    # on the great circle: halfway between two unit vectors is a unit vector (a straight line's middle is shorter)
    ua, ub = a / a.norm(), b / b.norm()
    assert abs(float(slerp(ua, ub, 0.5).norm()) - 1.0) < 1e-5 and float(((ua + ub) / 2).norm()) < 0.9
    # nearly parallel: a straight line (slerp would divide by almost 0)
    assert torch.allclose(slerp(a, a * 1.5, 0.5), a * 1.25, atol=1e-6)


def settings(model, motion, **kw):
    return AnimateSettings(**{"model": str(model), "motion_adapter": str(motion), "prompt": TRAVEL, "steps": 2,
                              "seed": 7, "width": 32, "height": 32, "frames": 4, "context": 4, "context_stride": 2,
                              "negative": "blurry", **kw})


@pytest.fixture(scope="module")
def clip_session(tiny_model, motion_dir):
    return open_for(settings(tiny_model[0], motion_dir))


def conditioning_seen(clip_session, s: AnimateSettings) -> tuple[torch.Tensor, object]:
    """(what the UNet's first cross-attention was given at the first step, the clip)."""
    unet = clip_session.pipe.unet
    attn = next(m for name, m in unet.named_modules() if name.endswith("attn2"))
    seen = []
    handle = attn.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["encoder_hidden_states"]),
                                            with_kwargs=True)
    try:
        clip = animate(s, clip_session)
    finally:
        handle.remove()
    return seen[0], clip


@pytest.mark.parametrize("frames", [4, 7])  # 7 frames: FreeNoise's windows of 4
def test_each_frame_is_conditioned_on_its_keyframes(tiny_model, motion_dir, clip_session, frames):
    prompt = f"a photo of a cat\n1: sitting on a red sofa\n{frames - 2}: running in the snow\nlate evening"
    s = settings(tiny_model[0], motion_dir, prompt=prompt, frames=frames)
    given, clip = conditioning_seen(clip_session, s)
    encoder = clip_session.session.encoder
    first, last, negative = encoder.encode_alike(
        ["a photo of a cat, sitting on a red sofa, late evening", "a photo of a cat, running in the snow, late evening",
         "blurry"], s.clip_skip)
    assert given.shape == (2 * frames, *first.embeds.shape[1:])
    negatives, positives = given[:frames], given[frames:]
    assert all(torch.equal(row, negative.embeds[0]) for row in negatives)  # one negative prompt for every frame
    assert torch.equal(positives[0], first.embeds[0]) and torch.equal(positives[1], first.embeds[0])
    assert torch.equal(positives[-2], last.embeds[0]) and torch.equal(positives[-1], last.embeds[0])
    between = frames - 3  # frames 2 .. frames - 3 lie between the keyframes 1 and frames - 2
    for frame in range(2, frames - 2):
        expected = slerp(first.embeds[0], last.embeds[0], (frame - 1) / between)
        assert torch.allclose(positives[frame], expected, atol=1e-6), frame
    assert len({tuple(np.asarray(f).ravel()[:64]) for f in clip.frames}) == frames  # the clip was drawn


def test_keyframes_of_one_prompt_draw_that_prompts_clip(tiny_model, motion_dir, clip_session):
    """Every keyframe the same: the frames are those of the joined prompt as an ordinary prompt, bit for bit."""
    travel = animate(settings(tiny_model[0], motion_dir, prompt="a photo of a cat\n0: on a sofa\n3: on a sofa"),
                     clip_session)
    plain = animate(settings(tiny_model[0], motion_dir, prompt="a photo of a cat, on a sofa"), clip_session)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(travel.frames, plain.frames))
    other = animate(settings(tiny_model[0], motion_dir, prompt="a photo of a cat\n0: on a sofa\n3: in the snow"),
                    clip_session)
    assert not np.array_equal(np.asarray(other.frames[3]), np.asarray(plain.frames[3]))


def test_without_guidance_and_with_a_long_keyframe(tiny_model, motion_dir, clip_session):
    """CFG 1: the prompt's rows alone. A keyframe past 75 tokens: every keyframe padded to its two chunks."""
    long = ", ".join(["a red sofa"] * 30)
    s = settings(tiny_model[0], motion_dir, prompt=f"0: a cat\n3: {long}", cfg=1.0)
    given, _ = conditioning_seen(clip_session, s)
    first, last = clip_session.session.encoder.encode_alike(["a cat", long], s.clip_skip)
    assert first.chunks == 2 and given.shape == (4, *first.embeds.shape[1:])
    assert torch.equal(given[0], first.embeds[0]) and torch.equal(given[3], last.embeds[0])


def test_the_clip_and_its_frames_carry_the_whole_travelling_prompt(tiny_model, motion_dir, clip_session, tmp_path):
    from personae.jobs.animate import save_clip
    from personae.media.png import read_png_text

    clip = animate(settings(tiny_model[0], motion_dir), clip_session)
    [frame] = save_clip(clip, [], tmp_path / "frames")[:1]
    prompt, negative, params = parse_parameters(read_png_text(frame)["parameters"])
    assert prompt == TRAVEL and negative == "blurry" and params["Frames"] == "4"
    # the PNG's settings draw the same clip again
    again = animate(AnimateSettings.model_validate_json(read_png_text(frame)["personae"]), clip_session)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(again.frames, clip.frames))


def test_cli_refuses_a_keyframe_past_the_clip_before_loading_anything(tmp_path, tiny_model):
    code = ("import sys; from personae.cli.main import main; rc = main(sys.argv[1:]); "
            "heavy = [m for m in ('diffusers', 'transformers', 'peft') if m in sys.modules]; "
            "print('HEAVY', heavy, file=sys.stderr); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, "animate", "--model", str(tiny_model[0]), "--motion-adapter",
                        str(tmp_path), "--prompt", "a cat\n0: sitting\n20: running", "--frames", "16",
                        "--out", str(tmp_path / "clip.gif")], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2, r.stderr
    said = " ".join(r.stderr.split())
    assert "keyframe 20 is past the clip's last frame (16 frames" in said and "Traceback" not in said
    assert "frames.." not in said and "top level" not in said
    assert "HEAVY []" in r.stderr
    assert not (tmp_path / "clip.gif").exists()


def test_the_web_forms_prompt_boxes_take_lines():
    """The UI's prompt boxes are several lines high, so Enter starts a keyframe line instead of sending the form,
    and a travelling prompt read back from the form is the settings' prompt, line breaks and all."""
    from personae.web.forms import SettingsForm

    form = SettingsForm(AnimateSettings, groups=("prompt", "sampling"), prefix="animate")
    assert form.components["prompt"].lines == 3 and form.components["negative"].lines == 2
    assert form.components["steps"].__class__.__name__ != "Textbox"
    values = form.values(*[TRAVEL if name == "prompt" else None for name in form.components])
    assert values["prompt"] == TRAVEL


def test_a1111_styles_reach_every_keyframe(tmp_path):
    """A style on a travelling prompt wraps every keyframe's prompt, as the extension's frames each get it (appended
    to the text, a style would reach the last line's keyframe alone); the PNG's prompt stays a travel."""
    from personae.data.styles import apply_styles
    from personae.inference.prompt import with_styles

    csv = tmp_path / "styles.csv"
    csv.write_text('name,prompt,negative_prompt\nwrap,"masterpiece, {prompt}, best quality",lowres\n'
                   'light,soft light,blurry\n', encoding="utf-8")
    s = AnimateSettings(model="m", motion_adapter="a", prompt=TRAVEL, frames=4, negative="ugly",
                        styles=["wrap", "light"], styles_file=str(csv))
    styled = with_styles(s)
    assert styled.styles == [] and styled.negative == apply_styles("a", "ugly", ["wrap", "light"], str(csv))[1]
    plain = parse_travel(TRAVEL, 4).keyframes
    assert parse_travel(styled.prompt, 4).keyframes == tuple(
        (frame, apply_styles(text, "", ["wrap", "light"], str(csv))[0]) for frame, text in plain)
    assert parse_travel(styled.prompt, 4).keyframes[1] == (
        3, "masterpiece, a photo of a cat, running in the snow, late evening, best quality, soft light")
