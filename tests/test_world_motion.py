"""World motion (issue #19): a motion adapter for the world model, trained on rendered clips, read back frame by
frame with the exact checker."""

import json

import numpy as np
import pytest

from personae.world.clips import MOTIONS, Clip, direction_right, eval_clips, make_clip, random_clip, score_clip
from personae.world.placed import EVAL_COMBOS, TRAIN_COMBOS
from personae.world.scene import SIDE, SIZES, TRAINED


def test_rendered_clips_are_read_back_as_they_move():
    """Every rendered clip (training and measured, 16 and 32 frames) is read back by the checker with its shape,
    colour and background in every frame and a track that moves as its caption says."""
    rng = np.random.default_rng(0)
    clips = [random_clip(rng) for _ in range(24)] + eval_clips(12) + eval_clips(6, frames=32)
    for clip in clips:
        row = score_clip(clip.frames(), clip)
        assert row["identity"] and row["direction"] and row["consistent"], (clip.caption(), row)
        assert row["jitter"] < 0.3  # steady: a growing clip's centre moves a little as the box is rounded
        assert row["frames"] == len(clip.boxes) and all(0 < b <= SIDE for b in clip.boxes)
    left = make_clip(np.random.default_rng(1), "circle", "red", "blue", "left")
    assert left.caption() == f"a red circle on a blue background, {left.size}, moving left"
    xs = [c[0] for c in left.centres]
    assert xs[0] > xs[-1] and len({c[1] for c in left.centres}) == 1 and left.size in SIZES
    # a size word given (the demo's medium-shot star): that size's box, the clip still moves and reads back
    for motion in MOTIONS:
        sized = make_clip(np.random.default_rng(5), "star", "white", "blue", motion, size="medium shot")
        assert sized.size == "medium shot" and score_clip(sized.frames(), sized)["direction"], motion
        if motion != "growing":
            assert set(sized.boxes) == {SIZES["medium shot"]}
    with pytest.raises(ValueError, match="close-up"):
        make_clip(np.random.default_rng(5), "star", "white", "blue", "left", size="close-up")


def test_the_direction_rule_rejects_the_wrong_motion():
    """A track read the wrong way round, a still shape that drifts and a shrinking one are not what was asked."""
    clip = make_clip(np.random.default_rng(2), "square", "white", "red", "right")
    centres, boxes = list(clip.centres), list(clip.boxes)
    assert direction_right("right", centres, boxes)
    assert not direction_right("left", centres, boxes) and not direction_right("still", centres, boxes)
    assert not direction_right("up", centres, boxes) and not direction_right("growing", centres, boxes)
    jitter = [(x + (2.5 if i % 2 else 0.0), y) for i, (x, y) in enumerate(centres)]  # steps back more than SLACK
    assert not direction_right("right", jitter, boxes)
    grow = make_clip(np.random.default_rng(3), "ring", "black", "green", "growing")
    assert direction_right("growing", list(grow.centres), list(grow.boxes))
    assert not direction_right("growing", list(grow.centres), list(grow.boxes)[::-1])


def test_the_measured_clips_are_held_out():
    rng = np.random.default_rng(4)
    seen = {(c.colour, c.background) for c in (random_clip(rng) for _ in range(2000))}
    assert seen == set(TRAIN_COMBOS)
    measured = eval_clips(32)
    assert {(c.colour, c.background) for c in measured} <= set(EVAL_COMBOS)
    assert [c.motion for c in measured[:6]] == list(MOTIONS) and {c.shape for c in measured} <= set(TRAINED)
    assert eval_clips(32) == measured


def test_the_motion_words_reach_the_unet():
    """The motion words are not world tokens: they are split into characters, and the padding after them differs
    between two motions, while the world caption's own tokens are encoded exactly as without them."""
    from personae.inference.session import open_session
    from personae.world.model import WORLD_DIR

    session = open_session(str(WORLD_DIR), device="cpu")
    tokens = session.pipe.tokenizer.tokenize("a red circle on a blue background, medium shot, moving left")
    assert tokens[:11] == session.pipe.tokenizer.tokenize("a red circle on a blue background, medium shot,")
    assert "left</w>" not in tokens and "t</w>" in tokens
    plain = session.encoder.encode("a red circle on a blue background, medium shot", 1).embeds
    left = session.encoder.encode("a red circle on a blue background, medium shot, moving left", 1).embeds
    right = session.encoder.encode("a red circle on a blue background, medium shot, moving right", 1).embeds
    assert np.allclose(left[0, :11].numpy(), plain[0, :11].numpy(), atol=1e-5)
    assert (left[0, -1] - right[0, -1]).abs().max() > 1e-3


