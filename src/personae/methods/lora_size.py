"""What a LoRA-family recipe's file weighs on a full-size model, without training anything or downloading weights.

    path = sd15_lora_file(LoraSection(variant="dora", rank=8), out_dir)   # SD-1.5, fp16 tensors
    size_mb = path.stat().st_size / 1e6

The UNet and the text encoder are built from their configs (`sd15_lora_file`: the SD-1.5 configs personae
ships in models/sd15) with zeroed weights, since the values do not change a file's size; the recipe's adapters
go on them as a training run puts them (`add_lora`), and `export_lora` writes what the trainer writes: the kohya /
LyCORIS file (`lora.safetensors`) and the diffusers or peft export beside it, in `dtype`. A real run's file
differs only in its header (the dataset's tags and the run's settings: a few KB). Full size: about 4 GB of
memory and a few seconds; the same function on a small model's configs is what the tests compare with a
trained run's file.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch

from personae.config.train import LoraSection
from personae.methods.lora import add_lora, export_lora, freeze, locon_args


def empty_components(unet_config: dict, text_config) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(UNet2DConditionModel, CLIPTextModel) of the configs, every weight and buffer zero (no init time)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    with torch.device("meta"):  # shapes first: drawing 860 M random numbers would take longer than the rest
        unet = UNet2DConditionModel.from_config(unet_config)
        text_encoder = CLIPTextModel(text_config)
    parts = []
    for model in (unet, text_encoder):
        model = model.to_empty(device="cpu")
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                tensor.zero_()
        parts.append(model.eval())
    return parts[0], parts[1]


def lora_file(lora: LoraSection, unet_config: dict, text_config, out: Path,
              dtype: torch.dtype = torch.float16) -> Path:
    """The kohya / LyCORIS file a run with `lora` exports for a model of these configs, written into `out`
    (with the diffusers or peft export beside it, as a run writes them)."""
    unet, text_encoder = empty_components(unet_config, text_config)
    pipe = SimpleNamespace(unet=unet, text_encoder=text_encoder, vae=torch.nn.Identity())
    freeze(pipe)
    add_lora(pipe, lora.rank, lora.alpha, lora.dropout, lora.target_modules, lora.text_encoder,
             lora.text_encoder_rank, lora.variant, lora.conv_rank, lora.conv_alpha, lora.text_encoder_alpha,
             lora.block_ranks, lora.block_alphas)
    files = export_lora(pipe, Path(out), name="size", rank=lora.rank, alpha=lora.alpha, steps=0, base_model="",
                        trigger="", extra_meta={}, dtype=dtype,
                        network_args=locon_args(lora) if lora.variant == "locon" else None)
    return Path(files[0].path)


def sd15_lora_file(lora: LoraSection, out: Path, dtype: torch.dtype = torch.float16) -> Path:
    """`lora_file` at the full SD-1.5 size (UNet 860 M, text encoder 123 M parameters), from the shipped configs."""
    from transformers import CLIPTextConfig

    from personae.models.tiny import SD15_DIR

    unet_config = json.loads((SD15_DIR / "unet" / "config.json").read_text())
    return lora_file(lora, unet_config, CLIPTextConfig.from_pretrained(str(SD15_DIR / "text_encoder")), out, dtype)
