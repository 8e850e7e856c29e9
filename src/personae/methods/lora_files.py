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


def kohya_to_diffusers(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """Read a kohya/A1111 SD-1 LoRA (ours or sd-scripts') as peft-style unet / text-encoder dicts plus alphas.

    Module names are recovered by matching the underscored names against the real module
    paths of an SD-1 UNet / CLIP text encoder, so names with underscores inside
    (`transformer_blocks`, `self_attn`) come back right.
    """
    from personae.models.tiny import build_tiny_pipeline

    reference = build_tiny_pipeline()
    unet_names = {n.replace(".", "_"): n for n, _ in reference.unet.named_modules() if n}
    te_names = {n.replace(".", "_"): n for n, _ in reference.text_encoder.named_modules() if n}
    unet, te, alphas = {}, {}, {}
    with safe_open(str(path), framework="pt") as fh:
        keys = list(fh.keys())
        for key in keys:
            name, _, part = key.partition(".")
            if part not in ("lora_down.weight", "lora_up.weight"):
                continue
            tensor = fh.get_tensor(key)
            letter = "A" if part == "lora_down.weight" else "B"
            if name.startswith("lora_unet_"):
                module = _lookup(unet_names, name[len("lora_unet_"):], key)
                unet[f"{module}.lora_{letter}.weight"] = tensor
            elif name.startswith(("lora_te_", "lora_te1_")):
                stripped = re.sub(r"^lora_te1?_(text_model_)?", "", name)
                module = _lookup(te_names, stripped, key)
                te[f"{module}.lora_{letter}.weight"] = tensor
            if f"{name}.alpha" in keys:
                alphas[name] = float(fh.get_tensor(f"{name}.alpha"))
    return unet, te, alphas


def _lookup(names: dict[str, str], underscored: str, key: str) -> str:
    # SD-1 module paths do not depend on sizes, but block counts beyond the tiny model's may appear:
    # fall back to splitting digits, which is how every SD-1 path separates its indices.
    if underscored in names:
        return names[underscored]
    guess = re.sub(r"_(\d+)_", r".\1.", underscored)
    guess = re.sub(r"_(\d+)$", r".\1", guess)
    for known in ("transformer_blocks", "self_attn", "final_layer_norm", "layer_norm1", "layer_norm2",
                  "time_emb_proj", "conv_shortcut", "proj_in", "proj_out", "to_out", "out_proj", "q_proj",
                  "k_proj", "v_proj", "fc1", "fc2", "down_blocks", "up_blocks", "mid_block", "to_q", "to_k",
                  "to_v", "ff_net", "attn1", "attn2"):
        guess = guess.replace(known, known.replace("_", "\0"))
    guess = guess.replace("_", ".").replace("\0", "_")
    if not guess:
        raise ValueError(f"cannot map LoRA key {key}")
    return guess