def _short(out) -> list[str]:
    return ["world", "motion", str(out), "--steps", "3", "--quiet"] + [a for s in SHORT for a in ("--set", s)]


SHORT = ["dataset_size=8", "batch_size=2", "eval.clips=2", "eval.long_clips=1", "eval.steps=2", "warmup_steps=1",
         "eval.every=2", "lora.learning_rate=0.01", "words.learning_rate=0.01",  # rates that move in 3 steps
         "condition.learning_rate=0", "base=world"]  # the words option (off by default), on the shipped world model


@pytest.fixture(scope="module")
def short_motion(tmp_path_factory):
    """`personae world motion OUT --steps 3` on 8 clips at batch 2: the plumbing, not the learning."""
    from personae.cli.main import main

    out = tmp_path_factory.mktemp("wm") / "wm"
    assert main(_short(out)) == 0
    return out


def test_short_motion_training_writes_an_adapter_that_animate_reads(short_motion, tmp_path):
    from diffusers import MotionAdapter, UNet2DConditionModel
    from PIL import Image

    from personae.cli.main import main
    from personae.world.model import WORLD_DIR

    for name in ("config.json", "diffusion_pytorch_model.safetensors", "motion-lora.safetensors",
                 "training/settings.yaml", "training/losses.csv",
                 "training/summary.json", "training/samples-000002.png", "training/samples-000003.png",
                 "training/clip-left.gif", "training/clip-right.gif"):
        assert (short_motion / name).is_file(), name
    summary = json.loads((short_motion / "training/summary.json").read_text())
    assert summary["steps"] == 3 and [e["step"] for e in summary["evals"]] == [2, 3]
    runs = summary["evals"][-1]["rows"]
    assert [(r["clips"], r["frames"], r["motion_scale"]) for r in runs] == [(2, 16, 1.0), (2, 16, 0.0), (1, 32, 1.0)]
    adapter = MotionAdapter.from_pretrained(str(short_motion))
    unet = UNet2DConditionModel.from_pretrained(str(WORLD_DIR), subfolder="unet")
    assert list(adapter.config.block_out_channels) == list(unet.config.block_out_channels)
    assert adapter.config.motion_max_seq_length == 32
    # AnimateDiff's start: output projections at zero, moved by training
    proj = [p for n, p in adapter.named_parameters() if ".proj_out." in n and n.endswith("weight")]
    assert proj and all(0 < p.abs().max() < 0.05 for p in proj)
    gif = tmp_path / "clip.gif"
    assert main(["animate", "--model", str(WORLD_DIR), "--motion-adapter", str(short_motion), "--prompt",
                 "a white square on a red background, full shot, moving up", "--steps", "2", "--frames", "16",
                 "--seed", "1", "--out", str(gif), "--quiet"]) == 0
    with Image.open(gif) as clip:
        assert clip.size == (SIDE, SIDE) and clip.n_frames > 1


def test_the_motion_lora_is_trained_and_animate_applies_it(short_motion):
    """The LoRA beside the adapter is a kohya file on the image UNet's cross-attention keys and values only, moved
    from its zero start by training; `personae animate --lora FILE` (open_for) carries it into the motion UNet, where
    it changes the noise prediction, and motion-eval finds it beside the adapter."""
    import torch
    from safetensors.torch import load_file

    from personae.config.animate import AnimateSettings
    from personae.inference.animate import open_for
    from personae.world.model import WORLD_DIR
    from personae.world.motion_eval import adapter_lora

    lora = short_motion / "motion-lora.safetensors"
    assert adapter_lora(str(short_motion)) == str(lora)
    tensors = load_file(str(lora))
    modules = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in tensors}
    assert modules and all(m.startswith("lora_unet_") and m.endswith(("attn2_to_k", "attn2_to_v")) for m in modules)
    assert all(v.abs().max() > 0 for k, v in tensors.items() if k.endswith("lora_up.weight"))  # trained from zero
    prompt = "a white square on a red background, full shot, moving up"

    def prediction(loras):
        settings = AnimateSettings(model=str(WORLD_DIR), motion_adapter=str(short_motion), prompt=prompt,
                                   device="cpu", loras=loras)
        unet = open_for(settings).pipe.unet
        adapted = [n for n, m in unet.named_modules() if hasattr(m, "lora_B")]
        gen = torch.Generator().manual_seed(0)
        sample = torch.randn(1, 4, 4, 8, 8, generator=gen)
        hidden = torch.randn(4, 77, unet.config.cross_attention_dim, generator=gen)
        with torch.no_grad():
            return adapted, unet(sample, 500, encoder_hidden_states=hidden).sample

    adapted, with_lora = prediction([{"path": str(lora)}])
    assert len(adapted) == len(modules) and not any(".motion_modules." in n for n in adapted)
    plain, without = prediction([])
    assert plain == [] and (with_lora - without).abs().max() > 1e-6


