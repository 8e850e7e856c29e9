"""LyCORIS files (LoHa, LoKr) and peft adapter folders, written from peft's LoHa / LoKr layers.

LyCORIS / kohya layout (what A1111, ComfyUI and LyCORIS load): `lora_unet_<module path with _>.<param>`
and `lora_te_text_model_<path>.<param>` (the names `lora_files` gives LoRA), where the params are peft's
own names, which LyCORIS uses too: `hada_w1_a`, `hada_w1_b`, `hada_w2_a`, `hada_w2_b` (LoHa; a 3x3
convolution's `_b` factors flattened over (in, kh, kw)), `lokr_w1` or `lokr_w1_a`/`_b`, `lokr_w2` or
`lokr_w2_a`/`_b` (LoKr), and `alpha`. The readers (LyCORIS, A1111, ComfyUI, `models.lora_math`) scale by
alpha / rank with rank = `hada_w1_b` rows, `lokr_w2_b` (else `lokr_w1_b`) rows, and by 1 for a LoKr whose
two factors are both full: peft scales those by alpha / r too, so that scale is folded into `lokr_w1`.
The header says `ss_network_module: lycoris.kohya` and `ss_network_args` as LyCORIS writes them (strings).

peft folder: `<folder>/<component>/adapter_config.json` + `adapter_model.safetensors`, what
`PeftModel.from_pretrained(component, folder / component)` loads (diffusers has no loader for LoHa / LoKr).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from personae.models.folders import save_safetensors

_PARAM = re.compile(r"^(?P<module>.+)\.(?P<param>hada_w[12]_[ab]|hada_t[12]|lokr_w[12](?:_[ab])?|lokr_t[12])$")
_PREFIX = {"unet": "lora_unet_", "text_encoder": "lora_te_text_model_"}
# what LyCORIS writes into ss_network_args for each variant (its kohya-style `--network_args` strings)
_ARGS = {"dora": {"algo": "lora", "dora_wd": "True", "wd_on_out": "True"}, "loha": {"algo": "loha"},
         "lokr": {"algo": "lokr", "factor": "-1"}}


def lycoris_network_args(variant: str, te_trained: bool, extra: dict[str, str]) -> dict[str, str]:
    """The header's `ss_network_module` and `ss_network_args` for a variant (lora / locon stay kohya's own)."""
    if variant == "lora":  # lora and locon: kohya sd-scripts' networks.lora, conv_dim / conv_alpha in its args
        return {"ss_network_module": "networks.lora", "ss_network_args": json.dumps({"text_encoder": te_trained,
                                                                                    **extra})}
    return {"ss_network_module": "lycoris.kohya", "ss_network_args": json.dumps({**_ARGS[variant], **extra}),
            "ss_network_train_unet_only": str(not te_trained)}


def _layers(model) -> dict[str, BaseTunerLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, BaseTunerLayer) and "default" in m.r}


def peft_to_lycoris(models: dict[str, torch.nn.Module], states: dict[str, dict[str, torch.Tensor]],
                    dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """peft LoHa / LoKr state dicts ({"unet" | "text_encoder": state relative to it}) -> LyCORIS tensors."""
    out = {}
    for part, state in states.items():
        layers = _layers(models[part])
        modules: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in state.items():
            match = _PARAM.match(key)
            if match is None:
                raise ValueError(f"{part} adapter weight {key} is no LoHa / LoKr parameter")
            modules.setdefault(match["module"], {})[match["param"]] = value.detach().to("cpu", torch.float32)
        for module, params in modules.items():
            layer = layers[module]
            rank, scale = layer.r["default"], float(layer.scaling["default"])
            alpha = scale * rank
            if "lokr_w1" in params and "lokr_w2" in params:  # both full: the readers scale by 1
                params["lokr_w1"] = params["lokr_w1"] * scale
                alpha = float(rank)
            name = _PREFIX[part] + module.removeprefix("text_model.").replace(".", "_")
            for param, value in params.items():
                out[f"{name}.{param}"] = value.to(dtype).contiguous()
            out[f"{name}.alpha"] = torch.tensor(alpha, dtype=dtype)
    return out


def write_peft_folder(folder: Path, models: dict[str, torch.nn.Module], states: dict[str, dict[str, torch.Tensor]],
                      dtype: torch.dtype = torch.float32, metadata: dict[str, str] | None = None) -> Path:
    """`folder/<component>/` as `PeftModel.save_pretrained` writes it, for each adapted component."""
    for part, state in states.items():
        sub = folder / part
        sub.mkdir(parents=True, exist_ok=True)
        models[part].peft_config["default"].save_pretrained(str(sub))
        tensors = {f"base_model.model.{k}": v.detach().to("cpu", dtype).contiguous() for k, v in state.items()}
        save_safetensors(tensors, sub / "adapter_model.safetensors", {"format": "pt", **(metadata or {})})
    return folder
