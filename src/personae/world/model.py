"""The shapes-world model: SD-1.5's architecture at a size we can pretrain on 2 CPU cores.

    pipe = build_world_pipeline(seed=0, tokenizer_dir=folder)   # random weights, ready to pretrain
    write_world_model(folder)                                    # copy the shipped pretrained model

The same classes as SD-1.5 (AutoencoderKL, CLIPTextModel with our own tokenizer files,
UNet2DConditionModel with cross-attention, SD-1.5's noise schedule), so everything that
runs on SD-1.5 runs on it: 32x32 images, a VAE that downsamples 4x (8x8x4 latents), a
UNet of about 1.65 M parameters and a text encoder of about 0.18 M. Pretrained by
`personae world pretrain` (world/pretrain.py); the result ships in
`world/weights/` and `personae model world DIR` writes it out.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from personae.errors import UserError
from personae.models.folders import readable_by_others
from personae.models.tiny import SD15_DIR
from personae.outputs import MODEL_FOLDER, staged_output

WORLD_DIR = Path(__file__).parent / "weights"  # the shipped pretrained model (a diffusers folder)
WORLD_CONTROLNET_DIR = Path(__file__).parent / "controlnet_weights"  # its ControlNet (`personae world controlnet`)
WORLD_MOTION_DIR = Path(__file__).parent / "motion_weights"  # its motion adapter (`personae world motion`)
# the shipped model fine-tuned to zero terminal SNR (`personae world zero-snr`): the motion adapter's base
WORLD_ZERO_SNR_DIR = Path(__file__).parent / "zero_snr_weights"
WORLD_NAMES = {"world": WORLD_DIR, "world-zero-snr": WORLD_ZERO_SNR_DIR}  # what a world command's base may name

TEXT_WIDTH = 64  # the text encoder's hidden size, which is the UNet's cross-attention width
WORLD_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=(32, 64, 72), attention_head_dim=8, cross_attention_dim=TEXT_WIDTH, norm_num_groups=8,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
WORLD_VAE = dict(  # three levels: two downsamplings, so 32 px -> 8x8 latents
    sample_size=32, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
    block_out_channels=(16, 32, 32), norm_num_groups=8,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
)
WORLD_TEXT = dict(hidden_size=TEXT_WIDTH, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                  projection_dim=TEXT_WIDTH, max_position_embeddings=77, hidden_act="quick_gelu")


def text_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    """The text encoder's config for this tokenizer (its vocabulary size and special ids)."""
    return CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **WORLD_TEXT)


def build_world_pipeline(seed: int, tokenizer_dir: str | Path) -> StableDiffusionPipeline:
    """Random, seeded components (float32, CPU) with SD-1.5's scheduler and the given tokenizer files."""
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))  # not keyword file paths: see FACTS.md
    with torch.random.fork_rng(devices=[]):  # seeded here; the caller's random state is left as it was
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**WORLD_UNET)
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**WORLD_VAE)
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(text_config(tokenizer))
    scheduler = PNDMScheduler.from_pretrained(str(SD15_DIR / "scheduler"))
    return StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def write_world_model(out_dir: str | Path, source: Path = WORLD_DIR, overwrite: bool = False) -> Path:
    """Copy the shipped pretrained world model (a diffusers folder) to `out_dir`."""
    return _write_shipped(
        source / "model_index.json", out_dir, overwrite,
        f"The pretrained shapes-world model is not in this copy of personae ({source} holds no model_index.json).",
        "Pretrain it with `personae world pretrain OUT` (about half an hour on 2 CPU cores) and use OUT as the "
        "model; to ship it, copy OUT's model files into src/personae/world/weights/.")


def write_world_controlnet(out_dir: str | Path, source: Path = WORLD_CONTROLNET_DIR, overwrite: bool = False) -> Path:
    """Copy the shipped world ControlNet (a diffusers ControlNetModel folder, with its training record) to `out_dir`."""
    return _write_shipped(
        source / "config.json", out_dir, overwrite,
        f"The world ControlNet is not in this copy of personae ({source} holds no config.json).",
        "Train it with `personae world controlnet OUT` (under half an hour on 2 CPU cores) and pass OUT to "
        "--controlnet; to ship it, copy OUT into src/personae/world/controlnet_weights/.")


def write_world_zero_snr(out_dir: str | Path, source: Path = WORLD_ZERO_SNR_DIR, overwrite: bool = False) -> Path:
    """Copy the shipped zero-terminal-SNR world model (a diffusers folder, v-prediction, with its training record)
    to `out_dir`."""
    return _write_shipped(
        source / "model_index.json", out_dir, overwrite,
        f"The zero-terminal-SNR world model is not in this copy of personae ({source} holds no model_index.json).",
        "Fine-tune it with `personae world zero-snr OUT` (about 10 minutes on 2 CPU cores) and use OUT as the model; "
        "to ship it, copy OUT into src/personae/world/zero_snr_weights/.")


def world_model_dir(name: str) -> Path:
    """A world command's --model or base setting: `world` is the shipped model, `world-zero-snr` its zero-terminal-SNR
    fine-tune, anything else a folder."""
    return WORLD_NAMES.get(name, Path(name))


def write_world_motion(out_dir: str | Path, source: Path = WORLD_MOTION_DIR, overwrite: bool = False) -> Path:
    """Copy the shipped world motion adapter (a diffusers MotionAdapter folder, with the LoRA and motion words it
    was trained with, and its training record) to `out_dir`."""
    return _write_shipped(
        source / "config.json", out_dir, overwrite,
        f"The world motion adapter is not in this copy of personae ({source} holds no config.json).",
        "Train it with `personae world motion OUT` (about 20 minutes on 2 CPU cores) and pass OUT to "
        "--motion-adapter; to ship it, copy OUT into src/personae/world/motion_weights/.")


def _write_shipped(marker: Path, out_dir: str | Path, overwrite: bool, missing: str, fix: str) -> Path:
    """Copy a folder shipped in the package (the one holding `marker`) to `out_dir`, readable by everyone."""
    out_dir = Path(out_dir)
    if not marker.is_file():
        raise UserError(missing, fix)
    with staged_output(out_dir, MODEL_FOLDER, replace=overwrite) as work:
        shutil.copytree(marker.parent, work, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
        readable_by_others(work)
    return out_dir