def test_the_motion_words_are_learnt_on_a_leash_and_animate_reads_them(short_motion):
    """Each motion phrase's learnt vector is an A1111 embedding named by the phrase, moved from its start (the mean
    of the phrase's character embeddings) but no longer than the world words' mean norm; `--embedding FILE` makes
    the phrase one token, and the prompt's encoding changes with it."""
    import torch
    from safetensors.torch import load_file

    from personae.inference.session import open_session
    from personae.world.clips import MOTION_WORDS
    from personae.world.model import WORLD_DIR
    from personae.world.motion_eval import adapter_words
    from personae.world.motion_words import world_norm

    words = adapter_words(str(short_motion))
    assert [token for _, token in words] == sorted(MOTION_WORDS.values())
    plain = open_session(str(WORLD_DIR), device="cpu")
    table = plain.pipe.text_encoder.get_input_embeddings().weight.detach()
    limit = world_norm(plain.pipe)
    moved = []
    for path, token in words:
        vector = load_file(path)["emb_params"]
        start = table[plain.pipe.tokenizer(token, add_special_tokens=False).input_ids].mean(0)
        assert vector.shape == (1, table.shape[1]) and vector.norm() <= limit * (1 + 1e-5)
        moved.append(float((vector[0] - start).norm() / start.norm()))
    # the phrases of the clips drawn in 3 steps moved (others keep their start and its 1 % jitter)
    assert max(moved) > 0.05 and all(m < 0.02 or m > 0.05 for m in moved)
    session = open_session(str(WORLD_DIR), device="cpu", embeddings=words)
    prompt = "a white square on a red background, full shot, moving up"
    assert session.pipe.tokenizer.tokenize(prompt)[-1] == "moving up"
    with torch.no_grad():
        assert (session.encoder.encode(prompt, 1).embeds - plain.encoder.encode(prompt, 1).embeds).abs().max() > 1e-3


def test_motion_training_is_reproducible_and_refuses_bad_settings(short_motion, tmp_path):
    import torch
    from safetensors import safe_open

    from personae.cli.main import main

    again = tmp_path / "again"
    assert main(_short(again)) == 0
    for name in ("diffusion_pytorch_model.safetensors", "motion-words/moving up.safetensors"):
        assert (again / name).read_bytes() == (short_motion / name).read_bytes(), name
    # the LoRA's kohya header is a map that safetensors writes in no fixed order: tensors and header compared
    loras = [safe_open(str(folder / "motion-lora.safetensors"), "pt") for folder in (short_motion, again)]
    assert loras[0].metadata() == loras[1].metadata() and list(loras[0].keys()) == list(loras[1].keys())
    assert all(torch.equal(loras[0].get_tensor(k), loras[1].get_tensor(k)) for k in loras[0].keys())
    assert main(["world", "motion", str(tmp_path / "x"), "--set", "framez=3"]) == 2
    assert main(["world", "motion", str(tmp_path / "x"), "--set", "frames=64"]) == 2
    assert main(["world", "motion", str(tmp_path / "x"), "--set", "lora.rank=-1"]) == 2
    assert main(["world", "motion", str(again), "--steps", "1"]) == 2  # a used folder needs --overwrite


def test_a_clip_is_scored_frame_by_frame():
    """A clip whose shape changes in one frame has no identity; consistent says whether the frames agree at all."""
    clip = Clip("circle", "red", "blue", "still", "medium shot", (16.0,) * 4, ((16.0, 16.0),) * 4)
    frames = clip.frames()
    assert score_clip(frames, clip)["both"]
    other = Clip("square", "red", "blue", "still", "medium shot", (16.0,), ((16.0, 16.0),)).frames()[0]
    row = score_clip(frames[:3] + [other], clip)
    assert not row["identity"] and row["identity_frames"] == 3 and not row["consistent"] and row["direction"]


