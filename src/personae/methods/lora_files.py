"""LoRA files in the two layouts other tools read, written from (and read into) peft adapters.

kohya / A1111 layout (the default, what people share and what AUTOMATIC1111, ComfyUI and
kohya load): `lora_unet_<module path with _>.lora_down.weight`, `.lora_up.weight` and
`.alpha` (scale = alpha / rank); the SD-1 text encoder as `lora_te_text_model_<path>`.
Training metadata goes into the header under kohya's `ss_*` names.

diffusers / peft layout: `unet.<path>.lora_A.weight` ..., with the adapter config in the
header so `load_lora_weights` restores alpha (without it the loader assumes alpha = rank).

diffusers' own `convert_state_dict_to_kohya` is not used: it writes alpha = rank and names
the text encoder `lora_te1_`, so its files load with a different output.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

_PEFT_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>A|B)(?:\.[^.]+)?\.weight$")
_TE_PREFIX = "lora_te_text_model_"


def _module_weights(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = _PEFT_KEY.match(key)
        if match:
            modules.setdefault(match.group("module"), {})[match.group("part")] = value
    return modules


def peft_to_kohya(unet_state: dict[str, torch.Tensor], te_state: dict[str, torch.Tensor] | None,
                  unet_alpha: float, te_alpha: float | None = None) -> dict[str, torch.Tensor]:
    """peft adapter state dicts (keys relative to the UNet / text encoder) -> kohya tensors."""
    out = {}
    parts = [("lora_unet_", unet_state, unet_alpha)]
    if te_state:
        parts.append((_TE_PREFIX, te_state, te_alpha if te_alpha is not None else unet_alpha))
    for prefix, state, alpha in parts:
        for module, w in _module_weights(state).items():
            module = module.removeprefix("text_model.")  # transformers < 5 nests the text model
            name = prefix + module.replace(".", "_")
            out[f"{name}.lora_down.weight"] = w["A"].detach().to("cpu", torch.float32).contiguous()
            out[f"{name}.lora_up.weight"] = w["B"].detach().to("cpu", torch.float32).contiguous()
            out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out


def write_kohya(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    tmp = path.with_name(path.name + ".partial")
    save_file(tensors, str(tmp), metadata={k: str(v) for k, v in metadata.items()})
    tmp.replace(path)
    return path


def kohya_metadata(*, rank: int, alpha: float, steps: int, base_model: str, trigger: str, name: str,
                   te_trained: bool, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The header fields kohya sd-scripts writes (those A1111 and civitai read)."""
    meta = {
        "ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": f"{alpha:g}",
        "ss_base_model_version": "sd_v1", "ss_sd_model_name": base_model, "ss_output_name": name,
        "ss_steps": str(steps), "ss_training_comment": f"trained with personae; trigger: {trigger}" if trigger else "",
        "ss_network_args": json.dumps({"text_encoder": te_trained}),
        "ss_tag_frequency": json.dumps({"personae": {trigger: 1}} if trigger else {}),
        "modelspec.architecture": "stable-diffusion-v1/lora", "modelspec.title": name,
        "personae_trigger": trigger,
    }
    meta.update(extra or {})
    return meta


# Path segments of SD-1 UNet and CLIP text-encoder modules that contain underscores or are
# otherwise needed to split kohya's underscored names back into module paths.
_SEGMENTS = {"down_blocks", "up_blocks", "mid_block", "attentions", "resnets", "transformer_blocks", "attn1", "attn2",
             "to_q", "to_k", "to_v", "to_out", "ff", "net", "proj", "proj_in", "proj_out", "norm", "norm1", "norm2",
             "norm3", "conv1", "conv2", "conv_shortcut", "time_emb_proj", "downsamplers", "upsamplers", "conv",
             "conv_in", "conv_out", "time_embedding", "linear_1", "linear_2", "encoder", "layers", "self_attn",
             "q_proj", "k_proj", "v_proj", "out_proj", "mlp", "fc1", "fc2"}


def split_module(underscored: str) -> str:
    """"down_blocks_0_attentions_1_transformer_blocks_0_attn1_to_q" -> "down_blocks.0.attentions.1....attn1.to_q"."""
    words = underscored.split("_")
    parts, i = [], 0
    while i < len(words):
        for j in range(len(words), i, -1):  # longest known segment first
            candidate = "_".join(words[i:j])
            if candidate in _SEGMENTS or (j == i + 1 and candidate.isdigit()):
                parts.append(candidate)
                i = j
                break
        else:
            raise ValueError(f'cannot map the LoRA module name "{underscored}" to an SD-1 module (at "{words[i]}")')
    return ".".join(parts)


