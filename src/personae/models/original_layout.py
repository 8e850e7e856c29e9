"""Convert SD-1.x weights between the diffusers layout and the original (LDM) layout.

The original layout is what model sites share as one `.safetensors` file
(`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.transformer.*`).
diffusers reads it (`from_single_file`) but has no writer in its wheel, so this module
writes it (`save_single_file`). The mapping is derived from the UNet config, so it holds for any number of
blocks and layers per block; tests reload the result through diffusers' own reader.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from personae.models.folders import save_safetensors
from personae.models.ldm_config import check_config_beside, ldm_config, write_config_beside
from personae.models.prediction import marker_tensors, modelspec_prediction

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

CONFIG_METADATA_KEY = "personae_configs"  # single-file header entry holding the component configs
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."

_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _unet_prefixes(config: dict) -> dict[str, str]:
    """diffusers module prefix -> LDM module prefix for a UNet2DConditionModel config."""
    lpb = config["layers_per_block"]
    n = len(config["block_out_channels"])
    m = {"conv_in.": "input_blocks.0.0.", "time_embedding.linear_1.": "time_embed.0.",
         "time_embedding.linear_2.": "time_embed.2.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
         "mid_block.resnets.0.": "middle_block.0.", "mid_block.attentions.0.": "middle_block.1.",
         "mid_block.resnets.1.": "middle_block.2."}
    for i in range(n):
        for j in range(lpb):  # each level holds lpb (resnet, attention) pairs, then a downsampler
            k = (lpb + 1) * i + j + 1
            m[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{k}.0."
            m[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{k}.1."
        if i < n - 1:
            m[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(lpb + 1) * (i + 1)}.0.op."
        has_attention = "CrossAttn" in config["up_block_types"][i]
        for j in range(lpb + 1):  # the decoder side has one more layer per level
            k = (lpb + 1) * i + j
            m[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{k}.0."
            m[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{k}.1."
        if i < n - 1:
            slot = 2 if has_attention else 1
            m[f"up_blocks.{i}.upsamplers.0.conv."] = f"output_blocks.{(lpb + 1) * i + lpb}.{slot}.conv."
    return m


def _vae_prefixes(config: dict) -> dict[str, str]:
    n = len(config["block_out_channels"])
    m = {"encoder.conv_norm_out.": "encoder.norm_out.", "decoder.conv_norm_out.": "decoder.norm_out.",
         "encoder.mid_block.resnets.0.": "encoder.mid.block_1.", "encoder.mid_block.resnets.1.": "encoder.mid.block_2.",
         "decoder.mid_block.resnets.0.": "decoder.mid.block_1.", "decoder.mid_block.resnets.1.": "decoder.mid.block_2.",
         "encoder.mid_block.attentions.0.": "encoder.mid.attn_1.", "decoder.mid_block.attentions.0.": "decoder.mid.attn_1."}
    for i in range(n):
        for j in range(config["layers_per_block"] + 1):
            m[f"encoder.down_blocks.{i}.resnets.{j}."] = f"encoder.down.{i}.block.{j}."
            m[f"decoder.up_blocks.{i}.resnets.{j}."] = f"decoder.up.{n - 1 - i}.block.{j}."  # LDM counts up from the bottom
        m[f"encoder.down_blocks.{i}.downsamplers.0.conv."] = f"encoder.down.{i}.downsample.conv."
        m[f"decoder.up_blocks.{i}.upsamplers.0.conv."] = f"decoder.up.{n - 1 - i}.upsample.conv."
    return m


def _rename(key: str, prefixes: dict[str, str]) -> tuple[str, str, str]:
    """Split key into (matched diffusers prefix, LDM prefix, rest) by the longest matching prefix."""
    best = max((p for p in prefixes if key.startswith(p)), key=len, default="")
    return best, prefixes.get(best, ""), key[len(best):]


def unet_to_original(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    prefixes = _unet_prefixes(config)
    out = {}
    for key, value in state.items():
        src, dst, rest = _rename(key, prefixes)
        if ".resnets." in src:
            head, _, tail = rest.partition(".")
            rest = f"{_UNET_RESNET.get(head, head)}.{tail}"
        out[UNET_PREFIX + dst + rest] = value
    return out


def unet_module_names_to_original(names: list[str], config: dict) -> dict[str, str]:
    """diffusers UNet module name -> the same module's LDM name (`down_blocks.0.resnets.0.conv1` -> `input_blocks.1.0.in_layers.2`)."""
    renamed = unet_to_original({f"{name}.weight": name for name in names}, config)
    return {name: key[len(UNET_PREFIX):-len(".weight")] for key, name in renamed.items()}


