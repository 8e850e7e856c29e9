"""The demo's everyday flow on the shapes world: a folder of pictures prepared, text to image with A1111's settings,
a long weighted prompt, a LoRA trained with its exports reloaded, generation with it, and a picture reproduced from
its PNG. Every picture is one the checker can read, so each section says what came out, not only that a file did.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from personae.config.generate import GenerateSettings, LoraRef
from personae.demo.world_board import STAR_JOB
from personae.events import EventHandler, Message
from personae.jobs.generate import run_generate, settings_from_png
from personae.media.png import parse_parameters, read_png_text

# the star of examples/storyboard-world's star.yaml, from a prepared set, with a kohya user's extras
FLOW_TRAIN = {**STAR_JOB["train"], "min_snr_gamma": 5, "save_every": 100, "keep_last": 2,
              "validation": {"steps": 10, "cfg": 4.0, "prompts": ["a white star on a red background, close-up"]}}
# eight captions, one chunk each (BREAK), weighted: the world's text encoder was pretrained on one short caption,
# so a long prompt is made of captions it can read, 8 x 75 tokens, none truncated
LONG_PROMPT = " BREAK ".join(["a (white:1.2) diamond on a [red] background, close-up"] * 8)
STAR_PROMPTS = ["a white star on a red background, close-up", "a white star on a yellow background, medium shot"]


def same_pixels(a: Path, b: Path) -> bool:
    return np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


DEMO_SAMPLERS = ("Euler", "Euler a", "LMS Karras", "Heun", "DPM2 a", "DPM++ 2S a", "DPM++ 2M", "DPM++ SDE Karras",
                 "DPM++ 2M SDE Exponential", "DPM++ 3M SDE Exponential", "DPM++ 2M Align Your Steps")


def _read(paths: list[Path], prompts: list[str]) -> int:
    """How many pictures the checker reads as their prompt says (background, colour, shape, size)."""
    from personae.world.check import agreement, check
    from personae.world.scene import parse_prompt

    return sum(agreement(check(Image.open(p)), parse_prompt(t))["all"] for p, t in zip(paths, prompts))


def world_flow(out: Path, model: Path, index, on_event: EventHandler) -> None:
    """Sections "Prepared training set" to "Reproduce from PNG", on the world model."""
    from personae.config.prepare import PrepareSettings
    from personae.config.train import TrainJob
    from personae.data.prepare import prepare_dataset
    from personae.jobs.train import run_training
    from personae.runs import read_run
    from personae.world.render import render_world
    from personae.world.render_settings import WorldRender

    # 1. a training set from a folder of pictures: white stars, a shape the world model never saw
    render_world(WorldRender(shapes="star", colours="white", backgrounds="blue,green", shots="close-up,medium",
                             count=8), out / "photos")
    prepared = prepare_dataset(out / "photos", out / "prepared", PrepareSettings(resolution=32, min_side=32,
                                                                                 template="{caption}"), on_event)
    index.add("Prepared training set", f"`personae world render photos --shapes star ...` drew {len(prepared.entries)} "
                                       "white stars (a shape the world model never saw) with captions; `personae "
                                       "prepare photos prepared --resolution 32 --template \"{caption}\"` framed and "
                                       "captioned them (prepared/manifest.jsonl, prepared/report.md).",
              [out / "prepared/contact_sheet.png"])

    # 2. txt2img with A1111 settings
    base = GenerateSettings(model=str(model), prompt="a red circle on a blue background, close-up", seed=7)
    other = "a yellow square on a green background, medium shot"
    plain = run_generate(base, out / "generate", on_event)
    batch = run_generate(base.model_copy(update={"prompt": other, "seed": 100, "batch_size": 2, "batch_count": 2,
                                                 "sampler": "Euler a", "negative": "a blue background",
                                                 "clip_skip": 2}), out / "generate", on_event)
    right = _read(plain + batch, [base.prompt] + [other] * 4)
    index.add("Text to image", f"\"{base.prompt}\", seed 7, `personae generate`'s defaults (DPM++ 2M Karras, 20 "
                               f"steps, CFG 7); then \"{other}\" as a batch of 2 x 2 with Euler a, clip skip 2 and a "
                               f"negative prompt. The checker reads {right} of 5 as prompted. Every PNG carries A1111 "
                               "`parameters`.", plain + batch)

    # 2b. A1111's samplers, each k-diffusion's own algorithm on A1111's schedule (inference/ksampler.py)
    drawn = [run_generate(base.model_copy(update={"sampler": name}), out / "samplers", on_event)[0]
             for name in DEMO_SAMPLERS]
    right = _read(drawn, [base.prompt] * len(drawn))
    index.add("A1111's samplers", f"\"{base.prompt}\", seed 7, 20 steps, through {len(drawn)} of A1111's samplers and "
                                  f"schedule types ({', '.join(DEMO_SAMPLERS)}): each runs k-diffusion's own steps "
                                  "on A1111's sigmas, as A1111 and ComfyUI do, so a seed gives A1111's picture "
                                  "(tests/test_ksampler.py runs k-diffusion beside them: they agree to a millionth). "
                                  f"Read back by the checker: {right} of {len(drawn)} as prompted.", drawn)

    # 3. a long, weighted prompt: chunks of 75 tokens, not truncated
    long = run_generate(base.model_copy(update={"prompt": LONG_PROMPT, "sampler": "UniPC", "seed": 0, "batch_size": 4}),
                        out / "generate", on_event)
    right = _read(long, ["a white diamond on a red background, close-up"] * len(long))
    index.add("Long weighted prompt", f"{len(LONG_PROMPT.split())} words, (white:1.2) and [red], eight captions "
                                      "joined by BREAK: encoded in 8 chunks of 75 tokens, none truncated (UniPC, seeds "
                                      f"0-3). The checker reads {right} of {len(long)} as a white diamond on red, "
                                      "close-up.", long)

    # 3b. A1111's prompt editing: the prompt switches during sampling; the switch decides what is drawn
    circle, square = "a red circle on a blue background, close-up", "a red square on a green background, close-up"
    edited = {}
    for when in (2, 18):
        edited[when] = run_generate(base.model_copy(update={"prompt": f"[{circle}:{square}:{when}]", "steps": 20,
                                                            "sampler": "Euler a", "seed": 0, "batch_size": 4}),
                                    out / "generate", on_event)
    early, late = (_read(edited[w], [square if w == 2 else circle] * 4) for w in (2, 18))
    index.add("Prompt editing", f"A1111's `[from:to:when]`: \"[{circle}:{square}:2]\" and the same switched at step "
                                f"18 of 20 (Euler a, seeds 0-3). Switched at 2, the checker reads {early} of 4 as "
                                f"the second prompt; at 18, {late} of 4 as the first: on the world model the last "
                                "steps settle shape and background.", edited[2] + edited[18])

    # 3c. A1111's composable diffusion: each part of an AND prompt its own conditioning, the weights decide
    blue_square = "a red square on a blue background, close-up"
    composed = {}
    for first, second in ((0.8, 0.2), (0.2, 0.8)):
        composed[first] = run_generate(base.model_copy(update={
            "prompt": f"{circle} :{first:g} AND {blue_square} :{second:g}", "steps": 20,
            "sampler": "Euler a", "seed": 0, "batch_size": 4}), out / "generate", on_event)
    circles, squares = _read(composed[0.8], [circle] * 4), _read(composed[0.2], [blue_square] * 4)
    index.add("Composable diffusion (AND)", f"A1111's AND: \"{circle} :0.8 AND {blue_square} :0.2\", then the "
                                            "weights swapped (Euler a, seeds 0-3): each part is its own "
                                            "conditioning, uncond + CFG x the weighted sum of each part's pull. At "
                                            f"0.8 / 0.2 the checker reads {circles} of 4 as circles; at 0.2 / 0.8, "
                                            f"{squares} of 4 as squares.", composed[0.8] + composed[0.2])

    # 3d. Dynamic Prompts' templates: each picture draws its own prompt from its seed; read against that prompt
    (out / "wildcards").mkdir(parents=True, exist_ok=True)
    (out / "wildcards" / "shape.txt").write_text("circle\nsquare\ntriangle\n", encoding="utf-8")
    template = "a {red|yellow} __shape__ on a {blue|green} background, close-up"
    drawn = run_generate(base.model_copy(update={"prompt": template, "wildcards_dir": str(out / "wildcards"),
                                                 "steps": 20, "sampler": "Euler a", "seed": 0, "batch_size": 4}),
                         out / "generate", on_event)
    prompts = [parse_parameters(read_png_text(p)["parameters"])[0] for p in drawn]
    index.add("Dynamic Prompts", f"The Dynamic Prompts extension's template \"{template}\" with __shape__ from "
                                 "wildcards/shape.txt (circle, square, triangle), a batch of 4 (Euler a, seeds 0-3): "
                                 f"each picture drew its own prompt from its seed ({'; '.join(prompts)}); read "
                                 f"against its own prompt, the checker finds {_read(drawn, prompts)} of 4 as drawn.",
              drawn)

    # 4. a LoRA on the prepared set, its kohya and diffusers files each reloaded and compared
    on_event(Message("teaching the star as a LoRA on the prepared set"))
    job = TrainJob.model_validate({"base_model": str(model), "method": "lora", "data": {"path": str(out / "prepared")},
                                   "output": str(out / "runs/lora"), "lora": STAR_JOB["lora"], "train": FLOW_TRAIN})
    result = run_training(job, overwrite=True, on_event=on_event)
    checks = ", ".join(f"{c.family} {c.max_abs_diff:.0e}" for c in result.checks)
    # the exports by the run record, not by a guessed name (a job's `name` renames them)
    files = {e.format: e.path for e in read_run(out / "runs/lora").exports if e.loader == "lora"}
    kohya_lora = f"runs/lora/{files['kohya']}"
    last = f"step-{FLOW_TRAIN['steps']:06d}"
    index.add("LoRA training", f"{FLOW_TRAIN['steps']} steps on the prepared stars (rank 8, min-SNR 5, a checkpoint "
                               f"every 100): {kohya_lora} (kohya/A1111) and runs/lora/{files['diffusers']} "
                               "(diffusers), "
                               f"each reloaded and compared: {checks}. Validation: base model (top) vs trained "
                               "(bottom); loss curve.",
              [out / f"runs/lora/validation/{last}.png", out / "runs/lora/loss.png"])
    prompts = [STAR_PROMPTS[i % 2] for i in range(4)]
    with_lora = []
    for i, prompt in enumerate(prompts):
        with_lora += run_generate(base.model_copy(update={"prompt": prompt, "seed": i, "loras": [
            LoraRef(path=str(out / kohya_lora))]}), out / "with-lora", on_event)
    right = _read(with_lora, prompts)
    index.add("Generate with the LoRA", f"`personae generate --lora {kohya_lora}` with \"{STAR_PROMPTS[0]}\" and "
                                        f"\"{STAR_PROMPTS[1]}\" (backgrounds the stars were never on), seeds 0-3: "
                                        f"the checker reads {right} of 4 as prompted, star included.", with_lora)

    # 4b. the LoRA baked into the model (personae merge): the model alone draws what the model with the LoRA drew
    from personae.config.merge import MergeSettings
    from personae.jobs.merge import run_merge

    baked = run_merge([str(model)], out / "models/world-star", MergeSettings(method="none", loras=[
        LoraRef(path=str(out / kohya_lora))]), overwrite=True, on_event=on_event)
    alone = []
    for i, prompt in enumerate(prompts):
        alone += run_generate(base.model_copy(update={"model": str(baked), "prompt": prompt, "seed": i}),
                              out / "merged", on_event)
    largest = max(int(np.abs(np.asarray(Image.open(a), np.int16) - np.asarray(Image.open(b), np.int16)).max())
                  for a, b in zip(alone, with_lora))
    index.add("LoRA baked into the model", f"`personae merge {model.name} --method none --lora {kohya_lora} --out "
                                           "models/world-star` (kohya's merge_lora; A1111's Checkpoint Merger does "
                                           "weighted sums and differences of models the same way): the same prompts "
                                           "and seeds on the merged model alone, no LoRA: the checker reads "
                                           f"{_read(alone, prompts)} of 4 as prompted, star included; the largest "
                                           f"pixel difference from the pictures with the LoRA: {largest} of 255.",
              alone)

    # 5. reproduce a picture from its PNG's parameters
    again = run_generate(GenerateSettings(**settings_from_png(plain[0])), out / "from-png", on_event)
    index.add("Reproduce from PNG", f"`personae generate --from-png {plain[0].relative_to(out)}`: identical pixels: "
                                    f"{same_pixels(plain[0], again[0])}.", again)