def read_kohya(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, float]]:
    """A kohya/A1111 SD-1 LoRA (ours or sd-scripts') as peft-style (unet, text_encoder) dicts and per-module alpha."""
    unet, te, alphas = {}, {}, {}
    with safe_open(str(path), framework="pt") as fh:
        keys = set(fh.keys())
        for key in sorted(keys):
            name, _, part = key.partition(".")
            if part not in ("lora_down.weight", "lora_up.weight"):
                continue
            letter = "A" if part == "lora_down.weight" else "B"
            tensor = fh.get_tensor(key).to(torch.float32)
            if name.startswith("lora_unet_"):
                module, target = split_module(name[len("lora_unet_"):]), unet
            elif name.startswith(("lora_te_", "lora_te1_")):
                module, target = split_module(re.sub(r"^lora_te1?_(text_model_)?", "", name)), te
            else:
                raise ValueError(f"{key} is not an SD-1 LoRA key (expected lora_unet_* or lora_te_*)")
            target[f"{module}.lora_{letter}.weight"] = tensor
            rank = tensor.shape[0] if letter == "A" else tensor.shape[1]
            alphas[module if target is unet else "te:" + module] = (
                float(fh.get_tensor(f"{name}.alpha")) if f"{name}.alpha" in keys else float(rank))
    if not unet and not te:
        raise ValueError("it holds no lora_unet_* or lora_te_* weights")
    return unet, te, alphas


def adapter_config(state: dict[str, torch.Tensor], alphas: dict[str, float]) -> dict:
    """A peft LoraConfig dict for these weights: the common rank/alpha plus per-module patterns."""
    from collections import Counter

    from peft import LoraConfig

    ranks = {k[: -len(".lora_A.weight")]: v.shape[0] for k, v in state.items() if k.endswith(".lora_A.weight")}
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas[m] for m in ranks).most_common(1)[0][0]
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=sorted(ranks),
                        rank_pattern={m: v for m, v in ranks.items() if v != r},
                        alpha_pattern={m: alphas[m] for m in ranks if alphas[m] != alpha})
    return config.to_dict()


def kohya_to_diffusers_file(src: Path, dst_folder: Path, weight_name: str = "pytorch_lora_weights.safetensors") -> Path:
    """Convert a kohya/A1111 LoRA to the diffusers/peft layout (with its adapter config in the header)."""
    from diffusers import StableDiffusionPipeline

    unet, te, alphas = read_kohya(src)
    kwargs = {}
    if not unet:
        raise ValueError("it holds only text-encoder weights; personae converts LoRAs with UNet weights")
    if te:
        te_alphas = {k[3:]: v for k, v in alphas.items() if k.startswith("te:")}
        kwargs = {"text_encoder_lora_layers": te, "text_encoder_lora_adapter_metadata": adapter_config(te, te_alphas)}
    if dst_folder.exists() and not dst_folder.is_dir():  # diffusers would log an error and write nothing
        raise ValueError(f"the output folder {dst_folder} is a file")
    StableDiffusionPipeline.save_lora_weights(str(dst_folder), unet_lora_layers=unet, safe_serialization=True,
                                              weight_name=weight_name,
                                              unet_lora_adapter_metadata=adapter_config(unet, alphas), **kwargs)
    return dst_folder / weight_name


def diffusers_to_kohya_file(src: Path, dst: Path) -> Path:
    """Convert a diffusers/peft LoRA file to the kohya/A1111 layout, keeping each module's alpha."""
    with safe_open(str(src), framework="pt") as fh:
        meta = fh.metadata() or {}
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    if any(k.startswith("lora_unet_") for k in tensors):
        raise ValueError(f"{src} is already in the kohya layout")
    configs = json.loads(meta.get("lora_adapter_metadata", "{}")) if meta.get("lora_adapter_metadata") else {}
    out = {}
    for part, prefix in (("unet", "lora_unet_"), ("text_encoder", _TE_PREFIX)):
        state = {k[len(part) + 1:]: v for k, v in tensors.items() if k.startswith(part + ".")}
        # diffusers stores each adapter config flattened: {"unet.lora_alpha": 8, "unet.alpha_pattern": {...}, ...}
        config = {k[len(part) + 1:]: v for k, v in configs.items() if k.startswith(part + ".")}
        for module, w in _module_weights(state).items():
            rank = w["A"].shape[0]
            alpha = _pattern(config.get("alpha_pattern", {}), module, config.get("lora_alpha", rank))
            name = prefix + module.removeprefix("text_model.").replace(".", "_")
            out[f"{name}.lora_down.weight"] = w["A"].to(torch.float32).contiguous()
            out[f"{name}.lora_up.weight"] = w["B"].to(torch.float32).contiguous()
            out[f"{name}.alpha"] = torch.tensor(float(alpha))
    if not out:
        raise ValueError(f"{src} holds no unet.* or text_encoder.* LoRA weights")
    return write_kohya(dst, out, {"ss_network_module": "networks.lora", "ss_base_model_version": "sd_v1",
                                  "personae_converted_from": src.name})


def _pattern(patterns: dict[str, float], module: str, default: float) -> float:
    for key, value in patterns.items():
        if module == key or module.endswith("." + key):
            return value
    return default
