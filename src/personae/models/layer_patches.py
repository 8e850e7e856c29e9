"""Changes peft has no LoRA layer for, kept beside their layers: to normalisation layers (GroupNorm, LayerNorm) and
embeddings, and the forms made from a Linear / Conv2d's own weight (OFT, BOFT, GLoRA, IA3: lora_weight_forms).

Files in the wild hold the first kind beside their LoRA: ComfyUI's Extract and Save Lora (its default bias_diff)
writes a `diff` for every 1-D weight and a `diff_b` for every bias, and, extracting a text encoder, a LoRA pair for
its token and position embeddings; LyCORIS' train_norm writes `w_norm` / `b_norm`. A1111, ComfyUI and LyCORIS add
each, times the file's weight, to the layer's weight or bias: personae runs such a layer on W + weight * dW. The
second kind is added to the layer's output instead, (W' - W) x computed on the fly, so no weight is copied.

A change lives on its layer as non-persistent buffers (it moves with the model's device and dtype and never enters a
state dict). Its weight is the adapter's own, read from one of the file's peft LoRA layers, so `set_adapters`,
`disable_lora`, `delete_adapters` and `unload_lora_weights` govern it exactly as they govern the LoRA; once that
layer has left the model (the adapter deleted or unloaded), the change drops itself and the layer runs its own
forward again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from personae.models.lora_weight_forms import dense_change, output_change

PATCHED = ("GroupNorm", "LayerNorm", "Embedding")  # the layer classes taken
_NORM = {"diff", "diff_b", "w_norm", "b_norm"}
_EMBEDDING = {"down", "up", "alpha", "diff"}


@dataclass
class Patch:
    """One layer's change: weight (dense, or up @ down * scale for a LoRA pair on an embedding) and bias; or, on a
    Linear / Conv2d, a form made from its own weight (`form`: lora_weight_forms.prepare's tensors)."""

    weight: torch.Tensor | None = None
    up: torch.Tensor | None = None
    down: torch.Tensor | None = None
    scale: float = 1.0
    bias: torch.Tensor | None = None
    form: dict[str, torch.Tensor] | None = None

    @property
    def label(self) -> str:
        return "LoRA" if self.up is not None else "full diff"


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float32)


def patch_of(params: dict[str, torch.Tensor], layer: str, weight_shape: tuple[int, ...] | None) -> Patch:
    """The change a module's parameters make to a normalisation layer or embedding (`layer` its class name) whose
    weight has `weight_shape` (None: not checked)."""
    names = set(params)
    if layer == "Embedding":
        if not names <= _EMBEDDING or not ({"down", "up"} <= names or names == {"diff"}):
            raise ValueError(f"parameters {sorted(params)} are no LoRA pair or full diff for an embedding")
        if "diff" in params:
            patch = Patch(weight=_f32(params["diff"]))
        else:
            up, down = _f32(params["up"]).flatten(1), _f32(params["down"]).flatten(1)
            rank = down.shape[0]
            patch = Patch(up=up, down=down, scale=float(params["alpha"]) / rank if "alpha" in params else 1.0)
        size = tuple(patch.weight.shape) if patch.weight is not None else (patch.up.shape[0], patch.down.shape[1])
        # a token table may have grown by textual-inversion tokens: the change covers the rows it was made for
        if weight_shape is not None and (size[1] != weight_shape[1] or size[0] > weight_shape[0]):
            raise ValueError(f"a {size[0]}x{size[1]} change does not fit this {weight_shape[0]}x{weight_shape[1]} "
                             "embedding")
        return patch
    if not names <= _NORM or ({"diff", "w_norm"} <= names) or ({"diff_b", "b_norm"} <= names):
        raise ValueError(f"parameters {sorted(params)} are no change a {layer} layer takes (diff / diff_b, "
                         "w_norm / b_norm)")
    weight, bias = params.get("diff", params.get("w_norm")), params.get("diff_b", params.get("b_norm"))
    patch = Patch(weight=_f32(weight) if weight is not None else None, bias=_f32(bias) if bias is not None else None)
    for what, t in (("weight", patch.weight), ("bias", patch.bias)):
        if t is not None and weight_shape is not None and tuple(t.shape) != tuple(weight_shape):
            raise ValueError(f"a {what} change of shape {tuple(t.shape)} does not fit this {layer} "
                             f"({tuple(weight_shape)})")
    return patch


