"""Prompt travel on the world: a still shape whose caption changes from one keyframe to the other (its shape, its
colour or its background), drawn by `personae animate` with the shipped motion adapter, every frame read back by
the exact checker.

    rows = measure_travel(str(zero_snr_model), str(motion_adapter), seeds=2)

Clip (travel, seed) is `personae animate --prompt "0: CAPTION A\\n15: CAPTION B"` with the world's motion settings
(world/motion_eval.py: DDIM, 25 steps, CFG 4, clip skip 1, the adapter's LoRA). Its control is the same seed with
caption A alone. Each row counts, in the clip's first and last QUARTER of frames, how many read as caption A and how
many as caption B: a travel that works starts as A and ends as B, where the control ends as A.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from personae.config.animate import AnimateSettings
from personae.inference.animate import animate, open_for
from personae.world.check import check
from personae.world.clips import MOTION_WORDS
from personae.world.motion_eval import CONTEXT, STRIDE
from personae.world.scene import caption

FRAMES, STEPS, CFG = 16, 25, 4.0
QUARTER = FRAMES // 4
SIZE = "medium shot"


@dataclass(frozen=True)
class Travel:
    changes: str  # "shape", "colour" or "background"
    first: tuple[str, str, str]  # (shape, colour, background) at frame 0
    last: tuple[str, str, str]  # ... at the last frame

    def caption(self, scene: tuple[str, str, str]) -> str:
        return f"{caption(*scene, SIZE)}, {MOTION_WORDS['still']}"

    @property
    def prompt(self) -> str:
        return f"0: {self.caption(self.first)}\n{FRAMES - 1}: {self.caption(self.last)}"


TRAVELS = (Travel("shape", ("circle", "white", "red"), ("triangle", "white", "red")),
           Travel("colour", ("square", "white", "green"), ("square", "black", "green")),
           Travel("background", ("circle", "red", "blue"), ("circle", "red", "yellow")))


def travel_settings(model: str, adapter: str, prompt: str, seed: int, lora: str | None) -> AnimateSettings:
    return AnimateSettings(model=model, motion_adapter=adapter, prompt=prompt, seed=seed, steps=STEPS, cfg=CFG,
                           sampler="DDIM", clip_skip=1, frames=FRAMES, context=CONTEXT, context_stride=STRIDE,
                           device="cpu", loras=[{"path": lora, "weight": 1.0}] if lora else [])


def reads_as(frames: list[Image.Image], scene: tuple[str, str, str]) -> list[bool]:
    """Per frame: the checker reads its shape, colour and background as `scene`."""
    return [(a.shape, a.colour, a.background) == scene for a in map(check, frames)]


def score(frames: list[Image.Image], travel: Travel) -> dict:
    first, last = reads_as(frames, travel.first), reads_as(frames, travel.last)
    return {"starts_first": sum(first[:QUARTER]), "starts_last": sum(last[:QUARTER]),
            "ends_first": sum(first[-QUARTER:]), "ends_last": sum(last[-QUARTER:])}


def measure_travel(model: str, adapter: str, seeds: int = 2, lora: str | None = None) -> list[dict]:
    """A row per (travel, seed): the travelling clip's score and its control's (caption A alone), and both clips'
    frames (`frames`, `control_frames`)."""
    session, rows = None, []
    for travel in TRAVELS:
        for seed in range(seeds):
            settings = travel_settings(model, adapter, travel.prompt, seed, lora)
            session = session or open_for(settings)
            frames = animate(settings, session).frames
            control = animate(settings.model_copy(update={"prompt": travel.caption(travel.first)}), session).frames
            rows.append({"changes": travel.changes, "seed": seed, "prompt": travel.prompt, **score(frames, travel),
                         "control": score(control, travel), "frames": frames, "control_frames": control})
    return rows
