"""`personae demo`: every capability that exists, offline.

First the shapes-world model that ships with personae (demo/world.py): it draws what
it is asked and learns a held-out shape, measured exactly; then shot tokens and a star
character taught on it and drawn as a storyboard whose panels are read back exactly
(demo/world_board.py), and the base model, the DreamBooth star and the LoRA star compared with
the checker as a metric (demo/world_compare.py), the world ControlNet placing shapes where a
control map says (demo/world_control.py), and a drawing style taught from banded pictures with a
trigger phrase, measured with and without it (demo/world_style.py). Then the random tiny model for
everything whose point is the plumbing and the file formats (single-file checkpoints, prompts, LoRA exports,
ControlNet, AnimateDiff), where a tiny ControlNet and motion adapter are built to match it.

Each step appends a section to index.md / index.html in the output folder, so the
user sees what was made and where. Later capabilities add steps here. The folder must be
new, empty or an earlier demo's (whose files are replaced; files the user added stay), and
it is locked while the demo runs (outputs.py).
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
from PIL import Image

from personae.config.generate import GenerateSettings, LoraRef
from personae.config.prepare import PrepareSettings
from personae.data.prepare import prepare_dataset
from personae.data.samples import write_sample_subject
from personae.events import EventHandler, Message, ignore
from personae.jobs.generate import run_generate, settings_from_png
from personae.models.tiny import write_tiny_model
from personae.outputs import Kind, open_output
from personae.staging import write_text

# LoRA settings that can reshape a random tiny UNet in a few hundred steps (real models need far lower ranks)
DEMO_LORA = {"rank": 32, "alpha": 32, "target_modules": [
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "conv1", "conv2", "conv_shortcut", "ff.net.0.proj",
    "ff.net.2", "conv_in", "conv_out", "linear_1", "linear_2", "time_emb_proj"]}
LONG_PROMPT = ", ".join(["a (watercolor:1.3) painting of a fox in a [misty] forest at dawn"] * 8)
DEMO = Kind("demo", "a demo", "personae demo",
            layout=("index.md", "index.html", "models/*", "photos/*", "prepared/*", "generate/*", "single-file/*",
                    "runs/*", "with-lora/*", "from-png/*", "storyboard/*", "controlnet/*", "animate/*", "compare/*",
                    "world/*", "world-bench/*", "world-board/*", "world-compare/*", "world-control/*", "world-style/*"))


class Index:
    """index.md and index.html, rewritten after each section so a failed demo still shows progress."""

    def __init__(self, out: Path):
        self.out = out
        self.sections: list[tuple[str, str, list[Path]]] = []

    def add(self, title: str, text: str, images: list[Path] = ()) -> None:
        self.sections.append((title, text, list(images)))
        md = ["# personae demo", ""]
        page = ["<!doctype html><meta charset='utf-8'><title>personae demo</title><h1>personae demo</h1>"]
        for t, body, imgs in self.sections:
            md += [f"## {t}", "", body, ""] + [f"![]({p.relative_to(self.out).as_posix()})" for p in imgs] + [""]
            page.append(f"<h2>{html.escape(t)}</h2><p>{html.escape(body)}</p>")
            page += [f"<img src='{p.relative_to(self.out).as_posix()}' style='min-width:128px;image-rendering:pixelated'>"
                     for p in imgs]
        write_text(self.out / "index.md", "\n".join(md))
        write_text(self.out / "index.html", "\n".join(page))


def _same_pixels(a: Path, b: Path) -> bool:
    return np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def run_demo(out_dir: str | Path, on_event: EventHandler = ignore) -> Path:
    with open_output(out_dir, DEMO, clear=True) as out:  # an earlier demo's files go first
        return _demo(out, on_event)


def _demo(out: Path, on_event: EventHandler) -> Path:
    index = Index(out)

    # 0. the shapes-world model: 16 prompts read back exactly, then a star taught and measured
    from personae.demo.world import world_demo
    from personae.demo.world_board import world_board
    from personae.demo.world_compare import world_compare
    from personae.demo.world_control import world_control
    from personae.demo.world_style import world_style

    world = world_demo(out, index, on_event)
    # then a storyboard on it: shot tokens and a star character taught, every panel read back exactly
    world_board(out, world, index, on_event)
    # and the comparison: base vs the DreamBooth star vs the LoRA star, every image read back by the checker
    world_compare(out, world, index, on_event)
    # and the world ControlNet: held-out shapes put where a control map says, and the DreamBooth star too
    world_control(out, world, out / "world-bench/runs/dreambooth-star-s0/model", index, on_event)
    # and a drawing style: a LoRA on banded pictures whose captions end with a trigger phrase, with and without it
    world_style(out, world, index, on_event)

    # 1. the tiny model, as a diffusers folder and as one original-layout file
    on_event(Message("writing the tiny model"))
    model = write_tiny_model(out / "models/tiny", seed=0, single_file=out / "models/tiny.safetensors")
    index.add("Tiny model", f"A random SD-1.5-architecture model: folder {model.relative_to(out)}, "
                            "single file models/tiny.safetensors (original checkpoint layout).")

    # 2. a training set from a folder of images (here drawn procedurally: one subject, varied scenes)
    write_sample_subject(out / "photos", count=6)
    prepared = prepare_dataset(out / "photos", out / "prepared", PrepareSettings(resolution=64), on_event)
    index.add("Prepared training set", f"{len(prepared.entries)} images from photos/ framed to 64x64 and captioned "
                                       "(prepared/manifest.jsonl, prepared/report.md).", [out / "prepared/contact_sheet.png"])

    # 3. txt2img with A1111 settings
    base = GenerateSettings(model=str(model), prompt="a photo of a cat", steps=4, seed=7, width=64, height=64)
    plain = run_generate(base, out / "generate", on_event)
    batch = run_generate(base.model_copy(update={"seed": 100, "batch_size": 2, "batch_count": 2, "sampler": "Euler a",
                                                 "negative": "blurry, lowres", "clip_skip": 2}), out / "generate", on_event)
    index.add("Text to image", "Seed 7, 4 steps, DPM++ 2M Karras; then a batch of 2 x 2 with Euler a, clip skip 2 "
                               "and a negative prompt. Every PNG carries A1111 `parameters`.", plain + batch)

    # 4. long, weighted prompt (chunked by 75 tokens, not truncated)
    long = run_generate(base.model_copy(update={"prompt": LONG_PROMPT, "sampler": "UniPC"}), out / "generate", on_event)
    index.add("Long weighted prompt", f"{len(LONG_PROMPT.split())} words with (word:1.3) and [word]: encoded in "
                                      "75-token chunks.", long)

    # 5. the single file gives the same pixels as the folder
    single = run_generate(base.model_copy(update={"model": str(out / "models/tiny.safetensors")}), out / "single-file", on_event)
    index.add("Single-file checkpoint", "Same settings from models/tiny.safetensors: identical pixels to the folder: "
                                        f"{_same_pixels(plain[0], single[0])}.", single)

    # 6. train a LoRA on the prepared set, then generate with it
    from personae.config.train import TrainJob
    from personae.jobs.train import run_training
    from personae.runs import read_run

    job = TrainJob(base_model=str(model), method="lora", data={"path": str(out / "prepared")}, output=str(out / "runs/lora"),
                   trigger="sks", lora=DEMO_LORA,
                   train={"steps": 300, "batch_size": 4, "learning_rate": 3e-3, "min_snr_gamma": 5, "save_every": 100,
                          "keep_last": 2, "validation": {"prompts": ["a photo of sks star on a blue background"], "steps": 20}})
    result = run_training(job, overwrite=True, on_event=on_event)
    checks = ", ".join(f"{c.family} {c.max_abs_diff:.0e}" for c in result.checks)
    # the exports by the run record, not by a guessed name (a job's `name` renames them)
    files = {e.format: e.path for e in read_run(out / "runs/lora").exports if e.loader == "lora"}
    kohya_lora = f"runs/lora/{files['kohya']}"
    index.add("LoRA training", f"300 steps on the prepared set: {kohya_lora} (kohya/A1111) and "
                               f"runs/lora/{files['diffusers']} (diffusers), each reloaded and compared: {checks}. "
                               "Validation: base model (top) vs trained (bottom); loss curve.",
              [out / "runs/lora/validation/step-000300.png", out / "runs/lora/loss.png"])
    with_lora = run_generate(base.model_copy(update={"prompt": "a photo of sks star on a blue background", "steps": 20,
                                                     "sampler": "DDIM", "cfg": 2.0, "batch_size": 4, "seed": 0,
                                                     "loras": [LoraRef(path=str(out / kohya_lora))]}),
                             out / "with-lora", on_event)
    index.add("Generate with the LoRA", f"`personae generate --lora {kohya_lora} --prompt \"a photo of sks "
                                        "star on a blue background\"`, seeds 0-3.", with_lora)

    # 7. reproduce an image from its PNG metadata
    again = run_generate(GenerateSettings(**settings_from_png(plain[0])), out / "from-png", on_event)
    index.add("Reproduce from PNG", f"`personae generate --from-png {plain[0].relative_to(out)}`: identical pixels: "
                                    f"{_same_pixels(plain[0], again[0])}.", again)
    # 8. ControlNet: an edge map from a picture steers the same seed (tiny ControlNet matching the tiny UNet)
    from personae.jobs.control import make_demo_control

    index.add(*make_demo_control(model, out / "controlnet", on_event))

    # 9. an animated clip of the taught subject: AnimateDiff with a tiny motion adapter, the LoRA on
    from personae.config.animate import AnimateSettings
    from personae.jobs.animate import run_animate
    from personae.models.tiny_motion import write_tiny_motion_adapter

    lora = str(out / kohya_lora)
    adapter = write_tiny_motion_adapter(out / "models/tiny-motion", seed=0)
    clip = AnimateSettings(model=str(model), motion_adapter=str(adapter), prompt="a photo of sks star on a blue background",
                           loras=[LoraRef(path=lora)], frames=16, fps=8, steps=20, cfg=2.0, seed=0, width=64, height=64)
    run_animate(clip, [out / "animate/clip.gif", out / "animate/clip.mp4"], on_event=on_event)
    index.add("Animated clip", f"`personae animate --motion-adapter models/tiny-motion --lora {kohya_lora} "
                               "--frames 16 --fps 8`: a looping GIF and an H.264 MP4 (animate/clip.mp4), settings in the "
                               "GIF comment and MP4 metadata (DDIM, clip skip 2 by default).", [out / "animate/clip.gif"])

    return out / "index.html"
