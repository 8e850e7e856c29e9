"""The original (LDM) model config beside a v-prediction checkpoint personae writes, as A1111 wants it.

A1111 builds an SD-1.x checkpoint from `<name>.yaml` when one lies beside `<name>.safetensors`, else from its
own v1-inference.yaml, which predicts the noise: a v-prediction model drawn without its .yaml gives noise.
This module writes that file from the diffusers configs, in the layout of Stability's v1-inference.yaml with
`parameterization: "v"`, for the UNets and VAEs LDM's classes can build (GroupNorm of 32 groups, whole channel
multiples, SD-1.x's block pattern); for others A1111 cannot load the weights at all, and no .yaml is written.
It never writes over a .yaml personae did not write (`check_config_beside`).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from personae.errors import UserError
from personae.models.prediction import WRITTEN_BY, config_beside

_CROSS, _PLAIN_DOWN, _PLAIN_UP = "CrossAttnDownBlock2D", "DownBlock2D", "UpBlock2D"
# UNet settings LDM's UNetModel has no parameter for: they must be SD-1.x's
_UNET_FIXED = {"norm_num_groups": 32, "norm_eps": 1e-5, "act_fn": "silu", "mid_block_type": "UNetMidBlock2DCrossAttn",
               "use_linear_projection": False, "only_cross_attention": False, "upcast_attention": False,
               "class_embed_type": None, "addition_embed_type": None, "encoder_hid_dim": None,
               "time_embedding_type": "positional", "time_cond_proj_dim": None, "flip_sin_to_cos": True,
               "freq_shift": 0, "resnet_time_scale_shift": "default", "conv_in_kernel": 3, "conv_out_kernel": 3,
               "transformer_layers_per_block": 1, "num_attention_heads": None, "dual_cross_attention": False,
               "center_input_sample": False, "downsample_padding": 1, "mid_block_scale_factor": 1,
               "cross_attention_norm": None, "attention_type": "default"}
_VAE_FIXED = {"norm_num_groups": 32, "act_fn": "silu", "in_channels": 3, "out_channels": 3,
              "mid_block_add_attention": True, "use_quant_conv": True, "use_post_quant_conv": True,
              "latents_mean": None, "latents_std": None, "shift_factor": None}


def _multiples(channels: list[int]) -> list[int] | None:
    base = channels[0]
    return [c // base for c in channels] if all(c % base == 0 for c in channels) else None


def _unet_params(unet: dict) -> dict | None:
    if any(unet.get(key, value) != value for key, value in _UNET_FIXED.items()):
        return None
    down, up = list(unet["down_block_types"]), list(unet["up_block_types"])
    mult = _multiples(list(unet["block_out_channels"]))
    heads = unet.get("attention_head_dim")
    mirrored = [_CROSS.replace("Down", "Up") if kind == _CROSS else _PLAIN_UP for kind in reversed(down)]
    if mult is None or not isinstance(heads, int) or up != mirrored or not set(down) <= {_CROSS, _PLAIN_DOWN}:
        return None
    return {"image_size": unet["sample_size"], "in_channels": unet["in_channels"],
            "out_channels": unet["out_channels"], "model_channels": unet["block_out_channels"][0],
            "attention_resolutions": [2 ** i for i in reversed(range(len(down))) if down[i] == _CROSS],
            "num_res_blocks": unet["layers_per_block"], "channel_mult": mult, "num_heads": heads,
            "use_spatial_transformer": True, "transformer_depth": 1, "context_dim": unet["cross_attention_dim"],
            "use_checkpoint": True, "legacy": False}


def _vae_params(vae: dict) -> dict | None:
    mult = _multiples(list(vae["block_out_channels"]))
    if mult is None or any(vae.get(key, value) != value for key, value in _VAE_FIXED.items()):
        return None
    latent = vae["latent_channels"]
    return {"embed_dim": latent, "monitor": "val/rec_loss",
            "ddconfig": {"double_z": True, "z_channels": latent, "resolution": vae["sample_size"], "in_channels": 3,
                         "out_ch": 3, "ch": vae["block_out_channels"][0], "ch_mult": mult,
                         "num_res_blocks": vae["layers_per_block"], "attn_resolutions": [], "dropout": 0.0},
            "lossconfig": {"target": "torch.nn.Identity"}}


def ldm_config(unet: dict, vae: dict, scheduler: dict) -> dict | None:
    """The LDM model config of a v-prediction SD-1.x model from its diffusers configs; None for an epsilon model
    (A1111's own default config fits it) or one LDM's classes cannot build (not SD-1.x's architecture)."""
    if scheduler.get("prediction_type") != "v_prediction" or unet.get("in_channels") not in (4, 9):
        return None
    if scheduler.get("beta_schedule", "scaled_linear") != "scaled_linear" or scheduler.get("trained_betas"):
        return None
    unet_params, vae_params = _unet_params(unet), _vae_params(vae)
    if unet_params is None or vae_params is None:
        return None
    inpainting = unet["in_channels"] == 9
    params = {"parameterization": "v", "linear_start": scheduler.get("beta_start", 0.00085),
              "linear_end": scheduler.get("beta_end", 0.012), "num_timesteps_cond": 1, "log_every_t": 200,
              "timesteps": scheduler.get("num_train_timesteps", 1000), "first_stage_key": "jpg",
              "cond_stage_key": "txt", "image_size": unet["sample_size"], "channels": vae["latent_channels"],
              "cond_stage_trainable": False, "conditioning_key": "hybrid" if inpainting else "crossattn",
              "monitor": "val/loss_simple_ema", "scale_factor": vae.get("scaling_factor", 0.18215), "use_ema": False,
              **({"finetune_keys": None} if inpainting else {}),
              "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": unet_params},
              "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL", "params": vae_params},
              "cond_stage_config": {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder"}}
    target = "LatentInpaintDiffusion" if inpainting else "LatentDiffusion"
    return {"model": {"base_learning_rate": 1.0e-04, "target": f"ldm.models.diffusion.ddpm.{target}", "params": params}}


def _ours(config_path: Path) -> bool:
    if config_path.is_symlink() or not config_path.is_file():
        return False
    try:
        with open(config_path, "rb") as fh:
            return fh.read(len(WRITTEN_BY)) == WRITTEN_BY.encode()
    except OSError:
        return False


def check_config_beside(path: Path) -> None:
    """Refuse to write the checkpoint `path` where A1111 would read a .yaml personae did not write as its config."""
    config_path = config_beside(Path(path))
    if (config_path.exists() or config_path.is_symlink()) and not _ours(config_path):
        raise UserError(f"{config_path} is there and personae did not write it: A1111 would read it as the model "
                        f"config of {Path(path).name}, which this command writes.",
                        f"Move {config_path.name} elsewhere, or write the model under another name.")


def write_config_beside(path: Path, config: dict | None) -> Path | None:
    """Write `config` as the .yaml beside the checkpoint `path`; with None, remove the one personae wrote there
    for an earlier model (it would describe the new one wrongly)."""
    from personae.staging import atomic_file

    check_config_beside(path)
    config_path = config_beside(Path(path))
    if config is None:
        config_path.unlink(missing_ok=True)
        return None
    text = (f"{WRITTEN_BY} for {Path(path).name}: A1111 reads this file beside the checkpoint as its model config\n"
            "# (parameterization: v for a v-prediction model); keep the two names alike when you move them.\n"
            + yaml.safe_dump(config, sort_keys=False))
    with atomic_file(config_path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return config_path