def _adapter_weight(reference: tuple, adapter: str) -> float | None:
    """The weight set_adapters gave `adapter`, read from one of its peft LoRA layers (0 while it is off), or None
    once that layer is no longer in its model under its name or holds the adapter no more."""
    root, path, layer, _ = reference
    try:
        if root.get_submodule(path) is not layer or adapter not in layer.lora_A:
            return None
    except AttributeError:
        return None
    if layer.disable_adapters or adapter not in layer.active_adapters:
        return 0.0
    return layer.scaling[adapter] * layer.r[adapter] / layer.lora_alpha[adapter]


def _drop(module: torch.nn.Module, adapter: str) -> None:
    for attr in module._personae_patches[adapter][3]:
        delattr(module, attr)
    del module._personae_patches[adapter]
    if module._personae_patches:
        return
    ours = module._personae_forward  # the layer's own forward again, under accelerate's offload hook if it has one
    if vars(module).get("forward") is ours:
        del module.forward
    elif getattr(module, "_old_forward", None) is ours:
        module._old_forward = type(module).forward.__get__(module)
    del module._personae_patches, module._personae_forward


def _added(weight: torch.Tensor, change: torch.Tensor) -> torch.Tensor:
    """weight + change; a token table grown by textual-inversion tokens since keeps its new rows as they are."""
    if change.shape[0] == weight.shape[0]:
        return weight + change
    return torch.cat([weight[:change.shape[0]] + change, weight[change.shape[0]:]])


def _form(module: torch.nn.Module, adapter: str) -> dict[str, torch.Tensor]:
    prefix = f"_personae_{adapter}_t_"
    return {name[len(prefix):]: getattr(module, name) for name in module._personae_patches[adapter][3]
            if name.startswith(prefix)}


def _patched_forward(module):
    if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
        def forward(x):  # the output, then each adapter's change to it
            y = type(module).forward(module, x)
            for adapter, reference in list(module._personae_patches.items()):
                w = _adapter_weight(reference, adapter)
                if w is None:
                    _drop(module, adapter)
                elif w:
                    y = y + w * output_change(module, x, y, _form(module, adapter))
            return y

        return forward

    def forward(x):
        weight, bias = module.weight, getattr(module, "bias", None)  # an Embedding has none
        for adapter, reference in list(module._personae_patches.items()):
            w = _adapter_weight(reference, adapter)
            if w is None:
                _drop(module, adapter)
                continue
            if not w:
                continue
            name = "_personae_" + adapter
            if hasattr(module, name + "_w"):
                weight = _added(weight, w * getattr(module, name + "_w"))
            if hasattr(module, name + "_up"):
                up, down = getattr(module, name + "_up"), getattr(module, name + "_down")
                weight = _added(weight, (w * getattr(module, name + "_scale")) * (up @ down))
            if hasattr(module, name + "_b"):
                change = w * getattr(module, name + "_b")
                bias = change if bias is None else bias + change
        if isinstance(module, torch.nn.GroupNorm):
            return F.group_norm(x, module.num_groups, weight, bias, module.eps)
        if isinstance(module, torch.nn.LayerNorm):
            return F.layer_norm(x, module.normalized_shape, weight, bias, module.eps)
        return F.embedding(x, weight, module.padding_idx, module.max_norm, module.norm_type,
                           module.scale_grad_by_freq, module.sparse)

    return forward


