"""The demo's first part: the pretrained shapes-world model draws what it is asked, then learns a star.

Everything here is measured by the exact checker (world/check.py): how many of the
16 fixed prompts come out right with `personae generate`'s defaults, and what teaching a
held-out shape (the bench's best recipe, DreamBooth, one seed) changes: subject fidelity, prompt
fidelity on backgrounds and sizes the training images lacked, and the prior.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from personae.config.generate import GenerateSettings
from personae.events import EventHandler
from personae.jobs.generate import run_generate
from personae.world.scene import EVAL_PROMPTS, parse_prompt

TAUGHT_PROMPTS = ["a white star on a red background, close-up", "a white star on a yellow background, medium shot",
                  "a white star on a blue background, close-up", "a white star on a green background, medium shot"]


def world_demo(out: Path, model: Path, index, on_event: EventHandler) -> None:
    """Sections "Shapes-world model" and "Teach a star", on the world model written to `model`."""
    from personae.media.grid import labelled_grid, save_image
    from personae.world.bench import run_bench
    from personae.world.bench_settings import WorldBench
    from personae.world.check import agreement, check

    # 1. the 16 fixed prompts with generate's defaults (native 32x32, DPM++ 2M Karras, 20 steps, CFG 7)
    made = []
    for i, prompt in enumerate(EVAL_PROMPTS):
        made += run_generate(GenerateSettings(model=str(model), prompt=prompt, seed=i), out / "world/generate", on_event)
    right = [agreement(check(Image.open(p)), parse_prompt(t))["all"] for p, t in zip(made, EVAL_PROMPTS)]
    sheet = labelled_grid([[Image.open(p) for p in made[r * 4:(r + 1) * 4]] for r in range(4)], [], [], cell=96)
    save_image(sheet, out / "world/prompts.png")
    index.add("Shapes-world model", f"`personae model world models/world`: a 32x32 model of the SD-1.5 architecture, "
                                    f"pretrained by `personae world pretrain`. The 16 fixed prompts with `personae "
                                    f"generate`'s defaults, one seed each: the exact checker finds {sum(right)} of 16 "
                                    "right (background, shape colour, shape, size).", [out / "world/prompts.png"])
    # 2. teach the held-out star (never in pretraining) with the bench's best recipe, measured before and after
    bench = WorldBench(model=str(model), methods=["dreambooth"], concepts=["star"], seeds=1, workers=1,
                       eval={"seeds_per_prompt": 4})
    result = run_bench(bench, out / "world-bench", command="personae world bench --methods dreambooth --concepts star "
                       "--seeds 1 --set workers=1 --set eval.seeds_per_prompt=4", overwrite=True, on_event=on_event)
    (run,) = result["runs"]
    base = result["base"]["star"]
    taught = out / "world-bench/runs/dreambooth-star-s0/model"  # the fine-tuned model, a diffusers folder
    images = []
    for i, prompt in enumerate(TAUGHT_PROMPTS):
        images += run_generate(GenerateSettings(model=str(taught), prompt=prompt, seed=i), out / "world/taught", on_event)
    index.add("Teach a star", f"{bench.images} images of a white star (blue and green backgrounds, close-up and medium "
                              f"shot) -> DreamBooth (the whole UNet, with the model's own images as prior): subject "
                              f"fidelity {base['subject_fidelity']:.0%} -> {run['subject_fidelity']:.0%}, prompt "
                              f"fidelity on unseen backgrounds/sizes {run['prompt_fidelity']:.0%}, prior accuracy "
                              f"{base['prior_after']:.0%} -> {run['prior_after']:.0%}. world-bench/report.html has the "
                              "table and grids; below, `personae generate --model world-bench/runs/dreambooth-star-s0/"
                              "model` on red, yellow (never seen), blue and green.",
              images + [out / "world-bench/grids/dreambooth-star-s0.png"])
    _extracted(out, model, taught, images, index, on_event)


def _extracted(out: Path, model: Path, taught: Path, taught_images: list[Path], index, on_event: EventHandler) -> None:
    """Section "A LoRA extracted from the DreamBooth star": `personae extract` and the star drawn with the file."""
    from personae.config.addons import LoraRef
    from personae.config.extract import ExtractSettings
    from personae.jobs.extract import run_extract
    from personae.world.check import agreement, check

    lora = run_extract(str(taught), out / "world/star-extracted.safetensors",
                       ExtractSettings(base=str(model), rank=32, conv_rank=32), on_event=on_event)
    images = []
    for i, prompt in enumerate(TAUGHT_PROMPTS):
        images += run_generate(GenerateSettings(model=str(model), prompt=prompt, seed=i, loras=[LoraRef(
            path=str(lora))]), out / "world/extracted", on_event)

    def right(paths: list[Path]) -> int:
        return sum(agreement(check(Image.open(p)), parse_prompt(t))["all"] for p, t in zip(paths, TAUGHT_PROMPTS))

    unet = sum(f.stat().st_size for f in (taught / "unet").glob("*.safetensors"))
    index.add("A LoRA extracted from the DreamBooth star",
              "`personae extract world-bench/runs/dreambooth-star-s0/model --base models/world --rank 32 --conv-rank "
              "32 --out world/star-extracted.safetensors` (kohya's extract_lora_from_models: the fine-tuned model's "
              f"difference from its base, cut to rank 32 by SVD): {lora.stat().st_size / 1e6:.2f} MB against the "
              f"DreamBooth UNet's {unet / 1e6:.2f} MB. The same prompts and seeds with `personae generate --model "
              f"models/world --lora world/star-extracted.safetensors`: the checker reads {right(images)} of 4 as "
              f"prompted, star included (the DreamBooth model itself: {right(taught_images)} of 4).", images)
