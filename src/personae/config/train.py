"""The training job file (`personae train JOB.yaml`): one schema, versioned, unknown keys rejected.

    version: 1
    base_model: ./tiny            # folder, single file, or hub id
    method: lora                  # lora | dreambooth | textual_inversion | pivotal
    data: {path: ./prepared}      # a `personae prepare` output, or a raw folder (prepared on the fly)
    train: {steps: 200, batch_size: 2, learning_rate: 1.0e-4, seed: 0, resolution: 64}
    lora: {rank: 4, alpha: 4, text_encoder: false}
    output: ./runs/demo
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from personae.config.base import Strict
from personae.config.methods import METHODS, MethodName


class DataSection(Strict):
    path: str  # a prepared set (has manifest.jsonl) or a folder of images to prepare now
    crop: Literal["center", "face", "none"] = "center"  # used only when `path` is a raw folder
    caption: str = ""  # used for raw folders without sidecar captions, e.g. "a photo of sks dog"
    flip: bool = False  # random horizontal flips (off for faces and text)
    shuffle_tags: bool = False  # shuffle comma-separated tags after the kept ones (kohya --shuffle_caption)
    keep_tokens: int | None = None  # tags fixed in front when shuffling; None: as recorded by prepare
    caption_dropout: float = Field(0.0, ge=0.0, le=1.0)  # share of steps trained with an empty caption


class ValidationSection(Strict):
    prompts: list[str] = []  # rendered at each checkpoint; empty: the first training caption
    seed: int = 0
    steps: int = Field(20, ge=1)
    cfg: float = 7.0
    sampler: str = "DDIM"


class TrainSection(Strict):
    steps: int | None = Field(None, ge=1)  # optimizer steps; give steps or epochs
    epochs: int | None = Field(None, ge=1)  # passes over the data (with repeats)
    batch_size: int = Field(1, ge=1)  # images per optimizer step, across all processes
    gradient_accumulation: int = Field(1, ge=1)  # micro-batches per optimizer step
    learning_rate: float = Field(1e-4, gt=0)
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                          "polynomial"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    optimizer: Literal["adamw", "adamw8bit", "prodigy"] = "adamw"
    weight_decay: float = Field(1e-2, ge=0)
    max_grad_norm: float = Field(1.0, ge=0)  # 0 disables clipping
    seed: int = 0
    resolution: int = Field(512, ge=8)  # square side for raw folders; prepared sets keep their sizes
    min_snr_gamma: float | None = Field(None, gt=0)  # min-SNR weighting (5 is the paper's value)
    noise_offset: float = Field(0.0, ge=0)  # e.g. 0.05 for darker darks / brighter brights
    ema: bool = False  # keep an exponential moving average of the trained weights (exported instead)
    ema_decay: float = Field(0.999, gt=0, lt=1)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    cache_latents: Literal["memory", "disk", "none"] = "memory"
    save_every: int | None = Field(None, ge=1)  # checkpoint every N steps (and always at the end)
    keep_last: int = Field(3, ge=1)  # checkpoints kept on disk
    verify_exports: bool = True  # reload every exported file with its loader and compare the image
    validation: ValidationSection = ValidationSection()

    @model_validator(mode="after")
    def _steps_or_epochs(self):
        if self.steps is None and self.epochs is None:
            self.steps = 500
        return self


class LoraSection(Strict):
    rank: int = Field(4, ge=1)
    alpha: float = Field(4.0, gt=0)  # scale = alpha / rank
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = ["to_q", "to_k", "to_v", "to_out.0"]  # add conv1, conv2 etc. for LoCon-style
    text_encoder: bool = False  # also a LoRA on the text encoder
    text_encoder_rank: int | None = None
    text_encoder_lr: float | None = None  # default: train.learning_rate


class TokenSpec(Strict):
    token: str  # e.g. "<cu_trg>"
    init_word: str = "*"  # the embedding starts as this word's (mean over its tokens)
    vectors: int = Field(1, ge=1, le=75)  # vectors per token (A1111 "number of vectors per token")

    @field_validator("token")
    @classmethod
    def _one_word(cls, value: str) -> str:
        if not value.strip() or any(c.isspace() for c in value):
            raise ValueError(f"a token must be one word with no spaces, e.g. <sks>, got {value!r}")
        return value


class TextualInversionSection(Strict):
    tokens: list[TokenSpec] = []


class PivotalSection(Strict):
    tokens: list[TokenSpec] = []
    token_lr: float = Field(5e-3, gt=0)  # embeddings usually learn with a higher rate than the LoRA


class DreamBoothSection(Strict):  # prior preservation here applies to every method (kohya: reg images)
    instance_prompt: str = ""  # used when an image has no caption, e.g. "a photo of sks dog"
    class_prompt: str = ""  # e.g. "a photo of a dog"
    prior_preservation: bool = False
    num_class_images: int = Field(50, ge=1)
    prior_loss_weight: float = Field(1.0, ge=0)
    class_data_dir: str | None = None  # cache of generated class images (default: <output>/class_images)
    class_steps: int = Field(25, ge=1)  # sampling steps for generating class images
    train_text_encoder: bool = False
    text_encoder_lr: float | None = None


class TrainJob(Strict):
    version: int = 1
    base_model: str
    method: MethodName  # config/methods.py lists them
    data: DataSection
    train: TrainSection = TrainSection()
    lora: LoraSection = LoraSection()
    dreambooth: DreamBoothSection = DreamBoothSection()
    textual_inversion: TextualInversionSection = TextualInversionSection()
    pivotal: PivotalSection = PivotalSection()
    output: str  # the run folder
    trigger: str = ""  # recorded in exports' metadata, e.g. "sks"
    allow_pickle: bool = False
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"

    @model_validator(mode="after")
    def _method_needs(self):
        section = METHODS[self.method].tokens_section
        if section and not getattr(self, section).tokens:
            raise ValueError(f"method {self.method} needs {section}.tokens (e.g. [{{token: '<sks>', init_word: dog}}])")
        d = self.dreambooth
        if d.prior_preservation and not d.class_prompt and not d.class_data_dir:
            raise ValueError("dreambooth.prior_preservation needs dreambooth.class_prompt (e.g. 'a photo of a dog') "
                             "or a class_data_dir of captioned regularization images")
        return self
