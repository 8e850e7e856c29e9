"""`personae animate --from-png FILE`: a clip drawn again from what it or one of its frames stores.

personae's frame PNGs give the clip frame for frame; its GIF / WebP / MP4 / WebM infotext gives the same settings
(and, for a clip at personae's defaults otherwise, the same frames); A1111's AnimateDiff infotext (the extension's
dict or its older `key: value` text) is read by the extension's names, and what it asks for that personae does not
do is said. Tiny model and tiny motion adapter, 32 px, 2-3 steps.
"""

import json

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from personae.cli.main import main
from personae.errors import UserError
from personae.jobs.animate_png import read_clip_settings
from personae.media.video import read_clip_comment, read_clip_frames

# models: the full tier only; one thread (conftest.one_thread)
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]



@pytest.fixture(scope="module")
def made(tiny_model, motion_dir, tmp_path_factory):
    """A clip with prompt travel, a style, windows, FreeInit and a loop number, in every format and as frames."""
    root = tmp_path_factory.mktemp("from-png")
    (root / "styles.csv").write_text("name,prompt,negative_prompt\nsoft,\"{prompt}, soft light\",blurry\n")
    outs = [root / f"clip.{s}" for s in ("gif", "webp", "mp4", "webm")]
    assert main(["animate", "--model", str(tiny_model[0]), "--motion-adapter", str(motion_dir), "--prompt",
                 "a cat\n0: red\n9: blue", "--negative", "ugly", "--steps", "3", "--width", "32", "--height", "32",
                 "--frames", "10", "--context", "8", "--context-stride", "2", "--loop-number", "2", "--freeinit",
                 "--freeinit-iters", "2", "--sampler", "Euler", "--cfg", "5", "--style", "soft", "--styles-file",
                 str(root / "styles.csv"), "--webp-lossless", *sum((["--out", str(o)] for o in outs), []),
                 "--frames-dir", str(root / "frames"), "--quiet"]) == 0
    return root


def frames_of(path):
    return np.stack(read_clip_frames(path))


def test_a_frame_png_gives_the_clip_frame_for_frame(made, tmp_path):
    assert main(["animate", "--from-png", str(made / "frames" / "frame-0004.png"), "--out", str(tmp_path / "a.gif"),
                 "--quiet"]) == 0
    assert np.array_equal(frames_of(tmp_path / "a.gif"), frames_of(made / "clip.gif"))
    assert read_clip_comment(tmp_path / "a.gif") == read_clip_comment(made / "clip.gif")  # the style applied once
    assert main(["animate", "--from-png", str(made / "frames" / "frame-0000.png"), "--seed", "8", "--out",
                 str(tmp_path / "b.gif"), "--quiet"]) == 0  # another option wins over the file's
    assert "Seed: 8," in read_clip_comment(tmp_path / "b.gif")
    assert not np.array_equal(frames_of(tmp_path / "b.gif"), frames_of(made / "clip.gif"))


def test_every_clip_format_gives_the_same_settings(made, tiny_model, motion_dir, tmp_path):
    readings = [read_clip_settings(made / f"clip.{s}") for s in ("gif", "webp", "mp4", "webm")]
    assert all(r.settings == readings[0].settings for r in readings)
    s = readings[0].settings
    assert (s["frames"], s["context"], s["context_stride"], s["loop_number"], s["freeinit"], s["freeinit_iters"],
            s["sampler"], s["steps"], s["cfg"], s["width"], s["height"]) == (10, 8, 2, 2, True, 2, "Euler", 3, 5.0,
                                                                             32, 32)
    assert s["prompt"] == "a cat\n0: red\n9: blue\n, soft light" and s["negative"] == "ugly, blurry"  # a tail line
    assert readings[0].model == "tiny" and readings[0].motion == "motion" and readings[0].notes == []
    # the infotext holds the style's words already: drawn from it, the clip is the same
    assert main(["animate", "--from-png", str(made / "clip.webm"), "--model", str(tiny_model[0]),
                 "--motion-adapter", str(motion_dir), "--out", str(tmp_path / "again.gif"), "--quiet"]) == 0
    assert np.array_equal(frames_of(tmp_path / "again.gif"), frames_of(made / "clip.gif"))


def a1111_frame(path, animatediff: str, extra: str = "") -> str:
    text = ("masterpiece, a girl walking\nNegative prompt: lowres\nSteps: 20, Sampler: DPM++ 2M, Schedule type: "
            "Karras, CFG scale: 7, Seed: 1234, Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
            f"AnimateDiff: {json.dumps(animatediff)}{extra}, Version: v1.9.4")
    info = PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return text


