"""Settings of one text-to-image generation, shared by the CLI, job files, PNG metadata and the UI."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from personae.config.base import Strict


class LoraRef(Strict):
    """A LoRA file applied at a strength (A1111's <lora:name:weight>)."""

    path: str  # .safetensors in kohya/A1111 or diffusers/peft layout
    weight: float = 1.0  # strength; 0 disables, 1 is as trained, negative inverts


class EmbeddingRef(Strict):
    """A textual-inversion embedding and the token that calls it in prompts."""

    path: str  # A1111 .safetensors/.pt or diffusers learned_embeds.safetensors
    token: str | None = None  # default: the token stored in the file, else the file name (as A1111 does)


class ControlRef(Strict):
    """One ControlNet unit (A1111's "ControlNet 0", "ControlNet 1", ...): a control map from an image, a model, a weight."""

    type: str  # how the image becomes a control map: canny, face, pose, raw (`personae detect --help` lists them)
    image: str  # the photo to read (for raw: the control map itself)
    weight: float = Field(1.0, ge=0.0, le=2.0)  # "Control Weight": 0 switches the unit off, 1 as trained
    model: str | None = None  # ControlNet folder or hub id; None: the type's public default model
    options: dict[str, float] = {}  # the type's preprocessor options, e.g. canny {"low": 100, "high": 200}


class GenerateSettings(Strict):
    """Everything that decides the pixels of a txt2img run (A1111's names in comments)."""

    version: int = 1
    model: str  # diffusers folder, single-file .safetensors, or hub id
    prompt: str  # A1111 syntax: (word:1.3), (word), [word]; any length (chunked by 75 tokens)
    negative: str = ""  # "Negative prompt"
    steps: int = Field(20, ge=1, le=1000)  # "Steps"
    cfg: float = Field(7.0, ge=0.0, le=100.0)  # "CFG scale"; <= 1 turns guidance off
    seed: int = Field(-1, ge=-1, lt=2**32)  # "Seed"; -1 picks one at random (written to the PNG)
    width: int | None = Field(None, ge=8, le=8192)  # "Size"; None: the model's native size
    height: int | None = Field(None, ge=8, le=8192)
    sampler: str = "DPM++ 2M Karras"  # "Sampler", by A1111 name (personae generate --help lists them)
    clip_skip: int = Field(1, ge=1, le=12)  # "Clip skip": 1 uses the last CLIP layer, 2 the one before
    batch_size: int = Field(1, ge=1, le=64)  # images per forward pass (seeds seed, seed+1, ...)
    batch_count: int = Field(1, ge=1, le=10000)  # how many batches, continuing the seeds
    loras: list[LoraRef] = []
    embeddings: list[EmbeddingRef] = []
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"  # auto: fp16 on cuda/mps, fp32 on cpu
    allow_pickle: bool = False  # load .ckpt/.pt/.bin files (they can run code when loaded)
    init_image: str | None = None  # img2img: start from this image ("Denoising strength" decides how much changes)
    strength: float = Field(0.75, ge=0.0, le=1.0)  # "Denoising strength": 0 keeps the image, 1 redraws it
    mask: str | None = None  # inpainting: white = redraw, black = keep (needs init_image)
    mask_blur: int = Field(4, ge=0, le=64)  # "Mask blur": feathering of the mask edge, in pixels
    controls: list[ControlRef] = []  # ControlNet units; several make a multi-ControlNet
    control_start: float = Field(0.0, ge=0.0, le=1.0)  # "Guidance Start": fraction of the steps before control acts
    control_end: float = Field(1.0, ge=0.0, le=1.0)  # "Guidance End": fraction of the steps after which it stops

    @model_validator(mode="after")
    def _control_window(self):
        if self.control_start >= self.control_end:
            raise ValueError(f"control_start ({self.control_start:g}) must be below control_end ({self.control_end:g})")
        return self

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int | None) -> int | None:
        if value is not None and value % 8:
            raise ValueError(f"must be a multiple of 8 (the VAE works in 8-pixel cells), got {value}")
        return value
