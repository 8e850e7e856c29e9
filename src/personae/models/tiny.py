"""The tiny SD-1.5-architecture model used by tests, the demo and benchmarks.

Real diffusers / transformers classes at small sizes (the way diffusers tests itself),
random weights from a seed, the real SD-1.5 CLIP tokenizer files and scheduler config.
It keeps SD-1.5's structure (4 UNet levels with cross-attention, a VAE that downsamples
8x, a CLIP text encoder) so every code path, single-file conversion included, is the
one real models take. Native size: 64x64 pixels (8x8 latents).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from personae.models.folders import save_pipeline_folder
from personae.models.model_files import SD15_DIR
from personae.models.original_layout import save_single_file
from personae.outputs import MODEL_FOLDER, check_file_output, staged_output
from personae.staging import explain_disk_full

TINY_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=(32, 32, 64, 64), attention_head_dim=8, cross_attention_dim=32, norm_num_groups=8,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
TINY_VAE = dict(
    sample_size=64, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
    block_out_channels=(8, 16, 32, 32), norm_num_groups=8,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
TINY_TEXT = dict(
    hidden_size=32, intermediate_size=37, num_hidden_layers=4, num_attention_heads=4, projection_dim=32,
    vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu",
    bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
)


def sd15_tokenizer() -> CLIPTokenizer:
    """The SD-1.5 CLIP tokenizer from the files shipped in the package (no network)."""
    return CLIPTokenizer.from_pretrained(str(SD15_DIR / "tokenizer"))


def sd15_scheduler() -> PNDMScheduler:
    return PNDMScheduler.from_pretrained(str(SD15_DIR / "scheduler"))


@torch.no_grad()
def calibrate_vae(vae: AutoencoderKL) -> None:
    """Make a random VAE behave like a trained one where training depends on it.

    A freshly initialised VAE's posterior has a standard deviation near 1 while its means
    spread about 0.2, so sampled latents would be mostly noise and no subject could be
    learned. Trained VAEs have sharp posteriors and a scaling factor that brings latents
    to unit variance (SD-1.5's 0.18215 was measured that way). So: the log-variance half
    of quant_conv is set to a constant -20, and the scaling factor is measured on fixed
    random images.
    """
    half = vae.config.latent_channels
    vae.quant_conv.weight[half:] = 0.0
    vae.quant_conv.bias[half:] = -20.0
    probe = torch.rand(4, 3, vae.config.sample_size, vae.config.sample_size, generator=torch.Generator().manual_seed(0))
    std = vae.encode(probe * 2 - 1).latent_dist.mean.std().item()
    vae.register_to_config(scaling_factor=round(1.0 / std, 5))


def build_tiny_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """A tiny, seeded StableDiffusionPipeline (random weights, float32, CPU)."""
    with torch.random.fork_rng(devices=[]):  # seeded here; the caller's random state is left as it was
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**TINY_UNET)
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**TINY_VAE)
        calibrate_vae(vae)
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_TEXT))
    return StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=sd15_tokenizer(), scheduler=sd15_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def tiny_base_unet(base: str | Path | None):
    """The UNet a tiny add-on is made for: the tiny model in folder `base` (`--base`), or the seed-0 one."""
    if base is None:
        return build_tiny_pipeline(0).unet
    if not (Path(base) / "unet" / "config.json").is_file():
        from personae.errors import UserError

        raise UserError(f"--base {base} is not a diffusers model folder (no unet/config.json in it).",
                        "Pass the folder written by `personae model tiny`.")
    return UNet2DConditionModel.from_pretrained(str(base), subfolder="unet", local_files_only=True)


def write_tiny_model(out_dir: str | Path, seed: int = 0, single_file: str | Path | None = None,
                     overwrite: bool = False) -> Path:
    """Write the tiny model as a diffusers folder (and optionally as one original-layout file)."""
    out_dir = Path(out_dir)
    if single_file is not None:
        check_file_output(single_file, overwrite)
    with staged_output(out_dir, MODEL_FOLDER, replace=overwrite) as work:
        pipe = build_tiny_pipeline(seed)
        save_pipeline_folder(pipe, work)
    if single_file is not None:
        with explain_disk_full(single_file):
            save_single_file(pipe, single_file)
    return out_dir
