"""The demo's world motion: the shipped motion adapter animates held-out shapes, then the taught star.

Six held-out clips (one per motion: left, right, up, down, growing, still; colour pairs no training clip showed)
made by `personae animate`'s own code with the adapter, its LoRA and its motion condition on the zero-terminal-SNR
world model it learnt on, every frame read back by the exact checker: identity in every frame, the track, whether
it moves as asked; the same seeds at motion scale 0 (frames drawn independently) show what the adapter adds. Then
a star (a shape pretraining never saw) taught to that model by the bench's DreamBooth recipe, through the same
adapter, asked for each of the six motions: a star in (nearly) every frame, where the model it was taught on draws
none. docs/world.md ("World motion") has the 32-clip table and the star's 24.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from personae.events import EventHandler, Message

STEPS, CFG = 25, 4.0  # the world's evaluation settings (DDIM)
STAR = ("star", "white", "blue")  # a taught star on a background it was taught on
STAR_SIZE = "medium shot"  # a full-shot star is lost in the world VAE (docs/world.md)
STAR_GIF = "down"  # the star clip written as a GIF


def redraw_from_gif(gif: Path, model: Path, adapter: Path, again: Path, on_event: EventHandler) -> int:
    """`personae animate --from-png GIF --model MODEL --motion-adapter ADAPTER --lora-dir ADAPTER --out AGAIN`: the
    frames the same as the GIF's, counted."""
    from personae.config.animate import AnimateSettings
    from personae.jobs.animate import run_animate
    from personae.jobs.animate_png import read_clip_settings
    from personae.media.video import read_clip_frames

    reading = read_clip_settings(gif)
    settings = AnimateSettings(**{**reading.settings, "model": str(model), "motion_adapter": str(adapter),
                                  "lora_dir": str(adapter)})
    run_animate(settings, [again], on_event=on_event)
    return sum(np.array_equal(a, b) for a, b in zip(read_clip_frames(gif), read_clip_frames(again), strict=True))