@pytest.mark.parametrize("form", ["dict", "text"])
def test_an_a1111_animatediff_frame_is_read_by_the_extensions_names(tmp_path, form):
    values = {"model": "mm_sd_v15_v2.ckpt", "video_length": 32, "fps": 12, "loop_number": 1, "closed_loop": "R-P",
              "batch_size": 16, "stride": 1, "overlap": -1, "interp": "FILM", "interp_x": 10, "freeinit_enable": True,
              "mm_hash": "69ed0f5f"}
    text = str(values) if form == "dict" else ", ".join(f"{k}: {v}" for k, v in values.items())
    a1111_frame(tmp_path / "00001.png", text, ', ControlNet 0: "Module: openpose, Model: control_v11p_sd15_openpose '
                                              '[cab727d4], Weight: 1.0", ADetailer model: face_yolov8n.pt')
    reading = read_clip_settings(tmp_path / "00001.png")
    s = reading.settings
    assert (s["frames"], s["fps"], s["loop_number"], s["context"], s["freeinit"]) == (32, 12.0, 1, 16, True)
    assert (s["prompt"], s["negative"], s["steps"], s["sampler"], s["cfg"], s["seed"], s["width"], s["height"]) == (
        "masterpiece, a girl walking", "lowres", 20, "DPM++ 2M Karras", 7.0, 1234, 512, 768)
    assert (reading.model, reading.motion) == ("v1-5-pruned-emaonly", "mm_sd_v15_v2.ckpt")
    notes = "; ".join(reading.notes)
    for said in ("closed loop R-P", "stride and overlap", "frame interpolation FILM",
                 "ControlNet 0 (its control frames", "ADetailer model", "not the same frames"):
        assert said in notes, said


def test_the_command_line_names_what_it_needs_and_what_it_leaves(tmp_path, tiny_model, motion_dir, capsys):
    frame = tmp_path / "00001.png"
    a1111_frame(frame, "model: mm_sd_v15_v2.ckpt, video_length: 4, fps: 8, loop_number: 0, closed_loop: R-P, "
                       "batch_size: 16, stride: 1, overlap: -1, interp: Off, interp_x: 10")
    assert main(["animate", "--from-png", str(frame), "--model", str(tiny_model[0]), "--out",
                 str(tmp_path / "c.gif")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert '--motion-adapter is required: ' in err and '"mm_sd_v15_v2.ckpt"' in err and "Traceback" not in err
    assert main(["animate", "--from-png", str(frame), "--model", str(tiny_model[0]), "--motion-adapter",
                 str(motion_dir), "--steps", "2", "--width", "32", "--height", "32", "--out",
                 str(tmp_path / "c.gif")]) == 0
    err = capsys.readouterr().err
    assert "not applied" in err and "not the same frames" in err and "closed loop" not in err  # 4 frames: no windows
    with Image.open(tmp_path / "c.gif") as clip:
        assert clip.n_frames == 4
        assert "Seed: 1234," in clip.info["comment"].decode() and "Sampler: DPM++ 2M Karras" in clip.info[
            "comment"].decode()


def test_files_that_hold_no_clip_settings_are_said(tmp_path, made):
    from personae.media.png import save_png

    picture = tmp_path / "picture.png"
    save_png(Image.new("RGB", (8, 8)), picture, "a cat\nSteps: 4, Sampler: Euler, Seed: 1",
             {"personae": json.dumps({"model": "m", "prompt": "a cat"})})
    bare = tmp_path / "bare.png"
    Image.new("RGB", (8, 8)).save(bare)
    broken = tmp_path / "broken.png"
    save_png(Image.new("RGB", (8, 8)), broken, "x", {"personae": "{not json"})
    (tmp_path / "bogus.webm").write_text("not a video\n")
    weird = tmp_path / "weird.png"
    a1111_frame(weird, "{'model': __import__('os')}")
    for path, says in ((picture, "a picture's settings, not a clip's"), (bare, "carries no clip settings"),
                       (broken, "not valid JSON"), (weird, "not A1111's AnimateDiff settings"),
                       (tmp_path / "none.gif", "does not exist"), (made / "styles.csv", "not a clip or picture"),
                       (tmp_path / "bogus.webm", r"could not be read \(.*Invalid data found")):
        with pytest.raises(UserError, match=says):
            read_clip_settings(path)
