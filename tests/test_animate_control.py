"""ControlNet for clips (`personae animate --control TYPE:FRAMES`): a map per frame from a folder, a video or one
picture; A1111's unit settings; the world ControlNet steering a clip's shape along its maps.

Tiny model, tiny motion adapter and tiny ControlNet (32 px, 2 steps) for the plumbing; the shapes world for the
behaviour.
"""

import numpy as np
import pytest
from PIL import Image

from personae.config.animate import AnimateSettings
from personae.errors import UserError
from personae.inference.animate import animate, open_for
from personae.media.video import write_gif


@pytest.fixture(scope="module")
def parts(tiny_model, motion_dir, tmp_path_factory):
    """(tiny model, tiny motion adapter, tiny ControlNet, a folder of 4 control frames, the same as a GIF)."""
    from personae.models.controlnet import write_tiny_controlnet

    root = tmp_path_factory.mktemp("clip-control")
    net = write_tiny_controlnet(root / "controlnet", base=tiny_model[0], seed=0)
    frames = []
    for i in range(4):  # a white square walking right on black
        a = np.zeros((32, 32, 3), np.uint8)
        a[10:22, 2 + 5 * i:14 + 5 * i] = 255
        frames.append(Image.fromarray(a))
    (root / "frames").mkdir()
    for i, frame in enumerate(frames):  # names whose order needs numbers read as numbers
        frame.save(root / "frames" / f"f{[1, 2, 10, 11][i]}.png")
    write_gif(frames, root / "walk.gif", 8)
    return tiny_model[0], motion_dir, net, root / "frames", root / "walk.gif", frames


def settings(parts, controls=(), **kw):
    model, motion, net, *_ = parts
    return AnimateSettings(**{"model": str(model), "motion_adapter": str(motion), "prompt": "a photo of a cat",
                              "steps": 2, "seed": 7, "width": 32, "height": 32, "frames": 4, "context": 4,
                              "context_stride": 2, "controls": [{"model": str(net), **c} for c in controls], **kw})


@pytest.fixture(scope="module")
def held(parts):
    return open_for(settings(parts))


def pixels(clip):
    return np.stack([np.asarray(f, dtype=np.int16) for f in clip.frames])


def test_a_folder_a_gif_and_one_picture_steer_the_clip(parts, held):
    _, _, _, folder, gif, frames = parts
    plain = animate(settings(parts), held)
    from_folder = animate(settings(parts, [{"type": "raw", "image": str(folder)}]), held)
    from_gif = animate(settings(parts, [{"type": "raw", "image": str(gif)}]), held)
    assert np.abs(pixels(from_folder) - pixels(plain)).mean() > 0.5
    # the GIF holds the same frames (a GIF's palette keeps black and white exact): the same clip
    assert np.array_equal(pixels(from_gif), pixels(from_folder))
    # frame i is steered by map i: the folder read in number order (f2 before f10), not as the names sort
    swapped = settings(parts, [{"type": "raw", "image": str(gif)}])
    write_gif([frames[0], frames[2], frames[1], frames[3]], parts[4].parent / "swapped.gif", 8)
    other = animate(swapped.model_copy(update={"controls": [swapped.controls[0].model_copy(
        update={"image": str(parts[4].parent / "swapped.gif")})]}), held)
    assert not np.array_equal(pixels(other), pixels(from_folder))
    # one picture: the same map for every frame
    one = animate(settings(parts, [{"type": "raw", "image": str(folder / "f1.png")}]), held)
    assert np.abs(pixels(one) - pixels(from_folder)).mean() > 0.5
    # weight 0: the ControlNet pipeline adds nothing, so the plain clip comes out
    off = animate(settings(parts, [{"type": "raw", "image": str(folder), "weight": 0.0}]), held)
    assert np.array_equal(pixels(off), pixels(plain))
    assert "ControlNet 0: \"Module: none, Model: controlnet" in from_folder.parameters
    # the motion pipeline is left as it was: a plain clip after controlled ones is the plain clip
    assert np.array_equal(pixels(animate(settings(parts), held)), pixels(plain))


