"""AnimateDiff: GIF/WebP/MP4/WebM with settings, context windows, motion scale, LoRAs, clear errors (issue #5).

Tiny model + tiny motion adapter, 32 px, 2 steps: each clip takes well under a second.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from personae.config.animate import AnimateSettings
from personae.config.base import parse_settings
from personae.errors import UserError
from personae.events import Message, Progress
from personae.inference.animate import animate, open_animate_session, open_for, use_context_windows
from personae.jobs.animate import run_animate
from personae.media.png import parse_parameters, read_png_text
from personae.media.video import read_clip_comment, read_clip_frames, write_clip

# models, training or CLI subprocesses: the full tier only; one thread (conftest.one_thread)
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]



@pytest.fixture(scope="module")
def tiny_motion(tmp_path_factory):
    """(folder, single file) of the tiny motion adapter, seed 0."""
    from personae.models.tiny_motion import write_tiny_motion_adapter

    root = tmp_path_factory.mktemp("motion")
    write_tiny_motion_adapter(root / "motion", seed=0, single_file=root / "motion.safetensors")
    return root / "motion", root / "motion.safetensors"


def settings(model, motion, **kw):
    return AnimateSettings(**{"model": str(model), "motion_adapter": str(motion), "prompt": "a photo of a cat",
                              "steps": 2, "seed": 7, "width": 32, "height": 32, "frames": 16, **kw})


@pytest.fixture(scope="module")
def clip_session(tiny_model, tiny_motion):
    """The tiny model with the tiny motion adapter (no add-ons); tests must not add LoRAs to it."""
    return open_for(settings(tiny_model[0], tiny_motion[0]))


def pixels(clip):
    return np.stack([np.asarray(f, dtype=np.int16) for f in clip.frames])


def test_cli_writes_gif_mp4_and_frames_that_decode_with_their_settings(tmp_path, tiny_model, tiny_motion):
    import av

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "personae", "animate", "--model", str(tiny_model[0]),
                        "--motion-adapter", str(tiny_motion[0]), "--prompt", "a (red:1.2) fox", "--negative", "blurry",
                        "--frames", "16", "--fps", "8", "--steps", "2", "--seed", "5", "--width", "48", "--height", "32",
                        "--out", str(tmp_path / "clip.gif"), "--out", str(tmp_path / "mp4/clip.mp4"),
                        "--out", str(tmp_path / "clip.webp"), "--webp-lossless", "--out", str(tmp_path / "clip.webm"),
                        "--frames-dir", str(tmp_path / "frames")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "wrote a 16-frame clip (seed 5)" in r.stderr
    # GIF: Pillow reads 16 frames of 48x32, looping forever, at 8 fps (GIF keeps hundredths of a second)
    with Image.open(tmp_path / "clip.gif") as gif:
        assert gif.n_frames == 16 and gif.size == (48, 32)
        assert gif.info["loop"] == 0 and gif.info["duration"] in (120, 130)
        gif_comment = gif.info["comment"].decode("utf-8")
    check_webp_and_webm(tmp_path, gif_comment, loop=0)
    # MP4: PyAV (an independent decoder) reads H.264 in yuv420p, 16 frames of 48x32 at 8 fps, and the comment tag
    with av.open(str(tmp_path / "mp4/clip.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert stream.average_rate == 8
        mp4_comment = container.metadata["comment"]
        decoded = list(container.decode(video=0))
    assert len(decoded) == 16 and (decoded[0].width, decoded[0].height) == (48, 32)
    assert gif_comment == mp4_comment == read_clip_comment(tmp_path / "mp4/clip.mp4")
    prompt, negative, params = parse_parameters(gif_comment)
    assert prompt == "a (red:1.2) fox" and negative == "blurry"
    assert params["Frames"] == "16" and params["FPS"] == "8" and params["Motion module"] == "motion"
    assert params["Seed"] == "5" and params["Steps"] == "2" and params["Size"] == "48x32"
    assert params["Sampler"] == "DDIM" and params["Clip skip"] == "2" and params["Motion scale"] == "1"
    # the frames as PNGs, each with the same settings; the MP4 is close to them (lossy), the GIF too (palette)
    pngs = sorted((tmp_path / "frames").glob("frame-*.png"))
    assert len(pngs) == 16 and read_png_text(pngs[3])["parameters"] == gif_comment
    first = np.asarray(Image.open(pngs[0]), dtype=np.int16)
    assert np.abs(decoded[0].to_ndarray(format="rgb24").astype(np.int16) - first).mean() < 20
    assert np.abs(read_clip_frames(tmp_path / "clip.gif")[0].astype(np.int16) - first).mean() < 20
    assert not list(tmp_path.rglob("*.partial"))


def check_webp_and_webm(folder, comment, loop):
    """folder/clip.webp (lossless) and folder/clip.webm hold the frames in folder/frames and `comment` where A1111's
    AnimateDiff puts it and A1111 reads it: the WebP's EXIF UserComment as PNG Info loads it (piexif), the WebM's
    comment tag (PyAV)."""
    import av
    import piexif
    import piexif.helper

    pngs = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((folder / "frames").glob("frame-*.png"))]
    with Image.open(folder / "clip.webp") as webp:
        assert webp.n_frames == len(pngs) and webp.info["loop"] == loop
        exif = piexif.load(webp.info["exif"])
        assert piexif.helper.UserComment.load(exif["Exif"][piexif.ExifIFD.UserComment]) == comment
        for i, png in enumerate(pngs):
            webp.seek(i)
            assert np.array_equal(np.asarray(webp.convert("RGB")), png)  # lossless
            assert webp.info["duration"] == 125  # known once the frame is read
    assert read_clip_comment(folder / "clip.webp") == comment
    assert all(np.array_equal(a, b) for a, b in zip(read_clip_frames(folder / "clip.webp"), pngs, strict=True))
    with av.open(str(folder / "clip.webm")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "vp9" and stream.average_rate == 8
        assert {k.lower(): v for k, v in container.metadata.items()}["comment"] == comment
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == len(pngs) and decoded[0].shape == pngs[0].shape
    assert max(np.abs(d.astype(np.int16) - p).mean() for d, p in zip(decoded, pngs, strict=True)) < 20  # lossy
    assert read_clip_comment(folder / "clip.webm") == comment and len(read_clip_frames(folder / "clip.webm")) == 16


def test_a_clip_plays_its_loop_number_of_times_and_a_webp_at_its_quality(tmp_path, tiny_model, tiny_motion,
                                                                          clip_session):
    """A1111's "Display loop number" reaches the GIF and the WebP and the infotext (none when 0, forever); a lossy
    WebP is smaller at a lower quality."""
    clip = run_animate(settings(tiny_model[0], tiny_motion[0], loop_number=3, width=48),
                       [tmp_path / "clip.gif", tmp_path / "clip.webp", tmp_path / "clip.webm"], tmp_path / "frames",
                       webp_lossless=True)
    assert parse_parameters(clip.parameters)[2]["Loop number"] == "3"
    with Image.open(tmp_path / "clip.gif") as gif:
        assert gif.info["loop"] == 3
    check_webp_and_webm(tmp_path, clip.parameters, loop=3)
    assert "Loop number" not in parse_parameters(animate(settings(tiny_model[0], tiny_motion[0])).parameters)[2]
    sizes = [write_clip(clip.frames, tmp_path / f"q{q}.webp", fps=8, webp_quality=q).stat().st_size for q in (5, 95)]
    assert sizes[0] < sizes[1]
    pixels_5, pixels_95 = (np.stack(read_clip_frames(tmp_path / f"q{q}.webp")).astype(np.int16) for q in (5, 95))
    assert np.abs(pixels_95 - pixels(clip)).mean() < np.abs(pixels_5 - pixels(clip)).mean()


def test_same_seed_same_frames_and_what_changes_them(tiny_model, tiny_motion, clip_session):
    base = settings(tiny_model[0], tiny_motion[0])
    a, b = animate(base, clip_session), animate(base, clip_session)
    assert len(a.frames) == 16 and a.frames[0].size == (32, 32)
    assert np.array_equal(pixels(a), pixels(b))
    assert np.abs(pixels(a) - pixels(animate(base.model_copy(update={"seed": 8}), clip_session))).mean() > 1
    assert np.abs(pixels(a) - pixels(animate(base.model_copy(update={"clip_skip": 1}), clip_session))).mean() > 1
    # the motion module acts: scale 0 (image model alone) and 0.5 differ from 1; back at 1, the same frames again
    no_motion = animate(base.model_copy(update={"motion_scale": 0.0}), clip_session)
    half = animate(base.model_copy(update={"motion_scale": 0.5}), clip_session)
    assert np.abs(pixels(a) - pixels(no_motion)).mean() > 1 and np.abs(pixels(a) - pixels(half)).mean() > 0.5
    assert np.array_equal(pixels(a), pixels(animate(base, clip_session)))
    # a single-file adapter gives the same frames as its folder
    single = base.model_copy(update={"motion_adapter": str(tiny_motion[1])})
    assert np.array_equal(pixels(a), pixels(animate(single)))


def _first_frame_influence(clip_session, frames: int, scale: float) -> np.ndarray:
    """How much each frame changes when only frame 0's starting noise changes (mean abs pixel difference)."""
    pipe = clip_session.pipe
    use_context_windows(pipe, frames, 16, 4)
    clip_session.motion_scale.value = scale
    session = clip_session.session
    embeds = session.encoder.encode_pair("a photo of a cat", "", 2)
    latents = torch.randn((1, 4, frames, 4, 4), generator=torch.Generator().manual_seed(0))
    changed = latents.clone()
    changed[:, :, 0] = torch.randn((1, 4, 4, 4), generator=torch.Generator().manual_seed(1))
    outs = []
    for start in (latents, changed):
        with torch.no_grad():
            outs.append(pipe(prompt_embeds=embeds[0].embeds, negative_prompt_embeds=embeds[1].embeds, num_frames=frames,
                             width=32, height=32, num_inference_steps=2, latents=start.clone(),
                             generator=torch.Generator().manual_seed(0), output_type="np").frames[0])
    clip_session.motion_scale.value = 1.0
    return np.abs(outs[0] - outs[1]).mean(axis=(1, 2, 3))