# ---- the shipped motion adapter ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shipped_motion(tmp_path_factory):
    """`personae model world-zero-snr` and `personae model world-motion`: the adapter that ships and its base."""
    from personae.cli.main import main

    root = tmp_path_factory.mktemp("shipped-motion")
    assert main(["model", "world-zero-snr", str(root / "world-zero-snr")]) == 0
    assert main(["model", "world-motion", str(root / "motion")]) == 0
    return root / "world-zero-snr", root / "motion"


def test_the_shipped_adapter_was_made_by_the_default_training(shipped_motion):
    """The adapter in the package is `personae world motion`'s defaults (on the zero-terminal-SNR model, with the
    motion condition and the LoRA), under the issue's 30 minutes, with the files it learnt beside it, and its
    recorded measurement is the one docs/world.md shows."""
    import yaml

    from personae.inference.motion_condition import CONDITION_FILE
    from personae.world.model import WORLD_MOTION_DIR
    from personae.world.motion_settings import WorldMotion

    recorded = yaml.safe_load((WORLD_MOTION_DIR / "training/settings.yaml").read_text())
    assert recorded == WorldMotion().model_dump(mode="json")
    summary = json.loads((WORLD_MOTION_DIR / "training/summary.json").read_text())
    assert summary["steps"] == WorldMotion().steps and summary["seconds"]["total"] < 30 * 60
    rows = summary["evals"][-1]["rows"]
    measured = [(r["clips"], r["frames"], r["motion_scale"], round(r["identity"] * r["clips"]),
                 round(r["direction"] * r["clips"])) for r in rows]
    assert measured == [(32, 16, 1.0, 30, 26), (32, 16, 0.0, 29, 0), (12, 32, 1.0, 10, 7)]
    assert rows[0]["by_motion"] == {"left": "5/6", "right": "5/6", "up": "5/5", "down": "5/5", "growing": "4/5",
                                    "still": "2/5"}
    _, motion = shipped_motion
    assert (motion / "diffusion_pytorch_model.safetensors").stat().st_size < 5e6
    assert (motion / "motion-lora.safetensors").is_file() and (motion / CONDITION_FILE).is_file()
    assert not (motion / "motion-words").exists()


def test_the_shipped_adapter_moves_the_shape_the_way_the_prompt_says(shipped_motion):
    """Issue #19 on six held-out clips (one per motion, colour pairs no training clip showed), as `personae animate`
    draws them with the adapter, its LoRA and its condition on the zero-terminal-SNR model: the shape kept in every
    frame, moving left, right, up and down and growing as asked (docs/world.md: 30 and 26 of 32; on these six, at
    one thread, 6 and 5: the still diamond drifts), the track smooth (jitter a third of the same seeds' at motion
    scale 0, frames drawn independently)."""
    from personae.world.motion_eval import adapter_lora, generate_clips

    world, motion = shipped_motion
    lora = adapter_lora(str(motion))
    clips = eval_clips(len(MOTIONS))
    scored = {scale: [score_clip(f, c) for f, c in zip(
        generate_clips(str(world), str(motion), clips, motion_scale=scale, lora=lora), clips)]
        for scale in (1.0, 0.0)}
    moving = scored[1.0]
    assert sum(r["identity"] for r in moving) >= 5, [(r["caption"], r["shapes_read"]) for r in moving]
    assert all(r["direction"] for r in moving if r["motion"] != "still"), [(r["motion"], r["track"]) for r in moving]
    jitter = {scale: np.mean([r["jitter"] for r in rows]) for scale, rows in scored.items()}
    assert jitter[1.0] < jitter[0.0] / 3, jitter


def test_prompt_travel_changes_shape_colour_and_background_between_its_keyframes(shipped_motion):
    """Prompt travel on the world (world/travel_eval.py): a still shape whose caption changes from frame 0 to frame
    15, its shape (circle to triangle), its colour (white to black) or its background (blue to yellow), two seeds
    each. Every clip starts as its first keyframe says and ends as its last says, read by the checker in its first
    and last four frames (at two threads: 3-4 of 4 at the start, 4 of 4 at the end); the same seed with the first
    caption alone still shows it at the end, so the change is the travel's."""
    from personae.world.motion_eval import adapter_lora
    from personae.world.travel_eval import measure_travel

    world, motion = shipped_motion
    rows = measure_travel(str(world), str(motion), seeds=2, lora=adapter_lora(str(motion)))
    assert {r["changes"] for r in rows} == {"shape", "colour", "background"} and len(rows) == 6
    for r in rows:
        said = {k: r[k] for k in ("changes", "seed", "starts_first", "starts_last", "ends_first", "ends_last",
                                  "control")}
        assert r["starts_first"] >= 3 and r["starts_last"] == 0, said
        assert r["ends_last"] >= 3 and r["ends_first"] == 0, said
        assert r["control"]["ends_first"] >= 3 and r["control"]["ends_last"] == 0, said