def test_unit_settings_and_windows_reach_the_clip(parts, held):
    """A1111's Guidance End, Control Mode and Low VRAM act on a clip as on a picture; a clip longer than its context
    runs in FreeNoise's windows with a map per frame; prompt travel reaches the ControlNet too."""
    _, _, _, folder, gif, frames = parts
    full = animate(settings(parts, [{"type": "raw", "image": str(folder)}]), held)
    # 4 steps: A1111's sampling percents 0, 0, 0.25, 0.5; Guidance Start 0.3 controls the last step only (whose
    # change the tiny model does not carry to a pixel: the clip is then the uncontrolled one)
    four = animate(settings(parts, [{"type": "raw", "image": str(folder)}], steps=4), held)
    late = animate(settings(parts, [{"type": "raw", "image": str(folder)}], steps=4, control_start=0.3), held)
    assert not np.array_equal(pixels(late), pixels(four))
    important = animate(settings(parts, [{"type": "raw", "image": str(folder),
                                          "control_mode": "ControlNet is more important"}]), held)
    assert not np.array_equal(pixels(important), pixels(full))
    # "Low VRAM": the unit's ControlNet in main memory between its calls (a hook moves it), the same clip
    low = animate(settings(parts, [{"type": "raw", "image": str(folder), "low_vram": True}]), held)
    net = held.session.controlnets[str(parts[2])][1]
    assert type(net._hf_hook).__name__ == "OnDeviceForEachCall" and "Low Vram: True" in low.parameters
    assert np.array_equal(pixels(low), pixels(full))
    long_frames = parts[4].parent / "long"
    long_frames.mkdir(exist_ok=True)
    for i in range(7):
        frames[i % 4].save(long_frames / f"{i:02d}.png")
    windowed = animate(settings(parts, [{"type": "raw", "image": str(long_frames)}], frames=7), held)
    assert len(windowed.frames) == 7 and "Context: 4/2" in windowed.parameters
    travelling = animate(settings(parts, [{"type": "raw", "image": str(folder)}],
                                  prompt="0: a photo of a cat\n3: a photo of a dog"), held)
    assert not np.array_equal(pixels(travelling), pixels(full))


@pytest.mark.parametrize("unit, frames, says", [
    ({"type": "raw", "image": "FOLDER"}, 6, "holds 4 frames; the clip has 6"),
    ({"type": "raw", "image": "GIF"}, 5, "holds 4 frames; the clip has 5"),
    ({"type": "raw", "image": "EMPTY"}, 4, "holds no pictures"),
    ({"type": "raw", "image": "FOLDER", "hr_option": "Low res only"}, 4, "a clip has no hires fix"),
    ({"type": "cany", "image": "FOLDER"}, 4, "cany"),
])
def test_control_input_a_clip_cannot_use_is_refused_before_a_model_loads(parts, tmp_path, unit, frames, says):
    _, _, _, folder, gif, _ = parts
    (tmp_path / "empty").mkdir()
    image = {"FOLDER": str(folder), "GIF": str(gif), "EMPTY": str(tmp_path / "empty")}[unit["image"]]
    s = settings(parts, [{**unit, "image": image}], frames=frames)
    with pytest.raises(UserError, match=says):
        animate(s, on_event=lambda e: pytest.fail(f"went on to {e}"))


def test_the_command_line_takes_units_for_a_clip(parts, tmp_path):
    from personae.cli.main import main

    model, motion, net, folder, *_ = parts
    out = tmp_path / "clip.gif"
    assert main(["animate", "--model", str(model), "--motion-adapter", str(motion), "--prompt", "a cat",
                 "--frames", "4", "--context", "4", "--context-stride", "2", "--steps", "2", "--width", "32",
                 "--height", "32", "--control", f"raw:{folder}:0.8", "--controlnet", f"raw={net}",
                 "--control-mode", "My prompt is more important", "--out", str(out), "--quiet"]) == 0
    with Image.open(out) as clip:
        assert clip.n_frames == 4
        comment = clip.info["comment"].decode()
    assert "ControlNet 0:" in comment and "Weight: 0.8" in comment and "My prompt is more important" in comment