def test_32_frames_run_in_overlapping_windows_as_one_clip(tiny_model, tiny_motion, clip_session):
    from diffusers.models.attention import FreeNoiseTransformerBlock

    events = []
    base = settings(tiny_model[0], tiny_motion[0])
    short = animate(base, clip_session)
    long = animate(base.model_copy(update={"frames": 32}), clip_session, on_event=events.append)
    assert len(long.frames) == 32 and long.frames[0].size == (32, 32)
    assert any(isinstance(e, Message) and "overlapping windows of 16" in e.text for e in events)
    assert [(e.stage, e.done, e.total) for e in events if isinstance(e, Progress)] == [("denoise", 1, 2), ("denoise", 2, 2)]
    assert "Context: 16/4" in long.parameters
    windowed = [m for m in clip_session.pipe.unet.modules() if isinstance(m, FreeNoiseTransformerBlock)]
    assert windowed  # the motion modules ran in windows
    # frames 16-31 share no window with frame 0, yet its noise reaches them through the overlaps:
    # one continuous clip, not two clips glued together
    influence = _first_frame_influence(clip_session, 32, 1.0)
    assert influence[16:].min() > 1e-5  # exactly 0 if the windows did not connect (as with motion scale 0)
    # the seam is no jump: consecutive-frame change across frame 15 -> 16 is within the range inside windows
    steps = np.abs(np.diff(pixels(long).astype(float), axis=0)).mean(axis=(1, 2, 3))
    assert steps[15] <= steps[:15].max()
    # a 16-frame clip afterwards takes the plain path again, with the same frames as before
    again = animate(base, clip_session)
    assert not [m for m in clip_session.pipe.unet.modules() if isinstance(m, FreeNoiseTransformerBlock)]
    assert np.array_equal(pixels(short), pixels(again))


