"""How well a shapes-world model draws what it is asked: generate for fixed prompts, read back, count.

    result = evaluate_world(pipe, samples=64)
    result.scores   # {"background": 1.0, "colour": 0.98, "shape": 0.97, "size": 0.98, "all": 0.95}

Image i uses prompt i mod 16 of `EVAL_PROMPTS` and seed `seed + i` (its own CPU generator),
DDIM with the model's own noise schedule, classifier-free guidance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler
from PIL import Image

from personae.events import EventHandler, Progress, ignore
from personae.world.check import accuracy, check
from personae.world.scene import EVAL_PROMPTS, parse_prompt


@torch.no_grad()
def generate_world(pipe, prompts: list[str], seeds: list[int], steps: int = 25, cfg: float = 4.0, batch: int = 64,
                   on_event: EventHandler = ignore):
    """PIL images, one per (prompt, seed), from a StableDiffusionPipeline (its scheduler is left as it was);
    `on_event` hears a Progress("pictures", done, total) after every denoising step of a batch, in pictures."""
    original = pipe.scheduler
    pipe.scheduler = DDIMScheduler.from_config(original.config)
    pipe.set_progress_bar_config(disable=True)
    images = []
    try:
        for start in range(0, len(prompts), batch):
            part = slice(start, start + batch)
            size = len(prompts[part])
            generators = [torch.Generator("cpu").manual_seed(s) for s in seeds[part]]

            def stepped(_pipe, i, _t, values, start=start, size=size):
                on_event(Progress("pictures", start + round(size * (i + 1) / steps), len(prompts)))
                return values

            images += pipe(prompt=list(prompts[part]), num_inference_steps=steps, guidance_scale=cfg,
                           generator=generators, callback_on_step_end=stepped).images
    finally:
        pipe.scheduler = original
    return images


@dataclass
class WorldEval:
    scores: dict[str, float]  # share right per attribute, and "all"
    prompts: list[str]
    images: list[Image.Image]

    def sheet(self, columns: int = 16) -> Image.Image:
        """The images in rows of `columns` (prompt i mod 16 in column i mod 16), 1 px apart."""
        side = self.images[0].width
        rows = (len(self.images) + columns - 1) // columns
        sheet = Image.new("RGB", (columns * (side + 1) - 1, rows * (side + 1) - 1), "white")
        for i, image in enumerate(self.images):
            sheet.paste(image, ((i % columns) * (side + 1), (i // columns) * (side + 1)))
        return sheet


def evaluate_world(pipe, samples: int = 64, steps: int = 25, cfg: float = 4.0, seed: int = 0,
                   prompts: tuple[str, ...] = EVAL_PROMPTS) -> WorldEval:
    """Share of generated images whose background, colour, shape, size (and all four) match the prompt."""
    chosen = [prompts[i % len(prompts)] for i in range(samples)]
    images = generate_world(pipe, chosen, [seed + i for i in range(samples)], steps, cfg)
    scores = accuracy([(check(image), parse_prompt(p)) for image, p in zip(images, chosen)])
    return WorldEval(scores, chosen, images)
