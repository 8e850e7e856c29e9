"""What every training method provides to the loop, and what an export is.

A method decides what is trained (LoRA layers, new token vectors, whole models), with
which learning rates, and how the result is written for other tools. The loop knows
nothing else about it. New methods: a module with a `Method` subclass, one registry line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from personae.config.train import TrainJob

# lora: diffusers' load_lora_weights; personae: `generate --lora` (models.addons, every LyCORIS kind); peft: a peft
# adapter folder per component (PeftModel.from_pretrained); embedding: load_textual_inversion; folder / single_file
Loader = Literal["lora", "personae", "peft", "embedding", "folder", "single_file"]


@dataclass(frozen=True)
class ExportFile:
    path: Path
    format: str  # e.g. "kohya", "diffusers", "a1111"
    loader: Loader  # which diffusers loader reads it back (checked after writing)
    token: str | None = None  # for embeddings: the token to load it under


def export_dtype(job: TrainJob) -> torch.dtype:
    """The tensor type of the exported files (`output_dtype`, kohya's --save_precision)."""
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[job.output_dtype]


@dataclass
class ParamGroup:
    name: str
    params: list[torch.nn.Parameter]
    lr: float
    weight_decay: float | None = None


@dataclass
class Method:
    job: TrainJob
    skipped: list[str] = field(default_factory=list)  # exports the last `export` could not write, each with why
    said: list[str] = field(default_factory=list)  # what `setup` found that the run's log should say

    # 1. setup: freeze the base, add what is trained; returns optimizer groups
    def setup(self, pipe) -> list[ParamGroup]:
        raise NotImplementedError

    def modules(self, pipe) -> list[torch.nn.Module]:
        """Modules whose parameters train (wrapped by accelerate for multi-process)."""
        raise NotImplementedError

    @property
    def text_encoder_changes(self) -> bool:
        """True when text-encoder outputs change during training (no caching of text embeddings)."""
        return False

    def frozen(self, step: int) -> list[torch.nn.Parameter]:
        """Trained parameters left as they are at optimizer step `step` (0-based): a method's phases."""
        return []

    def after_step(self, pipe) -> None:
        """Called after each optimizer step (e.g. to keep untrained embedding rows fixed)."""

    # 2. state: the trained tensors, for checkpoints and EMA (every parameter that requires grad)
    def trainable_parameters(self, pipe) -> dict[str, torch.nn.Parameter]:
        return {f"{part}.{name}": p for part in ("unet", "text_encoder")
                for name, p in getattr(pipe, part).named_parameters() if p.requires_grad}

    def trainable_state(self, pipe) -> dict[str, torch.Tensor]:
        return {k: p.detach().to("cpu", copy=True).contiguous() for k, p in self.trainable_parameters(pipe).items()}

    @torch.no_grad()
    def load_trainable_state(self, pipe, state: dict[str, torch.Tensor]) -> None:
        params = self.trainable_parameters(pipe)
        missing = set(params) ^ set(state)
        if missing:
            raise ValueError(f"checkpoint does not match this job's trainable weights: {sorted(missing)[:3]}")
        for key, p in params.items():
            p.copy_(state[key].to(p.device, p.dtype))

    # 3. exports other tools read; what cannot be written goes into `self.skipped` with the reason
    def export(self, pipe, out: Path, metadata: dict[str, str]) -> list[ExportFile]:
        """`metadata`: "steps", "base_model" (its name, no path), "method", and the kohya header fields (ss_*)."""
        raise NotImplementedError