def test_motion_scale_zero_draws_frames_independently(clip_session):
    assert _first_frame_influence(clip_session, 8, 0.0)[1:].max() == 0
    assert _first_frame_influence(clip_session, 8, 1.0)[1:].min() > 1e-4


def test_lora_and_embedding_reach_the_clip(tiny_model, tiny_motion, clip_session, tmp_path):
    from safetensors.torch import save_file
    from test_generate import _lora_file

    lora = _lora_file(tmp_path / "style.safetensors")
    base = settings(tiny_model[0], tiny_motion[0])
    plain = pixels(animate(base, clip_session))
    full = animate(settings(tiny_model[0], tiny_motion[0], loras=[{"path": str(lora), "weight": 1.0}]))
    off = animate(settings(tiny_model[0], tiny_motion[0], loras=[{"path": str(lora), "weight": 0.0}]))
    assert np.abs(pixels(full) - plain).mean() > 1
    assert np.array_equal(pixels(off), plain)
    assert "<lora:style:1>" in full.parameters and 'Lora hashes: "style: ' in full.parameters
    torch.manual_seed(0)
    save_file({"<toy>": torch.randn(1, 32)}, str(tmp_path / "learned_embeds.safetensors"))
    embedded = animate(settings(tiny_model[0], tiny_motion[0], prompt="a photo of a cat, <toy>",
                                embeddings=[{"path": str(tmp_path / "learned_embeds.safetensors")}]))
    assert np.abs(pixels(embedded) - plain).mean() > 1 and "TI hashes" in embedded.parameters