def install(module: torch.nn.Module, adapter: str, patch: Patch, root: torch.nn.Module, path: str) -> None:
    """Put `patch` on `module` under `adapter`, its weight read from the peft LoRA layer of the adapter at `path` in
    the model `root`."""
    like = module.weight
    name = "_personae_" + adapter
    buffers = {name + "_w": patch.weight, name + "_up": patch.up, name + "_down": patch.down, name + "_b": patch.bias}
    buffers |= {f"{name}_t_{key}": t for key, t in (patch.form or {}).items()}
    buffers = {attr: t for attr, t in buffers.items() if t is not None}
    for attr, t in buffers.items():
        module.register_buffer(attr, t.to(like), persistent=False)
    attrs = list(buffers)
    if patch.up is not None:
        setattr(module, name + "_scale", patch.scale)
        attrs.append(name + "_scale")
    if not hasattr(module, "_personae_patches"):
        module._personae_patches = {}
        module._personae_forward = _patched_forward(module)
        if hasattr(module, "_hf_hook") and hasattr(module, "_old_forward"):  # accelerate's offload hook calls this
            module._old_forward = module._personae_forward
        else:
            module.forward = module._personae_forward
    module._personae_patches[adapter] = (root, path, root.get_submodule(path), attrs)  # a tuple: no child module



def _patch_on(module: torch.nn.Module, adapter: str) -> Patch:
    """The Patch `install` put on `module` under `adapter`, rebuilt from its buffers."""
    name = "_personae_" + adapter
    attrs = module._personae_patches[adapter][3]

    def get(suffix):
        return getattr(module, name + suffix) if name + suffix in attrs else None

    form = {attr[len(name) + 3:]: getattr(module, attr) for attr in attrs if attr.startswith(name + "_t_")}
    return Patch(weight=get("_w"), up=get("_up"), down=get("_down"), bias=get("_b"),
                 scale=get("_scale") if get("_scale") is not None else 1.0, form=form or None)


def copy_patches(source: torch.nn.Module, target: torch.nn.Module) -> int:
    """Put the changes on `source`'s layers on the layers of the same names in `target`, a model built from it
    (AnimateDiff's motion UNet copies the UNet's weights and peft adapters, not these). A change whose weight was
    read from a peft layer in `source` reads it from that layer's namesake in `target`. Returns the layers done."""
    done = 0
    for name, module in source.named_modules():
        for adapter, (root, path, _, _) in list(getattr(module, "_personae_patches", {}).items()):
            install(target.get_submodule(name), adapter, _patch_on(module, adapter),
                    target if root is source else root, path)
            done += 1
    return done


def take_patches(model: torch.nn.Module) -> list[tuple[torch.nn.Module, torch.Tensor | None, torch.Tensor | None]]:
    """Every change on `model`'s layers as (layer, weight change, bias change) at its adapter's current weight, and
    the changes taken off (each layer runs its own forward again): what baking adds to the weights. The changes are
    computed from the weights as they are now, before anything else (a fused LoRA) is added to them."""
    taken = []
    for module in list(model.modules()):
        for adapter, reference in list(getattr(module, "_personae_patches", {}).items()):
            w = _adapter_weight(reference, adapter) or 0.0
            patch = _patch_on(module, adapter)
            weight = bias = None
            if patch.form is not None:
                weight = w * dense_change(module, patch.form)
            elif patch.weight is not None:
                weight = w * patch.weight
            elif patch.up is not None:
                weight = (w * patch.scale) * (patch.up @ patch.down)
            if patch.bias is not None:
                bias = w * patch.bias
            if w and (weight is not None or bias is not None):
                taken.append((module, None if weight is None else weight.detach().clone(),
                              None if bias is None else bias.detach().clone()))
            _drop(module, adapter)
    return taken


def add_changes(taken: list[tuple[torch.nn.Module, torch.Tensor | None, torch.Tensor | None]]) -> None:
    """take_patches' changes added into the layers' own weights and biases (a grown token table keeps its new rows)."""
    with torch.no_grad():
        for module, weight, bias in taken:
            if weight is not None:
                module.weight.copy_(_added(module.weight, weight.to(module.weight)))
            if bias is not None:
                if module.bias is None:
                    raise ValueError(f"{type(module).__name__} has no bias to take a change")
                module.bias.add_(bias.to(module.bias))