def vae_to_original(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    prefixes = _vae_prefixes(config)
    out = {}
    for key, value in state.items():
        src, dst, rest = _rename(key, prefixes)
        if ".resnets." in src and rest.startswith("conv_shortcut."):
            rest = "nin_shortcut." + rest[len("conv_shortcut."):]
        if ".attentions." in src:
            for new, old in _VAE_ATTN.items():
                if rest.startswith(new + "."):
                    rest = old + rest[len(new):]
                    if value.ndim == 2:  # LDM keeps the attention projections as 1x1 convolutions
                        value = value[:, :, None, None]
                    break
        out[VAE_PREFIX + dst + rest] = value
    return out


def text_encoder_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue
        key = key if key.startswith("text_model.") else "text_model." + key
        out[TEXT_PREFIX + key] = value
    return out


def pipeline_to_original(unet, vae, text_encoder) -> dict[str, torch.Tensor]:
    """One state dict in the original SD-1.x layout, tensors contiguous and unshared."""
    state = {}
    state.update(unet_to_original(unet.state_dict(), dict(unet.config)))
    state.update(vae_to_original(vae.state_dict(), dict(vae.config)))
    state.update(text_encoder_to_original(text_encoder.state_dict()))
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def component_configs(pipe: StableDiffusionPipeline) -> dict:
    """The configs a single file needs to be rebuilt (stored in its header), without `_name_or_path`: where
    the components were loaded from is a path of this machine, not part of the model."""
    configs = {
        "unet": dict(pipe.unet.config),
        "vae": dict(pipe.vae.config),
        "text_encoder": pipe.text_encoder.config.to_dict(),
        "scheduler": dict(pipe.scheduler.config),
    }
    return {part: {k: v for k, v in config.items() if k != "_name_or_path"} for part, config in configs.items()}


def save_single_file(pipe: StableDiffusionPipeline, path: str | Path, extra_metadata: dict | None = None) -> Path:
    """Write the pipeline's weights as one original-layout .safetensors file.

    The component configs go into the header so personae can rebuild non-standard
    sizes (such as the tiny model) offline; other tools read the tensors as usual. A v-prediction or
    zero-terminal-SNR model also gets ComfyUI's marker keys, and a v-prediction one the .yaml A1111 reads
    beside it (models/ldm_config.py).
    """
    path = Path(path)
    check_config_beside(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = pipeline_to_original(pipe.unet, pipe.vae, pipe.text_encoder)
    state.update(marker_tensors(dict(pipe.scheduler.config)))
    # the component configs, and the model spec's prediction type as kohya writes it (save_safetensors puts the
    # header's keys in order: safetensors writes them from a hash map, which would break "same seed, same bytes")
    metadata = {CONFIG_METADATA_KEY: json.dumps(component_configs(pipe), default=list, sort_keys=True),
                **modelspec_prediction(dict(pipe.scheduler.config))}
    metadata.update(extra_metadata or {})
    save_safetensors(state, path, metadata)
    write_config_beside(path, ldm_config(dict(pipe.unet.config), dict(pipe.vae.config), dict(pipe.scheduler.config)))
    return path


def _controlnet_prefixes(controlnet) -> dict[str, str]:
    """diffusers ControlNetModel prefix -> prefix under `control_model.` in the original ControlNet layout."""
    config = dict(controlnet.config)
    n = len(config["block_out_channels"])
    unet_like = _unet_prefixes({**config, "up_block_types": ["UpBlock2D"] * n})  # a ControlNet is the UNet's encoder half
    m = {k: v for k, v in unet_like.items() if not k.startswith(("up_blocks.", "conv_out.", "conv_norm_out."))}
    blocks = len(controlnet.controlnet_cond_embedding.blocks)
    m["controlnet_cond_embedding.conv_in."] = "input_hint_block.0."  # the hint block interleaves convs and SiLUs
    for i in range(blocks):
        m[f"controlnet_cond_embedding.blocks.{i}."] = f"input_hint_block.{2 * (i + 1)}."
    m["controlnet_cond_embedding.conv_out."] = f"input_hint_block.{2 * (blocks + 1)}."
    for i in range(len(controlnet.controlnet_down_blocks)):
        m[f"controlnet_down_blocks.{i}."] = f"zero_convs.{i}.0."
    m["controlnet_mid_block."] = "middle_block_out.0."
    return m


def controlnet_to_original(controlnet) -> dict[str, torch.Tensor]:
    """A ControlNetModel's weights in the original layout (`control_model.*`), as A1111 ControlNet files hold them."""
    prefixes = _controlnet_prefixes(controlnet)
    out = {}
    for key, value in controlnet.state_dict().items():
        src, dst, rest = _rename(key, prefixes)
        if ".resnets." in src:
            head, _, tail = rest.partition(".")
            rest = f"{_UNET_RESNET.get(head, head)}.{tail}"
        out["control_model." + dst + rest] = value.detach().to("cpu").contiguous().clone()
    return out


def save_controlnet_single_file(controlnet, path: str | Path) -> Path:
    """Write a ControlNet as one original-layout .safetensors file (its config in the header, as for models)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {CONFIG_METADATA_KEY: json.dumps({"controlnet": dict(controlnet.config)}, default=list, sort_keys=True)}
    return save_safetensors(controlnet_to_original(controlnet), path, metadata)
