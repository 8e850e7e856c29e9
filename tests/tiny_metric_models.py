"""Tiny random CLIP and DINO (ViT) folders, of the classes the compare metrics load (tests and the docs test)."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def _as_on_the_hub(folder: Path, name: str) -> None:
    """Hub folders (openai/clip-vit-base-patch32, facebook/dino-vits16) name the processor without a backend."""
    config = folder / "preprocessor_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "image_processor_type": name}, indent=1))


def write_tiny_clip(folder: Path) -> Path:
    """A randomly initialised CLIPModel with the SD-1.5 tokenizer, saved as a local folder."""
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip import CLIPImageProcessorPil

    from personae.models.tiny import sd15_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        common = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2)
        model = CLIPModel(CLIPConfig(text_config={**common, "vocab_size": 49408},
                                     vision_config={**common, "image_size": 32, "patch_size": 8}, projection_dim=16))
    model.save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    _as_on_the_hub(folder, "CLIPImageProcessor")
    sd15_tokenizer().save_pretrained(folder)
    return folder


def write_tiny_dino(folder: Path) -> Path:
    from transformers import ViTConfig, ViTModel
    from transformers.models.vit import ViTImageProcessorPil

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                                   image_size=32, patch_size=8))
    model.save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    _as_on_the_hub(folder, "ViTImageProcessor")
    return folder