def test_the_world_controlnet_steers_a_clip_along_its_maps(shipped_motion, tmp_path):
    """ControlNet for clips on the world (world/clip_control_eval.py): four rendered clips moving right, down, left
    and up, their frames given as `--control canny:FOLDER` with the shipped world ControlNet, while the prompt says
    "still". Each clip keeps its shape in (nearly) every frame, puts it where each frame's map does (measured at two
    threads: 0.2-1.0 px off on average) and so moves as the maps move; the same seeds without the unit put it 5-9 px
    away."""
    from personae.cli.main import main
    from personae.world.clip_control_eval import measure_clip_control
    from personae.world.motion_eval import adapter_lora

    world, motion = shipped_motion
    assert main(["model", "world-controlnet", str(tmp_path / "controlnet")]) == 0
    rows = measure_clip_control(str(world), str(motion), str(tmp_path / "controlnet"), tmp_path / "maps",
                                lora=adapter_lora(str(motion)))
    assert len(rows) == 4
    for r in rows:
        said = {k: v for k, v in r.items() if not k.endswith("frames") or k == "identity_frames"}
        assert r["identity_frames"] >= 14 and r["follows_maps"] and r["centre_error"] <= 1.5, said
        free = r["uncontrolled"]["centre_error"]
        assert free >= 3 * r["centre_error"] and free > 3, said


def test_a_clip_started_from_rendered_frames_keeps_their_track_in_the_prompts_colour(shipped_motion, tmp_path):
    """`--init-image FRAMES --strength 0.5` on the world (world/clip_control_eval.py's measure_clip_init): four
    rendered moving clips, each redrawn in another colour its prompt names. Every frame shows the shape in the new
    colour, within 1.5 px of the rendered track (measured at two threads: 0.4-0.9 px); the same seeds from noise are
    2-7 px away. (White to black, measured too, is too far a redraw at 0.3-0.6: the square is drawn elsewhere.)"""
    from personae.world.clip_control_eval import measure_clip_init
    from personae.world.motion_eval import adapter_lora

    world, motion = shipped_motion
    rows = measure_clip_init(str(world), str(motion), tmp_path / "frames", 0.5, lora=adapter_lora(str(motion)))
    assert len(rows) == 4
    for r in rows:
        said = {k: v for k, v in r.items() if not k.endswith("frames") or k == "identity_frames"}
        assert r["identity_frames"] >= 14 and r["follows_maps"] and r["centre_error"] <= 1.5, said
        assert r["from_noise"]["centre_error"] >= 3 * r["centre_error"], said


def test_a_clip_from_one_picture_starts_at_it_and_moves_as_asked(shipped_motion, tmp_path):
    """`--init-image PICTURE --strength 0.6 --latent-scale 4` (A1111's img2gif, world/clip_control_eval.py's
    measure_clip_picture): the four rendered clips' first frames, each prompt naming its clip's motion. Every clip
    keeps its shape in (nearly) every frame, starts within 4 px of the picture's shape (measured: 1.0-3.8 px) and
    moves as asked (4 of 4 measured at one and two threads); kept in every frame (latent scale 1e9, what one picture
    was before: the picture for every frame), 2 of 4 move."""
    from personae.world.clip_control_eval import measure_clip_picture
    from personae.world.motion_eval import adapter_lora

    world, motion = shipped_motion
    rows = measure_clip_picture(str(world), str(motion), tmp_path / "pictures", lora=adapter_lora(str(motion)))
    said = [{k: v for k, v in r.items() if not k.endswith("frames") or k == "identity_frames"} for r in rows]
    assert len(rows) == 4
    assert all(r["identity_frames"] >= 14 and r["start_error"] <= 4.5 for r in rows), said
    moved, kept = sum(r["moves"] for r in rows), sum(r["kept"]["moves"] for r in rows)
    assert moved >= 3 and moved > kept, said