def test_a_clip_starts_from_frames_at_a_denoising_strength(parts, held):
    """`--init-image FRAMES --strength S` (A1111's AnimateDiff img2img / video source): a folder, a GIF or one
    picture; the clip keeps more of them at a lower strength; with ControlNet units too; any sampler; the progress
    counts the steps the pass runs; the motion pipeline is left as it was."""
    from personae.events import Progress

    _, _, _, folder, gif, frames = parts
    plain = animate(settings(parts), held)
    source = np.stack([np.asarray(f, dtype=np.int16) for f in frames])
    events = []
    low = animate(settings(parts, init_image=str(folder), strength=0.3, steps=4), held, on_event=events.append)
    high = animate(settings(parts, init_image=str(folder), strength=0.9, steps=4), held)
    assert np.abs(pixels(low) - source).mean() < np.abs(pixels(high) - source).mean()
    assert np.abs(pixels(low) - source).mean() < np.abs(pixels(plain) - source).mean()
    assert "Denoising strength: 0.3" in low.parameters and "Denoising strength" not in plain.parameters
    done = [e for e in events if isinstance(e, Progress)]
    assert done and done[-1].done == done[-1].total == 1  # DDIM: int(0.3 x 4) = 1 step of 4, as diffusers cuts it
    from_gif = animate(settings(parts, init_image=str(gif), strength=0.3, steps=4), held)
    assert np.array_equal(pixels(from_gif), pixels(low))
    one = animate(settings(parts, init_image=str(folder / "f1.png"), strength=0.3, steps=4), held)
    assert not np.array_equal(pixels(one), pixels(low))
    euler = animate(settings(parts, init_image=str(folder), strength=0.5, steps=4, sampler="Euler a"), held)
    assert len(euler.frames) == 4
    both = animate(settings(parts, [{"type": "raw", "image": str(folder)}], init_image=str(folder), strength=0.5,
                            steps=4), held)
    alone = animate(settings(parts, init_image=str(folder), strength=0.5, steps=4), held)
    assert not np.array_equal(pixels(both), pixels(alone)) and "ControlNet 0" in both.parameters
    assert np.array_equal(pixels(animate(settings(parts), held)), pixels(plain))
    with pytest.raises(UserError, match="init clip, holds 4 frames; the clip has 6"):
        animate(settings(parts, init_image=str(folder), frames=6), on_event=lambda e: pytest.fail(f"went on: {e}"))


def test_an_animated_webp_or_a_webm_is_read_as_its_frames_and_a_still_webp_as_one_picture(parts, tmp_path):
    """Clips as A1111's AnimateDiff also saves them: a WebP of several frames is a clip (lossless: the same frames);
    a WebM is decoded by ffmpeg; a WebP of one frame is one picture for every frame."""
    from personae.inference.animate_control import clip_frames
    from personae.media.video import write_clip

    frames = parts[5]
    write_clip(frames, tmp_path / "walk.webp", 8, webp_lossless=True)
    write_clip(frames, tmp_path / "walk.webm", 8)
    frames[1].save(tmp_path / "still.webp", lossless=True)
    read = [np.asarray(p) for p in clip_frames(str(tmp_path / "walk.webp"), 4, "control 0 (raw)")]
    assert all(np.array_equal(r, np.asarray(f)) for r, f in zip(read, frames, strict=True))
    webm = [np.asarray(p, dtype=np.int16) for p in clip_frames(str(tmp_path / "walk.webm"), 4, "control 0 (raw)")]
    assert max(np.abs(r - np.asarray(f, dtype=np.int16)).mean() for r, f in zip(webm, frames, strict=True)) < 12
    still = clip_frames(str(tmp_path / "still.webp"), 4, "control 0 (raw)")
    assert len(still) == 4 and all(np.array_equal(np.asarray(p), np.asarray(frames[1])) for p in still)
    with pytest.raises(UserError, match="walk.webp, control 0 \\(raw\\), holds 4 frames; the clip has 6"):
        clip_frames(str(tmp_path / "walk.webp"), 6, "control 0 (raw)")
