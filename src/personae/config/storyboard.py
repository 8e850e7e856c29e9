"""The storyboard file (`personae storyboard SCENES.yaml`): project settings and a list of scenes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from personae.config.base import Strict, check_template
from personae.config.generate import EmbeddingRef, LoraRef

TEMPLATE_FIELDS = ("style", "shot_token", "shot_phrase", "angle", "description", "characters", "extra")
DEFAULT_SHOT_TOKENS = {"close-up": "<cu_trg>", "medium": "<ms_trg>", "full": "<fs_trg>"}
DEFAULT_SHOT_PHRASES = {"close-up": "close-up shot", "medium": "medium shot", "full": "full shot"}
SHOT_ALIASES = {  # what people write on shot lists -> the shot key
    "close-up": ["close-up", "close up", "closeup", "cu", "close", "close shot", "extreme close-up", "ecu"],
    "medium": ["medium", "medium shot", "ms", "mid", "mid shot", "medium close-up", "mcu", "waist shot"],
    "full": ["full", "full shot", "fs", "long shot", "ls", "wide", "wide shot", "ws", "full body"],
}


class Character(Strict):
    prompt: str = ""  # how the character is described in every panel they appear in
    lora: LoraRef | None = None  # a character LoRA, active only in their panels
    embedding: EmbeddingRef | None = None  # a character token
    seed: int | None = None  # with seed_policy per_character: this character's panels start from this seed


class Scene(Strict):
    number: int = Field(ge=1)
    description: str  # what happens (goes into the prompt and under the panel)
    dialogue: str = ""  # any script: Korean, Cyrillic, Latin...
    shot: str = "medium"  # close-up | medium | full (or an alias such as CU, MS, wide)
    angle: str = ""  # eye level, high angle, low angle, ...
    characters: list[str] = []  # names from `characters`
    prompt: str = ""  # extra words for this panel only
    seed: int | None = None  # overrides the seed policy


class Layout(Strict):
    panels_per_row: int = Field(3, ge=1, le=8)
    panels_per_page: int = Field(6, ge=1, le=48)
    page_size: Literal["A4", "Letter"] = "A4"
    landscape: bool = True
    title: str = ""


class StoryboardSettings(Strict):
    version: int = 1
    model: str  # diffusers folder, single file, or hub id
    steps: int = Field(20, ge=1)
    cfg: float = 7.0
    width: int | None = None  # default: the model's native size
    height: int | None = None
    sampler: str = "DPM++ 2M Karras"
    clip_skip: int = Field(1, ge=1, le=12)
    negative: str = ""
    seed: int = Field(0, ge=0)
    seed_policy: Literal["fixed", "per_panel", "per_character"] = "per_panel"  # fixed: same seed everywhere;
    # per_panel: seed + panel number; per_character: the first character's seed (or seed) + panel number
    style_lora: LoraRef | None = None  # the drawing style, e.g. a sketch LoRA
    style_trigger: str = ""  # e.g. "storyboard sketch, drawn by KSH style"
    shot_embeddings: list[EmbeddingRef] = []  # learned shot tokens (e.g. from the pivotal recipe)
    shot_tokens: dict[str, str] = DEFAULT_SHOT_TOKENS
    shot_phrases: dict[str, str] = DEFAULT_SHOT_PHRASES
    use_shot_tokens: Literal["auto", "yes", "no"] = "auto"  # auto: a token is used when its embedding is loaded
    template: str = "{style}, {shot_token} {shot_phrase}, {angle}, {description}, {characters}, {extra}"
    characters: dict[str, Character] = {}
    layout: Layout = Layout()
    font: str | None = None  # a .ttf/.otf/.ttc covering the dialogue's scripts (default: found on the system)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    scenes: list[Scene] = Field(min_length=1)

    @field_validator("template")
    @classmethod
    def _template(cls, value: str) -> str:
        return check_template(value, TEMPLATE_FIELDS)
