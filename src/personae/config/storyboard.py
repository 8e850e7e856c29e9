"""The storyboard file (`personae storyboard SCENES.yaml`): project settings and a list of scenes."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from personae.config.addons import EmbeddingRef, LoraRef
from personae.config.base import Strict, check_template
from personae.config.fields import setting
from personae.config.sampling import RuntimeSettings, SamplingSettings

TEMPLATE_FIELDS = ("style", "shot_token", "shot_phrase", "angle", "description", "characters", "extra")
# the shot kinds storyboard artists write: kind -> (the words a panel's prompt gets, the abbreviations on shot lists,
# other names); the learned tokens of the shot-token recipe are three (close-up, medium, full): another kind gets a
# token only when `shot_tokens` maps one to it, else its own words (never a neighbour's token)
SHOTS = {
    "extreme close-up": ("extreme close-up shot", ["ECU", "XCU", "BCU"], ["extreme closeup", "big close-up"]),
    "close-up": ("close-up shot", ["CU"], ["closeup", "close", "close shot"]),
    "medium": ("medium shot", ["MS", "MCU"], ["mid", "mid shot", "medium close-up", "waist shot"]),
    "full": ("full shot", ["FS", "LS", "WS"], ["long shot", "wide", "wide shot", "full body"]),
    "extreme wide": ("extreme wide shot", ["EWS", "XWS", "ELS", "XLS"], ["extreme long shot", "extreme long"]),
    "over-the-shoulder": ("over-the-shoulder shot", ["OTS"], ["over shoulder"]),
    "two shot": ("two shot", ["2S"], ["2 shot"]),
    "establishing": ("establishing shot", ["EST"], []),
}
DEFAULT_SHOT_TOKENS = {"close-up": "<cu_trg>", "medium": "<ms_trg>", "full": "<fs_trg>"}
DEFAULT_SHOT_PHRASES = {kind: phrase for kind, (phrase, _, _) in SHOTS.items()}
# what people write on shot lists -> the kind (besides the kind's name and its words, each with or without "shot")
SHOT_ALIASES = {kind: [*abbreviations, *names] for kind, (_, abbreviations, names) in SHOTS.items()}


class Character(Strict):
    prompt: str = setting("", "how the character is described in every panel they appear in")
    lora: LoraRef | None = setting(None, "a character LoRA, active only in their panels")
    embedding: EmbeddingRef | None = setting(None, "a character token")
    seed: int | None = setting(None, "with seed_policy per_character: this character's panels start from this seed")


class Scene(Strict):
    number: int = setting(description="the panel number", ge=1)
    description: str = setting(description="what happens (goes into the prompt and under the panel)")
    dialogue: str = setting("", "any script: Korean, Cyrillic, Latin...")
    shot: str = setting("medium", "extreme close-up (ECU) | close-up (CU) | medium (MS) | full (FS, wide, long "
                                  "shot) | extreme wide (EWS, ELS) | over-the-shoulder (OTS) | two shot | establishing, "
                                  "or a shot named in shot_phrases / shot_tokens")
    angle: str = setting("", "eye level, high angle, low angle, ...")
    characters: list[str] = setting([], "names from `characters`")
    prompt: str = setting("", "extra words for this panel only")
    seed: int | None = setting(None, "overrides the seed policy")


class Layout(Strict):
    panels_per_row: int = setting(3, "panels in a row of the sheet", ge=1, le=8)
    panels_per_page: int = setting(6, "panels on one page", ge=1, le=48)
    page_size: Literal["A4", "Letter"] = setting("A4", "the PDF's paper size")
    landscape: bool = setting(True, "pages wider than tall")
    title: str = setting("", "a title at the top of each page")


class StoryboardSettings(SamplingSettings, RuntimeSettings):
    """A storyboard file: the sampling and runtime settings every panel shares, the style, the characters and scenes."""

    version: int = setting(1, "version of this file's layout", cli=False)
    model: str = setting(description="the base model: a diffusers folder, a single file, or a hub id")
    seed: int = setting(0, "the first seed; each panel's seed follows seed_policy", ge=0, lt=2**32)
    seed_policy: Literal["fixed", "per_panel", "per_character"] = setting(
        "per_panel", "fixed: the same seed everywhere; per_panel: seed + panel number; per_character: the first "
                     "character's seed (or seed) + panel number")
    style_lora: LoraRef | None = setting(None, "the drawing style, e.g. a sketch LoRA", flag="--lora")
    style_trigger: str = setting("", 'words that call the style, e.g. "storyboard sketch, drawn by KSH style"')
    shot_embeddings: list[EmbeddingRef] = setting([], "learned shot tokens (e.g. from the pivotal recipe); repeatable",
                                                  flag="--embedding")
    shot_tokens: dict[str, str] = setting(DEFAULT_SHOT_TOKENS, "the learned token of each shot that has one (a shot "
                                                               "not listed gets its words only)")
    shot_phrases: dict[str, str] = setting(DEFAULT_SHOT_PHRASES, "the words of each shot (a built-in shot not listed "
                                                                 "keeps its own words)")
    use_shot_tokens: Literal["auto", "yes", "no"] = setting("auto", "auto: a shot's token is used when its embedding "
                                                                    "is loaded; yes: it must be loaded")
    template: str = setting("{style}, {shot_token} {shot_phrase}, {angle}, {description}, {characters}, {extra}",
                            "how a panel's prompt is built; placeholders: " + ", ".join(TEMPLATE_FIELDS))
    characters: dict[str, Character] = setting({}, "the characters by name")
    layout: Layout = setting(Layout(), "how panels are laid out on the sheet")
    font: str | None = setting(None, "a .ttf/.otf/.ttc covering the dialogue's scripts (default: found on the system)")
    scenes: list[Scene] = setting(description="the scenes, one panel each", min_length=1)

    @field_validator("template")
    @classmethod
    def _template(cls, value: str) -> str:
        return check_template(value, TEMPLATE_FIELDS)

    @field_validator("use_shot_tokens", mode="before")
    @classmethod
    def _yaml_yes_no(cls, value):
        return {True: "yes", False: "no"}.get(value, value) if isinstance(value, bool) else value  # YAML's yes/no
