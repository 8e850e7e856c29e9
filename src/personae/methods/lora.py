"""LoRA: low-rank adapters (peft) on the UNet, optionally on the text encoder.

Trains: peft LoRA layers on `lora.target_modules` of the UNet (rank, alpha, dropout), and on the text
    encoder's attention when `lora.text_encoder`; the base weights stay frozen.
Exports: `<name>.safetensors` in kohya / A1111 layout (with sd-scripts' ss_* header and hashes) and
    `<name>_diffusers/pytorch_lora_weights.safetensors` for diffusers / peft (`name` of the job, default
    "lora"), tensors in `output_dtype`; both reloaded and checked.
Reads: `lora` (rank, alpha, targets, text encoder), `dreambooth` (prior preservation), `train`, `data`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from personae.methods.base import ExportFile, Method, ParamGroup, export_dtype
from personae.methods.lora_files import kohya_metadata, peft_to_kohya, training_metadata, write_diffusers, write_kohya

TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def freeze(pipe) -> None:
    for part in (pipe.unet, pipe.vae, pipe.text_encoder):
        part.requires_grad_(False)


def add_lora(pipe, rank: int, alpha: float, dropout: float, targets: list[str], text_encoder: bool,
             te_rank: int | None) -> None:
    pipe.unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                                     init_lora_weights="gaussian"))
    if text_encoder:
        r = te_rank or rank
        pipe.text_encoder.add_adapter(LoraConfig(r=r, lora_alpha=alpha * r / rank, lora_dropout=dropout,
                                                 target_modules=TEXT_ENCODER_TARGETS, init_lora_weights="gaussian"))


def export_lora(pipe, out: Path, *, name: str, rank: int, alpha: float, te_alpha: float | None, steps: int,
                base_model: str, trigger: str, extra_meta: dict[str, str], file_stem: str = "lora",
                dtype: torch.dtype = torch.float32) -> list[ExportFile]:
    """Write `<file_stem>.safetensors` (kohya/A1111) and `<file_stem>_diffusers/pytorch_lora_weights.safetensors`.

    `name` is what the file calls itself (`ss_output_name`: the run's name); `file_stem` names the files.
    """
    te_trained = bool(getattr(pipe.text_encoder, "peft_config", None))
    unet_state = get_peft_model_state_dict(pipe.unet)
    # pivotal tuning resizes the token embeddings: they travel in the embedding file; peft would put the whole
    # table into the LoRA, which diffusers' loader then rejects ("all LoRA param names contain 'lora'")
    te_state = get_peft_model_state_dict(pipe.text_encoder, save_embedding_layers=False) if te_trained else None
    out.mkdir(parents=True, exist_ok=True)
    meta = kohya_metadata(rank=rank, alpha=alpha, steps=steps, base_model=base_model, trigger=trigger,
                          name=name, te_trained=te_trained, extra=extra_meta)
    kohya = write_kohya(out / f"{file_stem}.safetensors", peft_to_kohya(unet_state, te_state, alpha, te_alpha, dtype),
                        meta)
    parts = {"unet": (unet_state, alpha)}
    if te_trained:
        parts["text_encoder"] = (te_state, te_alpha if te_alpha is not None else alpha)
    diffusers_file = write_diffusers(out / f"{file_stem}_diffusers", parts, training_metadata(kohya), dtype)
    return [ExportFile(kohya, "kohya", "lora"), ExportFile(diffusers_file, "diffusers", "lora")]


@dataclass
class LoraMethod(Method):

    def setup(self, pipe) -> list[ParamGroup]:
        c = self.job.lora
        freeze(pipe)
        add_lora(pipe, c.rank, c.alpha, c.dropout, c.target_modules, c.text_encoder, c.text_encoder_rank)
        lr = self.job.train.learning_rate
        groups = [ParamGroup("unet_lora", [p for p in pipe.unet.parameters() if p.requires_grad], lr)]
        if c.text_encoder:
            groups.append(ParamGroup("text_encoder_lora", [p for p in pipe.text_encoder.parameters() if p.requires_grad],
                                     c.text_encoder_lr or lr))
        return groups

    def modules(self, pipe) -> list[torch.nn.Module]:
        return [pipe.unet, pipe.text_encoder] if self.job.lora.text_encoder else [pipe.unet]

    @property
    def text_encoder_changes(self) -> bool:
        return self.job.lora.text_encoder

    def export(self, pipe, out: Path, metadata: dict[str, str]) -> list[ExportFile]:
        c = self.job.lora
        te_alpha = c.alpha * (c.text_encoder_rank or c.rank) / c.rank
        header = {k: v for k, v in metadata.items() if k.startswith(("ss_", "modelspec.", "personae_"))}
        return export_lora(pipe, out, name=self.job.name or Path(self.job.output).resolve().name or "lora",
                           rank=c.rank, alpha=c.alpha, te_alpha=te_alpha, steps=int(metadata.get("steps", 0)),
                           base_model=metadata.get("base_model", ""), trigger=self.job.trigger, extra_meta=header,
                           file_stem=self.job.name or "lora", dtype=export_dtype(self.job))
