"""What a generation adds to the base model: LoRAs, embeddings, ControlNet units.

Each reference also says how it is written on one command-line word (`CLI_FORM`, `from_cli`),
so the CLI options are generated from these declarations like every other setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import model_validator

from personae.config.base import Strict
from personae.config.fields import setting


def _split_last(text: str, sep: str = ":") -> tuple[str, str] | None:
    """`a:b:c` -> ("a:b", "c") when the whole text is not an existing file (a path may hold the separator)."""
    head, found, tail = text.rpartition(sep)
    if found and head and not Path(text).is_file():
        return head, tail
    return None


class LoraRef(Strict):
    """A LoRA file applied at a strength (A1111's <lora:name:weight>, or <lora:name:te:unet>)."""

    CLI_FORM: ClassVar[str] = "FILE[:WEIGHT[:UNET]]"

    path: str = setting(description=".safetensors in kohya/A1111 or diffusers/peft layout, or a peft adapter folder")
    weight: float = setting(1.0, "strength; 0 disables, 1 is as trained, negative inverts (the text encoder's, and "
                                 "the UNet's unless unet_weight is given)")
    unet_weight: float | None = setting(None, "the UNet's strength where it differs from the text encoder's (A1111's "
                                              "<lora:name:te:unet>, ComfyUI's strength_model)")

    @model_validator(mode="before")
    @classmethod
    def _one_word(cls, data):
        """In a YAML file as on the command line: `FILE:0.8` is accepted as one string."""
        return cls.from_cli(data) if isinstance(data, str) else data

    @staticmethod
    def from_cli(text: str) -> dict:
        split = _split_last(text)
        if split:
            try:
                weight = float(split[1])
            except ValueError:
                return {"path": text, "weight": 1.0}
            again = _split_last(split[0])  # FILE:TE:UNET, as A1111's tag orders them
            if again:
                try:
                    return {"path": again[0], "weight": float(again[1]), "unet_weight": weight}
                except ValueError:
                    pass
            return {"path": split[0], "weight": weight}
        return {"path": text, "weight": 1.0}


class EmbeddingRef(Strict):
    """A textual-inversion embedding and the token that calls it in prompts."""

    CLI_FORM: ClassVar[str] = "FILE[:TOKEN]"

    path: str = setting(description="A1111 .safetensors/.pt or diffusers learned_embeds.safetensors")
    token: str | None = setting(None, "the token in prompts; default: the token stored in the file, else the file "
                                      "name (as A1111 does)")

    @model_validator(mode="before")
    @classmethod
    def _one_word(cls, data):
        """In a YAML file as on the command line: `FILE:<token>` is accepted as one string."""
        return cls.from_cli(data) if isinstance(data, str) else data

    @staticmethod
    def from_cli(text: str) -> dict:
        split = _split_last(text)
        if split and split[1]:
            return {"path": split[0], "token": split[1]}
        return {"path": text, "token": None}


class ControlRef(Strict):
    """One ControlNet unit (A1111's "ControlNet 0", "ControlNet 1", ...): a control map from an image, a model, a weight."""

    CLI_FORM: ClassVar[str] = "TYPE:IMAGE[:WEIGHT]"

    type: str = setting(description="how the image becomes a control map: canny, face, pose, shuffle, raw "
                                    "(`personae detect --help` lists them)")
    image: str = setting(description="the photo to read (for raw: the control map itself)")
    weight: float = setting(1.0, '"Control Weight": 0 switches the unit off, 1 as trained', ge=0.0, le=2.0)
    model: str | None = setting(None, "ControlNet folder or hub id; default: the type's public default model")
    options: dict[str, float] = setting({}, 'the type\'s preprocessor options, e.g. canny {"low": 100, "high": 200}')
    mask: str | None = setting(None, "inpaint / inpaint_only: the unit's own mask (white: redrawn; the one A1111 "
                                     "paints on the unit's picture), read at its picture's size; default: --mask")
    resize_mode: Literal["Just Resize", "Crop and Resize", "Resize and Fill"] = setting(
        "Crop and Resize", '"Resize Mode": how the map fits the picture: stretched, scaled to cover it and cut to '
                           "size, or scaled to fit inside and the rest filled")
    processor_res: int = setting(512, '"Processor Res": the short side the photo is scaled to before its map is made',
                                 ge=64, le=4096)
    pixel_perfect: bool = setting(False, '"Pixel Perfect": the processor resolution the fitted map needs, in place of '
                                         "processor_res")
    control_mode: Literal["Balanced", "My prompt is more important", "ControlNet is more important"] = setting(
        "Balanced", '"Control Mode": A1111\'s; the other two weaken the shallow residuals (0.825 per layer), and '
                    '"ControlNet is more important" leaves the negative prompt\'s prediction without control')
    guidance_start: float | None = setting(None, '"Guidance Start" of this unit (default: control_start)', ge=0.0,
                                           le=1.0)
    guidance_end: float | None = setting(None, '"Guidance End" of this unit (default: control_end)', ge=0.0, le=1.0)
    guidance_by: Literal["steps", "noise"] = setting(
        "steps", 'what the guidance window counts: "steps" as A1111 does (the share of the steps run), or "noise" as '
                 "ComfyUI's start_percent / end_percent do (points of the model's noise levels: a model call is "
                 "controlled while its sigma lies between theirs)")
    low_vram: bool = setting(False, '"Low VRAM" (the extension\'s per-unit checkbox): this unit\'s ControlNet waits in '
                                    "main memory and goes to the GPU only for each of its calls, for a GPU short of "
                                    "memory without --medvram; the same pictures, slower (on the CPU: nothing to move)")
    hr_option: Literal["Both", "Low res only", "High res only"] = setting(
        "Both", '"Hires-Fix Option": with the hires fix, the passes the unit controls: both, the first (low '
                "resolution) only, or the redraw (high resolution) only")

    @model_validator(mode="before")
    @classmethod
    def _one_word(cls, data):
        """In a YAML file as on the command line: `canny:photo.png:0.8` is accepted as one string."""
        return cls.from_cli(data) if isinstance(data, str) else data

    @staticmethod
    def from_cli(text: str) -> dict:
        kind, sep, rest = text.partition(":")
        if not sep or not kind or not rest:
            raise ValueError(f"expected TYPE:IMAGE[:WEIGHT], e.g. canny:photo.png:0.8, got {text!r}")
        split = _split_last(rest)
        if split:
            try:
                return {"type": kind, "image": split[0], "weight": float(split[1])}
            except ValueError:
                pass
        return {"type": kind, "image": rest}  # the weight as typed only: a PNG's unit keeps its own otherwise