def test_a_held_session_takes_lora_tags_out_of_the_prompt(tiny_model, tiny_motion, tmp_path):
    """A caller holding an animate session (the web UI, the demo) passed <lora:...> tags on to the text encoder as
    words. Now a tag naming the session's LoRA at its weight is taken out; any other tag is one clear error."""
    from test_generate import _lora_file

    lora = _lora_file(tmp_path / "style.safetensors")
    with_lora = settings(tiny_model[0], tiny_motion[0], loras=[{"path": str(lora), "weight": 1.0}], frames=4)
    held = open_for(with_lora)
    plain = animate(with_lora, held)
    tagged = animate(with_lora.model_copy(update={"prompt": with_lora.prompt + " <lora:style:1>"}), held)
    assert np.array_equal(pixels(tagged), pixels(plain)) and tagged.parameters == plain.parameters
    assert plain.parameters.count("<lora:style:1>") == 1
    for tag, expected in (("<lora:style:0.5>", "loaded as <lora:style:1>"), ("<lora:style:1:0.5>", "FILE:1:0.5"),
                          ("<lora:other:1>", "not among the LoRAs")):
        with pytest.raises(UserError, match=expected):
            animate(with_lora.model_copy(update={"prompt": with_lora.prompt + " " + tag}), held)


@pytest.mark.parametrize("data,expected", [
    ({"frames": 0}, "greater than or equal to 1"),
    ({"context_stride": 16}, "must be smaller than context"),
    ({"batch_size": 2}, "cannot be used for animation"),
    ({"mask": "x.png"}, "mask cannot be used for animation"),
    ({"motion_scale": -1}, "motion_scale"),
    ({"fps": 0}, "fps"),
])
def test_bad_settings_are_one_readable_error(data, expected):
    with pytest.raises(UserError, match=expected):
        parse_settings(AnimateSettings, {"model": "m", "motion_adapter": "a", "prompt": "p", **data}, "animate")


def test_bad_adapters_and_outputs_fail_before_anything_is_written(tiny_model, tiny_motion, tmp_path):
    out = tmp_path / "out"
    for adapter, expected in [(tmp_path / "nope", "not found"), (tiny_model[0], "no config.json"),
                              ("guoyww/animatediff-motion-adapter-v1-5-3", "HF_HUB_OFFLINE")]:
        with pytest.raises(UserError, match=expected) as err:
            run_animate(settings(tiny_model[0], adapter), [out / "clip.gif"], out / "frames")
        assert "--motion-adapter" in str(err.value)
    with pytest.raises(UserError, match=r"\.gif, \.mp4, \.webp, \.webm \(got \"\.avi\"\)"):
        run_animate(settings(tiny_model[0], tiny_motion[0]), [out / "clip.avi"])
    with pytest.raises(UserError, match="Unknown sampler"):
        run_animate(settings(tiny_model[0], tiny_motion[0], sampler="Eulr a"), [out / "clip.mp4"], out / "frames")
    with pytest.raises(UserError, match="frame positions"):
        run_animate(settings(tiny_model[0], tiny_motion[0], context=40, frames=48), [out / "clip.gif"])
    with pytest.raises(UserError, match="even width and height"):
        write_clip([Image.new("RGB", (33, 32))] * 2, out / "odd.mp4", fps=8)
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


