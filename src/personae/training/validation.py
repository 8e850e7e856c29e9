"""Validation grids: the same prompts and seed rendered at each checkpoint, beside the base model."""

from __future__ import annotations

from PIL import Image

from personae.config.generate import GenerateSettings
from personae.config.train import ValidationSection
from personae.inference.session import Session
from personae.inference.txt2img import txt2img
from personae.media.grid import labelled_grid


def render_prompts(pipe, source, base_scheduler: dict, prompts: list[str], v: ValidationSection,
                   clip_skip: int = 1) -> list[Image.Image]:
    """The prompts at the validation settings, with the clip skip the run trains with."""
    session = Session(pipe, source, pipe.device, pipe.unet.dtype, base_scheduler=base_scheduler)
    scheduler = pipe.scheduler
    modes = {name: getattr(pipe, name).training for name in ("unet", "text_encoder")}
    pipe.unet.eval(), pipe.text_encoder.eval()
    try:
        return [txt2img(GenerateSettings(model=source.location, prompt=p, negative=v.negative, steps=v.steps,
                                         cfg=v.cfg, seed=v.seed, sampler=v.sampler, clip_skip=clip_skip),
                        session)[0].image for p in prompts]
    finally:
        pipe.scheduler = scheduler
        for name, was in modes.items():
            getattr(pipe, name).train(was)


def validation_grid(pipe, source, base_scheduler, prompts, v: ValidationSection, label: str,
                    baseline: Image.Image | None = None, clip_skip: int = 1) -> Image.Image:
    """One row for this model; with `baseline` (the base model's row grid) stacked above it."""
    row = render_prompts(pipe, source, base_scheduler, prompts, v, clip_skip)
    grid = labelled_grid([row], [label], prompts, title=f"validation, seed {v.seed}")
    if baseline is None:
        return grid
    stacked = Image.new("RGB", (max(grid.width, baseline.width), grid.height + baseline.height), "white")
    stacked.paste(baseline, (0, 0))
    stacked.paste(grid, (0, baseline.height))
    return stacked