def world_motion(out: Path, index, on_event: EventHandler) -> dict:
    """Section "World motion"; returns the counts it reports."""
    from personae.inference.animate import animate
    from personae.jobs.animate import run_animate
    from personae.media.grid import save_image
    from personae.world.bench import run_bench
    from personae.world.bench_settings import WorldBench
    from personae.world.clips import MOTIONS, eval_clips, make_clip, score_clip, shares
    from personae.world.model import write_world_motion, write_world_zero_snr
    from personae.world.motion_eval import adapter_lora, clip_settings, clip_sheet, generate_clips

    on_event(Message("world motion: the shipped motion adapter on held-out shapes, and the taught star"))
    here = out / "world-motion"
    adapter = write_world_motion(out / "models/world-motion")
    zero = write_world_zero_snr(out / "models/world-zero-snr")  # the model the adapter learnt on
    lora = adapter_lora(str(adapter))
    clips = eval_clips(len(MOTIONS))  # clip i moves as MOTIONS[i]
    made = generate_clips(str(zero), str(adapter), clips, STEPS, CFG, lora=lora)
    loose = generate_clips(str(zero), str(adapter), clips, STEPS, CFG, motion_scale=0.0, lora=lora)
    scored, independent = [score_clip(f, c) for f, c in zip(made, clips)], [score_clip(f, c) for f, c in
                                                                             zip(loose, clips)]
    here.mkdir(parents=True, exist_ok=True)
    save_image(clip_sheet(made), here / "clips.png")
    save_image(clip_sheet(loose), here / "independent.png")
    # the growing clip as `personae animate` writes it: GIF, MP4, WebP and WebM with the settings inside; then drawn
    # again from the GIF's settings alone (`personae animate --from-png`), its LoRA found by the tag in the prompt
    growing = MOTIONS.index("growing")
    written = [out / f"animate/clip.{suffix}" for suffix in ("gif", "mp4", "webp", "webm")]
    run_animate(clip_settings(str(zero), str(adapter), clips[growing], growing, STEPS, CFG, lora=lora), written,
                on_event=on_event)
    again = redraw_from_gif(out / "animate/clip.gif", zero, adapter, out / "animate/again.gif", on_event)
    # a star taught to the adapter's base with the bench's DreamBooth recipe (a star taught to the world model
    # itself is lost through this adapter: 1 of 16 frames, docs/world.md), against that base with the same seed
    bench = WorldBench(model=str(zero), methods=["dreambooth"], concepts=["star"], seeds=1, workers=1,
                       eval={"seeds_per_prompt": 4})
    run_bench(bench, here / "star-bench", overwrite=True, on_event=on_event,
              command="personae world bench --model models/world-zero-snr --methods dreambooth --concepts star "
                      "--seeds 1 --set workers=1 --set eval.seeds_per_prompt=4")
    star_model = here / "star-bench/runs/dreambooth-star-s0/model"
    stars = [make_clip(np.random.default_rng(0), *STAR, motion, size=STAR_SIZE) for motion in MOTIONS]
    star_frames = generate_clips(str(star_model), str(adapter), stars, STEPS, CFG, lora=lora)
    taught = [score_clip(f, c) for f, c in zip(star_frames, stars)]
    save_image(clip_sheet(star_frames), here / "stars.png")
    shown = MOTIONS.index(STAR_GIF)  # the same clip (seed = its row) as `personae animate` writes it
    run_animate(clip_settings(str(star_model), str(adapter), stars[shown], shown, STEPS, CFG, lora=lora),
                [here / "star.gif"], on_event=on_event)
    base_settings = clip_settings(str(zero), str(adapter), stars[shown], shown, STEPS, CFG, lora=lora)
    base = score_clip(animate(base_settings).frames, stars[shown])
    counts = {"redrawn_same": again, "identity": sum(r["identity"] for r in scored),
              "direction": sum(r["direction"] for r in scored), "clips": len(clips),
              "jitter": shares(scored)["jitter"], "jitter_independent": shares(independent)["jitter"],
              "star_frames": sum(r["identity_frames"] for r in taught),
              "star_moves": sum(r["direction"] for r in taught), "star_clips": len(stars),
              "base_star_frames": base["identity_frames"], "frames": len(stars[0].boxes),
              "star_start_x": float(np.mean([r["track"][0][0] for r in taught]))}
    asked = ", ".join(f"{r['motion']} {'yes' if r['direction'] else 'no'}" for r in scored)
    star_asked = ", ".join(f"{r['motion']} {'yes' if r['direction'] else 'no'}" for r in taught)
    index.add("World motion",
              "`personae model world-motion models/world-motion` writes the motion adapter `personae world motion` "
              "trained on the frozen zero-terminal-SNR world model (`personae model world-zero-snr "
              "models/world-zero-snr`; AnimateDiff's motion modules sized to it, with a LoRA and a motion condition "
              "that ship beside it: the motion the prompt's words name, given to every motion module as a track "
              "across the frames), and `personae animate --model models/world-zero-snr --motion-adapter "
              "models/world-motion --lora ...` draws with it. Six held-out clips, one per motion, read back frame by "
              f"frame by the exact checker (top sheet, a row of 16 frames per clip): shape, colour and background "
              f"right in every frame in {counts['identity']} of {counts['clips']}; the track moves as asked: {asked} "
              f"({counts['direction']} of {counts['clips']}; in docs/world.md 26 of 32 clips move as asked and 30 of "
              "32 keep the shape in every frame); the shape moves smoothly: the track's jitter "
              f"{counts['jitter']:.1f} px, against {counts['jitter_independent']:.1f} px for the same seeds at "
              "motion scale 0 (second sheet: frames drawn independently, the shape jumps about). animate/clip.gif, "
              "clip.mp4, clip.webp and clip.webm are the growing clip as `personae animate` writes them (the formats "
              "A1111's AnimateDiff saves, each with the settings inside); `personae animate --from-png "
              "animate/clip.gif --model models/world-zero-snr --motion-adapter models/world-motion --lora-dir "
              f"models/world-motion` drew animate/again.gif from the GIF's settings alone: {again} of "
              f"{len(clips[growing].boxes)} frames the same, pixel for pixel. A star taught to the "
              "zero-terminal-SNR model by the bench's DreamBooth recipe (world-motion/star-bench) through the same "
              "adapter, asked for each motion (\"a white star on a blue background, medium shot, moving left\" and "
              "so on; third sheet, a row per motion): a star in "
              f"{counts['star_frames']} of {counts['star_clips'] * counts['frames']} frames; it moves as asked: "
              f"{star_asked} ({counts['star_moves']} of {counts['star_clips']}; the star starts at x = "
              f"{counts['star_start_x']:.0f} of {star_frames[0][0].width} px on average, the centre at "
              f"{star_frames[0][0].width / 2:.0f}: docs/world.md has 24 clips); world-motion/star.gif is "
              f"the clip moving {STAR_GIF}, where the model it was taught on draws a star in "
              f"{counts['base_star_frames']} of {counts['frames']} frames with the same seed.",
              [here / "clips.png", here / "independent.png", out / "animate/clip.gif", here / "stars.png",
               here / "star.gif", out / "animate/again.gif"])
    return counts
