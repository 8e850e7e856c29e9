"""peft adapters of the kinds that rewrite a weight (OFT, BOFT, IA3), read as the exact change peft's own merge makes.

peft-based scripts (peft's oft_dreambooth / boft_dreambooth examples, IA3 runs) save such an adapter with
`save_pretrained` (adapter_model.safetensors + adapter_config.json; keys `base_model.model.<module>.oft_R.weight`,
`boft_R` / `boft_s`, `ia3_l`). Their parametrisations change between peft releases (OFT's Cayley-Neumann series,
block sharing, IA3 on the input of feed-forward layers), so personae does not re-derive them: it rebuilds the
adapter with peft itself on copies of the layers it targets (a skeleton with the model's own module paths, so
target_modules, feedforward_modules and the patterns match as they did when it was saved), merges it, and takes
W_merged - W as each layer's change (loaded like a full diff, lora_math). Scaled as a whole at weights other than 1.
peft 0.21's OFT on a convolution disagrees with itself (its forward rotates unfolded input patches, its merge the
flattened weight, and the two differ): personae applies the merge, which is what `merge_and_unload` exports.
"""

from __future__ import annotations

import copy

import torch

from personae.errors import UserError
from personae.models.lora_layouts import NAMINGS, LoraFile
from personae.models.lora_math import LowRank, full_rank

MERGED = ("OFT", "BOFT", "IA3")  # peft types read this way (LORA, LOHA, LOKR are read as their factors)


def component_configs(configs: dict) -> dict[str, dict]:
    """{"unet": {...}, "text_encoder": {...}} from the flattened {"unet.r": ..} configs read beside the file."""
    out: dict[str, dict] = {}
    for key, value in configs.items():
        component, _, name = key.partition(".")
        out.setdefault(component, {})[name] = value
    return out


def merged_type(configs: dict) -> str | None:
    """The peft type when the adapter is one peft merges into the weight (MERGED), else None."""
    types = {c.get("peft_type") for c in component_configs(configs).values() if isinstance(c, dict)}
    merged = types & set(MERGED)
    if merged and types - set(MERGED):
        raise UserError(f"This peft adapter folder mixes {' and '.join(sorted(t for t in types if t))} adapters.",
                        "Load each component's adapter folder as a LoRA of its own (--lora unet/ --lora "
                        "text_encoder/).")
    return next(iter(merged)) if merged else None


def _skeleton(model: torch.nn.Module, paths: list[str]) -> torch.nn.Module:
    """A module tree holding float32 copies of `model`'s layers at `paths` (the original under any LoRA already
    loaded on it), and nothing else, under the same names."""
    root = torch.nn.Module()
    for path in paths:
        *parents, leaf = path.split(".")
        node = root
        for part in parents:
            if not hasattr(node, part):
                node.add_module(part, torch.nn.Module())
            node = getattr(node, part)
        layer = model.get_submodule(path)
        node.add_module(leaf, copy.deepcopy(getattr(layer, "base_layer", layer)).float())
    return root


def merged_changes(params: dict[str, dict[str, torch.Tensor]], config: dict, model: torch.nn.Module
                   ) -> tuple[dict[str, LowRank], list[str]]:
    """Each layer's change W_merged - W, as peft merges the adapter `params` ({module path: {parameter as saved:
    tensor}}) built from its adapter_config.json `config` onto copies of `model`'s layers. Returns the changes by
    module path, and the modules the config does not target (their parameters would be dropped)."""
    from peft import PeftConfig, inject_adapter_in_model, set_peft_model_state_dict
    from peft.tuners.tuners_utils import BaseTunerLayer

    settings = {k: v for k, v in config.items() if k not in ("base_model_name_or_path", "revision")}
    state = {f"{module}.{name}": value for module, named in params.items() for name, value in named.items()}
    try:
        peft_config = PeftConfig.from_peft_type(**settings)
        skeleton = inject_adapter_in_model(peft_config, _skeleton(model, sorted(params)), adapter_name="file")
        set_peft_model_state_dict(skeleton, state, adapter_name="file")
    except (TypeError, ValueError, KeyError, RuntimeError, AttributeError) as exc:
        raise UserError(f"peft could not rebuild this {config.get('peft_type')} adapter on the model: "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}.",
                        "Check that the adapter was trained on this model (an SD 1.x UNet or text encoder).") from None
    changes, untargeted = {}, []
    for path in sorted(params):
        layer = skeleton.get_submodule(path)
        if not isinstance(layer, BaseTunerLayer):
            untargeted.append(path)
            continue
        before = layer.get_base_layer().weight.detach().clone()
        layer.merge(adapter_names=["file"])
        changes[path] = full_rank(layer.get_base_layer().weight.detach() - before)
    return changes, untargeted


def read_merged(path, tensors: dict[str, torch.Tensor], configs: dict, table, models: dict) -> LoraFile:
    """A peft OFT / BOFT / IA3 adapter (file or folder) as a LoraFile of full-rank changes on `models` ({"unet":
    ..., "text_encoder": ...}); keys are placed by `table`'s peft-adapter spellings, the rest listed unplaced."""
    kind = merged_type(configs)
    per_component = component_configs(configs)
    lora = LoraFile(path, f"{NAMINGS['peft-adapter']}, {kind}", naming="peft-adapter")
    params: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    for key, value in tensors.items():
        parts = key.split(".")
        for cut in range(len(parts) - 1, 0, -1):  # the longest module name the key starts with
            where = table.spellings.get(".".join(parts[:cut]))
            if where is not None and where[2] == "peft-adapter":
                component, module, _ = where
                params.setdefault(component, {}).setdefault(module, {})[".".join(parts[cut:])] = value
                break
        else:
            lora.unplaced.append(([key], "no module of this model is called that"))
    for component, modules in params.items():
        if component not in per_component:
            lora.unplaced.append(([f"{component}: {len(modules)} modules"], "no adapter_config.json for them"))
            continue
        changes, untargeted = merged_changes(modules, per_component[component], models[component])
        lora.changes |= {(component, module): change for module, change in changes.items()}
        lora.unplaced += [([f"{module}.{name}" for name in modules[module]], "its adapter_config.json does not "
                           "target this module") for module in untargeted]
    lora.layers = sum(len(modules) for modules in params.values())
    return lora
