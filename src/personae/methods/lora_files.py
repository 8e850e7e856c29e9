"""LoRA files in the two layouts other tools read, written from (and read into) peft adapters.

kohya / A1111 layout (the default, what people share and what AUTOMATIC1111, ComfyUI and
kohya load): `lora_unet_<module path with _>.lora_down.weight`, `.lora_up.weight` and
`.alpha` (scale = alpha / rank); the SD-1 text encoder as `lora_te_text_model_<path>`.
Training metadata goes into the header under kohya's `ss_*` names.

diffusers / peft layout: `unet.<path>.lora_A.weight` ..., with the adapter config in the
header so `load_lora_weights` restores alpha (without it the loader assumes alpha = rank).

diffusers' own `convert_state_dict_to_kohya` is not used: it writes alpha = rank and names
the text encoder `lora_te1_`, so its files load with a different output.

Reading goes through `models.lora_layouts`, the one reader of every layout found in the wild, so
`personae convert` accepts what `generate --lora` accepts (LyCORIS as its exact low-rank form).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from personae.models.lora_layouts import TEXT, UNET, LoraFile, peft_layers, place, sd15_table, unplaced_message
from personae.models.tensor_files import flat_tensors, read_tensors

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


def read_lora_file(path: Path, allow_pickle: bool = False) -> LoraFile:
    """A LoRA-family file in any layout `lora_layouts` reads, every key placed on an SD-1.x module by name.

    No model is at hand here, so sizes are not checked (a LoRA for the tiny model converts too).
    """
    data, header = read_tensors(path, allow_pickle, "LoRA")
    tensors = flat_tensors(data)
    if not tensors:
        raise ValueError("it holds no tensors")
    lora = place(path, tensors, header, sd15_table(), check_sizes=False)
    if lora.unplaced:
        raise ValueError(unplaced_message(lora, len(tensors)))
    if any(change.bias is not None for change in lora.changes.values()):
        raise ValueError("it changes layer biases (a full-diff diff_b), which a LoRA file cannot hold")
    return lora


def kohya_to_diffusers_file(src: Path, dst_folder: Path, allow_pickle: bool = False) -> Path:
    """Convert a LoRA in any layout personae reads (kohya in either spelling, the old processor layout,
    LyCORIS as its exact low-rank form) to the diffusers/peft layout, its adapter config in the header."""
    from diffusers import StableDiffusionPipeline

    lora = read_lora_file(src, allow_pickle)
    unet, unet_config = peft_layers(lora.changes, UNET)
    te, te_config = peft_layers(lora.changes, TEXT)
    kwargs = {}
    if not unet:
        raise ValueError("it holds only text-encoder weights; personae converts LoRAs with UNet weights")
    if te:
        kwargs = {"text_encoder_lora_layers": te, "text_encoder_lora_adapter_metadata": te_config}
    StableDiffusionPipeline.save_lora_weights(str(dst_folder), unet_lora_layers=unet, safe_serialization=True,
                                              unet_lora_adapter_metadata=unet_config, **kwargs)
    return dst_folder / "pytorch_lora_weights.safetensors"


def diffusers_to_kohya_file(src: Path, dst: Path, allow_pickle: bool = False) -> Path:
    """Convert a LoRA in any layout but kohya's to the kohya/A1111 layout, keeping each module's alpha."""
    lora = read_lora_file(src, allow_pickle)
    if lora.naming in ("kohya", "kohya-ldm"):
        raise ValueError(f"{src} is already in the kohya layout")
    out = {}
    for (component, module), change in sorted(lora.changes.items()):
        prefix = "lora_unet_" if component == UNET else _TE_PREFIX
        name = prefix + module.removeprefix("text_model.").replace(".", "_")
        out[f"{name}.lora_down.weight"] = change.down.contiguous()
        out[f"{name}.lora_up.weight"] = change.up.contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(change.alpha))
    return write_kohya(dst, out, {"ss_network_module": "networks.lora", "ss_base_model_version": "sd_v1",
                                  "personae_converted_from": src.name})