def test_cli_bad_input_is_one_paragraph(tmp_path, tiny_model, tiny_motion):
    r = subprocess.run([sys.executable, "-m", "personae", "animate", "--model", str(tiny_model[0]), "--motion-adapter",
                        str(tmp_path / "missing"), "--prompt", "x", "--out", str(tmp_path / "c.gif")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    assert "was not found" in r.stderr.replace("\n", " ") and not (tmp_path / "c.gif").exists()


def _original_layout(state: dict, positions: int) -> dict:
    """diffusers MotionAdapter keys -> AnimateDiff's own checkpoint layout (as mm_sd_v15_v2.safetensors ships)."""
    import re

    out = {}
    for key, value in state.items():
        if key.endswith("pos_embed.pe"):
            continue
        key = re.sub(r"(motion_modules\.\d+\.)", r"\1temporal_transformer.", key)
        for new, old in ((".attn1.", ".attention_blocks.0."), (".attn2.", ".attention_blocks.1."),
                         (".norm1.", ".norms.0."), (".norm2.", ".norms.1."), (".norm3.", ".ff_norm.")):
            key = key.replace(new, old)
        out[key] = value.contiguous()
        if key.endswith("attention_blocks.0.to_q.weight"):  # AnimateDiff stores its position table per attention
            out[key.replace("to_q.weight", "pos_encoder.pe")] = torch.zeros(1, positions, value.shape[0])
    return out


def test_original_layout_motion_module_file_loads_offline(tmp_path, tiny_session):
    """A motion module as model sites share it: AnimateDiff's key layout, no config; read off the shapes."""
    from diffusers import MotionAdapter
    from safetensors.torch import save_file

    from personae.models.motion import load_motion_adapter, resolve_motion_adapter

    torch.manual_seed(0)  # AnimateDiff's heads (8) and norm groups (32) at tiny channel counts
    adapter = MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1, motion_max_seq_length=24)
    save_file(_original_layout(adapter.state_dict(), 24), str(tmp_path / "mm_tiny.safetensors"))
    loaded = load_motion_adapter(resolve_motion_adapter(str(tmp_path / "mm_tiny.safetensors")))
    assert loaded.config.block_out_channels == (32, 64) and loaded.config.motion_max_seq_length == 24
    assert loaded.config.motion_num_attention_heads == 8 and loaded.config.motion_norm_num_groups == 32
    expected, got = adapter.state_dict(), loaded.state_dict()
    assert set(expected) == set(got) and all(torch.equal(expected[k], got[k]) for k in expected)
    with pytest.raises(UserError, match="does not fit the model"):  # 2 levels; the tiny UNet has 4
        open_animate_session(tiny_session, loaded, resolve_motion_adapter(str(tmp_path / "mm_tiny.safetensors")))
    save_file({"foo.weight": torch.zeros(1)}, str(tmp_path / "not_motion.safetensors"))
    with pytest.raises(UserError, match="holds no motion modules"):
        load_motion_adapter(resolve_motion_adapter(str(tmp_path / "not_motion.safetensors")))


def test_help_has_examples(capsys):
    from personae.cli.main import build_parser

    for command in (["animate"], ["model", "tiny-motion"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args([*command, "--help"])
        assert "examples:" in capsys.readouterr().out


def test_every_sampler_runs_on_the_motion_schedule(tiny_model, tiny_motion, clip_session):
    from personae.inference.samplers import SAMPLERS

    own = clip_session.pipe.scheduler
    for name, sampler in SAMPLERS.items():
        used = []  # the scheduler the pipeline denoises with, seen while it runs; the session's is back after
        clip = animate(settings(tiny_model[0], tiny_motion[0], sampler=name, frames=4), clip_session,
                       on_event=lambda e: used.append(clip_session.pipe.scheduler) if isinstance(e, Progress) else None)
        assert used and all(type(s) is sampler.scheduler and s.config.beta_schedule == "linear" for s in used), name
        assert clip_session.pipe.scheduler is own, name
        assert len(clip.frames) == 4 and pixels(clip).std() > 0 and f"Sampler: {name}," in clip.parameters


def test_a1111_sampler_parameters_reach_the_clip(tiny_model, tiny_motion, clip_session):
    """A1111's sampler parameters change a clip's frames as they change a picture, and the clip's parameters name
    them as txt2img's infotext does (only where the sampler uses them, and not at their defaults)."""
    def clip(sampler, on_event=None, **option):
        return animate(settings(tiny_model[0], tiny_motion[0], sampler=sampler, frames=4, **option), clip_session,
                       on_event=on_event or (lambda event: None))

    cases = [  # (sampler, the parameter, what the clip's parameters say)
        ("DDIM", {"eta_ddim": 0.5}, "Eta DDIM: 0.5"),
        ("Euler a", {"eta": 0.5}, "Eta: 0.5"),
        ("Euler", {"sigma_churn": 0.5}, "Sigma churn: 0.5"),
        ("DPM++ 2M Karras", {"schedule_rho": 3.0}, "Schedule rho: 3"),
        ("DPM++ 2M Karras", {"schedule_max_sigma": 5.0}, "Schedule max sigma: 5"),
        ("Euler", {"discard_penultimate": True}, "Discard penultimate sigma: True"),
        ("DDIM", {"noise_schedule": "Zero Terminal SNR"}, "Noise Schedule: Zero Terminal SNR"),
    ]
    for sampler, option, said in cases:
        plain, tuned = clip(sampler), clip(sampler, **option)
        assert np.abs(pixels(plain) - pixels(tuned)).max() > 0, option
        assert said in tuned.parameters and said not in plain.parameters, (option, tuned.parameters)
    # quantization: the UNet is given whole training steps (3 steps of Euler: fractional ones otherwise); on the
    # tiny model that moves a pixel by one level at most, so the steps themselves are what is checked
    for quantize in (False, True):
        given = []
        shown = clip("Euler", steps=3, quantize=quantize, on_event=lambda e: given.append(
            clip_session.pipe.scheduler.timesteps.clone()) if isinstance(e, Progress) else None).parameters
        assert torch.equal(given[0], given[0].round()) is quantize, given[0]
        assert ("K-sampler quantization: True" in shown) is quantize
    # a sampler a parameter does not apply to leaves it out of the parameters, as A1111 does
    assert "Eta" not in clip("Euler", eta=0.5).parameters
    # the churn draws from the clip's own seeded generator: the same clip twice
    assert np.array_equal(pixels(clip("Euler", sigma_churn=0.5)), pixels(clip("Euler", sigma_churn=0.5)))
    # a bare "DPM++ 2M" (Uniform) is named as such: A1111 1.9+ would read it as its Automatic, Karras
    assert "Schedule type: Uniform" in clip("DPM++ 2M").parameters


def test_prompt_encoding_reaches_the_clip(tiny_model, tiny_motion, clip_session):
    """A1111's emphasis mode and prompt word wrap reach a clip's prompt as they reach a picture's."""
    def clip(prompt, **option):
        return animate(settings(tiny_model[0], tiny_motion[0], prompt=prompt, frames=4, **option), clip_session)

    weighted, plain = "a (photo:1.5) of a cat", "a photo of a cat"
    original = clip(weighted)
    assert not np.array_equal(pixels(original), pixels(clip(plain)))  # the weight counts...
    ignored = clip(weighted, emphasis="None")
    assert np.array_equal(pixels(ignored), pixels(clip(plain)))  # ...and emphasis None ignores it
    assert "Emphasis: None" in ignored.parameters and "Emphasis" not in original.parameters
    comfy = clip(weighted, emphasis="ComfyUI")  # weighted from the empty prompt's embedding: other frames (No norm
    # differs from Original by the chunk's mean, which the tiny text encoder leaves at about 0)
    assert np.abs(pixels(comfy) - pixels(original)).max() > 0 and "Emphasis: ComfyUI" in comfy.parameters
    # past 75 tokens, the next chunk starts after the last comma within the word wrap limit (20), or at 75 (0)
    long = ", ".join(["a red fox in a misty forest at dawn"] * 10)
    assert not np.array_equal(pixels(clip(long)), pixels(clip(long, comma_backtrack=0)))


def test_sampler_parameters_from_the_command_line():
    from personae.cli.animate_cmd import settings_from_args
    from personae.cli.main import build_parser

    args = build_parser().parse_args(["animate", "--model", "m", "--motion-adapter", "a", "--prompt", "p", "--out",
                                      "c.gif", "--sampler", "Euler", "--sigma-churn", "0.4", "--eta-ddim", "0.2",
                                      "--noise-schedule", "Zero Terminal SNR", "--emphasis", "No norm",
                                      "--comma-backtrack", "0"])
    chosen = settings_from_args(args)
    assert (chosen.sigma_churn, chosen.eta_ddim, chosen.noise_schedule) == (0.4, 0.2, "Zero Terminal SNR")
    assert (chosen.emphasis, chosen.comma_backtrack) == ("No norm", 0)


@pytest.mark.parametrize("frames", [8, 20])
def test_long_weighted_prompt_with_and_without_guidance(tiny_model, tiny_motion, clip_session, frames):
    """Our prompt embeddings (chunks of 75 tokens, weights) go through both the plain and the windowed path."""
    long_prompt = ", ".join(["a (watercolor:1.3) painting of a fox in a [misty] forest at dawn"] * 8)
    events = []
    for cfg in (7.5, 1.0):
        clip = animate(settings(tiny_model[0], tiny_motion[0], prompt=long_prompt, frames=frames, cfg=cfg),
                       clip_session, on_event=events.append)
        assert len(clip.frames) == frames and pixels(clip).std() > 0
    assert any(isinstance(e, Message) and "2 chunks of 75" in e.text for e in events)


def test_changes_beside_the_layers_reach_the_motion_unet(tiny_model, tiny_motion, tmp_path):
    """The motion UNet is built from the session's UNet by copying weights and peft adapters; a LoRA's changes kept
    beside its layers (a normalisation layer's diff, an IA3 module) come along, at the adapter's weight."""
    from safetensors.torch import save_file

    from personae.inference.animate import motion_unet
    from personae.models.addons import load_loras
    from personae.models.motion import load_motion_adapter, resolve_motion_adapter
    from personae.models.resolve import load_pipeline, resolve_model

    pipe = load_pipeline(resolve_model(str(tiny_model[0])))
    g = torch.Generator().manual_seed(8)
    norm, conv = "down_blocks.0.resnets.0.norm1", "down_blocks.0.resnets.0.conv1"
    width = pipe.unet.get_submodule(norm).weight.shape[0]
    k = "lora_unet_" + conv.replace(".", "_")
    save_file({"lora_unet_" + norm.replace(".", "_") + ".w_norm": torch.randn(width, generator=g),
               k + ".weight": torch.randn(1, width, 1, 1, generator=g), k + ".on_input": torch.tensor(0.0)},
              str(tmp_path / "beside.safetensors"))
    (lora,) = load_loras(pipe, [(str(tmp_path / "beside.safetensors"), 0.7)])
    model = motion_unet(pipe.unet, load_motion_adapter(resolve_motion_adapter(str(tiny_motion[0]))),
                        {lora.adapter: 0.7})
    x = torch.randn(2, width, 8, 8, generator=g)
    with torch.no_grad():
        for name in (norm, conv):
            theirs, mine = pipe.unet.get_submodule(name), model.get_submodule(name)
            plain = type(theirs).forward(theirs, x)
            assert float((theirs(x) - plain).abs().max()) > 1e-3, name
            assert torch.allclose(mine(x), theirs(x), atol=1e-6), name
        model.set_adapters([lora.adapter], [0.0])  # the motion UNet's own adapter weight governs them
        assert torch.equal(model.get_submodule(norm)(x), torch.nn.GroupNorm.forward(model.get_submodule(norm), x))


def test_a_template_and_a_style_draw_the_clips_prompt_from_its_seed(tiny_model, tiny_motion, clip_session, tmp_path):
    """Dynamic Prompts' syntax in animate: one prompt for the clip, drawn from its seed; A1111 styles applied;
    the clip is the clip of the drawn, styled prompt written out."""
    from personae.data.dynamic_prompts import image_prompts

    (tmp_path / "styles.csv").write_text("name,prompt,negative_prompt\nInk,\"{prompt}, ink\",blurry\n")
    templated = animate(settings(tiny_model[0], tiny_motion[0], prompt="a {cat|dog|fox}", styles=["Ink"],
                                 styles_file=str(tmp_path / "styles.csv")), clip_session)
    [(drawn, _)] = image_prompts("a {cat|dog|fox}", "", [7], None)
    written = animate(settings(tiny_model[0], tiny_motion[0], prompt=f"{drawn}, ink", negative="blurry"),
                      clip_session)
    assert np.array_equal(pixels(templated), pixels(written))
    assert parse_parameters(templated.parameters)[:2] == (f"{drawn}, ink", "blurry")
