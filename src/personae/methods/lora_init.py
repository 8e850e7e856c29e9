"""Training that goes on from a LoRA file (`lora.init_from`; kohya's --network_weights with --dim_from_weights).

    lora: {init_from: ./my_character.safetensors, text_encoder: true}

The file is read as `generate --lora` reads it (models.addons.read_lora: kohya / A1111, diffusers, peft, every key
placed on this base model's layers or the file refused), and its layers become the trained adapter: peft's
LoraConfig with the file's modules as target_modules and its ranks and alphas as rank_pattern / alpha_pattern, the
file's down / up matrices (and DoRA magnitudes) loaded into them. Before the first step the pipeline so draws exactly
what it draws with the file at weight 1.

What peft trains as LoRA can go on: LoRA and LoCon (lora.variant lora or locon) and DoRA (variant dora).
LoHa, LoKr, full diffs, OFT, changes to norm layers, layer biases and bundled embeddings are refused by name.
The file's text-encoder layers train when lora.text_encoder is on; when it is off they are loaded, kept as they
are and exported with the rest, so nothing of the file is lost. A file without them and text_encoder on gets new
text-encoder layers, shaped by text_encoder_rank / text_encoder_alpha.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer

from personae.errors import UserError
from personae.methods.lora_layers import layer_alphas, targeted, unet_targets
from personae.models.addons import read_lora
from personae.models.lora_layouts import TEXT, UNET, peft_layers

CONTINUED = {"LoRA", "LoCon", "DoRA"}  # the kinds peft's LoRA layers hold as they are


@dataclass
class FileShape:
    """What the adapter taken from a file is, for the log and the export's header."""

    path: Path
    layers: dict[str, int]  # component -> layers taken from the file
    rank: int  # the UNet's most common rank and alpha (kohya's ss_network_dim / ss_network_alpha)
    alpha: float
    conv_rank: int | None  # the 3x3 convolutions' (LoCon), else None
    conv_alpha: float | None
    text_encoder_trains: bool

    def summary(self) -> str:
        te = self.layers.get(TEXT, 0)
        text = (f"; its {te} text-encoder layers {'train' if self.text_encoder_trains else 'stay as they are'}" if te
                else "")
        conv = f", 3x3 convolutions at rank {self.conv_rank} (alpha {self.conv_alpha:g})" if self.conv_rank else ""
        return (f"going on from the LoRA {self.path}: {self.layers.get(UNET, 0)} UNet layers at rank {self.rank} "
                f"(alpha {self.alpha:g}){conv}{text}")


def _is_3x3(down: torch.Tensor) -> bool:
    return down.dim() == 4 and tuple(down.shape[2:]) != (1, 1)


def _common(values) -> float:
    return Counter(values).most_common(1)[0][0]


def _check(lora, path: Path, variant: str) -> None:
    """Refuse what peft's LoRA layers cannot go on training, naming it and what to do."""
    other = sorted(k for k in lora.kinds if k not in CONTINUED)
    if other:
        raise UserError(f"lora.init_from {path} holds {', '.join(other)} modules, and personae goes on training LoRA, "
                        "LoCon and DoRA files only (peft's LoRA layers hold those exactly).",
                        "Train a new adapter (remove lora.init_from), or start from a LoRA / LoCon / DoRA file.")
    if lora.patches:
        (component, module), *_ = lora.patches
        raise UserError(f"lora.init_from {path} changes {len(lora.patches)} layers beside its LoRA layers (e.g. the "
                        f"{component}'s {module}: a normalisation layer, an embedding, or DoRA on the input axis), "
                        "which a training run cannot hold.", "Start from a file of LoRA, LoCon or DoRA layers only.")
    if any(change.bias is not None for change in lora.changes.values()):
        raise UserError(f"lora.init_from {path} changes layer biases, which the trained LoRA layers do not have.",
                        "Start from a file of LoRA, LoCon or DoRA layers only.")
    if lora.embeddings:
        raise UserError(f"lora.init_from {path} bundles the embeddings {', '.join(lora.embeddings)} (bundle_emb "
                        "keys), which this run would not carry on.",
                        "Save them apart (personae convert) and train the LoRA from a file without them.")
    if not any(component == UNET for component, _ in lora.changes):
        raise UserError(f"lora.init_from {path} has no UNet layers (only the text encoder's).",
                        "Start from a LoRA with UNet layers, or train a new one.")
    dora = any(change.magnitude is not None for change in lora.changes.values())
    if dora != (variant == "dora"):  # lora and locon both hold plain LoRA pairs, on any layer
        what = "DoRA layers (dora_scale)" if dora else "plain LoRA layers (no DoRA magnitudes)"
        raise UserError(f"lora.init_from {path} holds {what}, but lora.variant is {variant}.",
                        f"Set lora.variant: {'dora' if dora else 'lora (or locon)'} to go on training it.")


def _load(model, changes: dict, component: str, dropout: float, trains: bool) -> int:
    """The component's layers of the file as the adapter "default" of `model`; returns how many."""
    state, config = peft_layers(changes, component)
    if not state:
        return 0
    model.add_adapter(LoraConfig(**config, lora_dropout=dropout, init_lora_weights=True))
    dtype, device = model.dtype, model.device
    # set_peft_model_state_dict wants peft's own names: the DoRA magnitude is a module with a weight
    state = {(k + ".weight" if k.endswith("lora_magnitude_vector") else k): v.to(device, dtype)
             for k, v in state.items()}
    result = set_peft_model_state_dict(model, state, adapter_name="default")
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    layers = sum(1 for m in model.modules() if isinstance(m, BaseTunerLayer) and "default" in getattr(m, "r", {}))
    if unexpected or layers != len(config["target_modules"]):  # our placement and peft's disagree: a bug
        raise RuntimeError(f"{component}: {layers} of {len(config['target_modules'])} layers took the file's weights "
                           f"(not taken: {unexpected[:3]})")
    if not trains:
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.requires_grad_(False)
    return layers


def _shape(lora, where: Path, text_encoder: bool) -> FileShape:
    unet = {module: change for (component, module), change in lora.changes.items() if component == UNET}
    convs = [change for change in unet.values() if _is_3x3(change.down)]
    rest = [change for change in unet.values() if not _is_3x3(change.down)] or convs
    return FileShape(where, {UNET: len(unet), TEXT: len(lora.changes) - len(unet)},
                     int(_common(x.rank for x in rest)), float(_common(x.alpha for x in rest)),
                     int(_common(x.rank for x in convs)) if convs else None,
                     float(_common(x.alpha for x in convs)) if convs else None, text_encoder)


def _agree(c, shape: FileShape, unet=None, unet_modules: set[str] = frozenset()) -> None:
    """What the job sets of the adapter's shape must be the file's (kohya without --dim_from_weights stops on a
    size that differs too); unset, the file decides. target_modules is checked when the model's `unet` is given."""
    from personae.config.train import LoraSection

    default = {name: field.default for name, field in LoraSection.model_fields.items()}
    differ = [f"lora.{name} is {getattr(c, name):g} and the file's is {mine:g}" for name, mine in (
        ("rank", shape.rank), ("alpha", shape.alpha), ("conv_rank", shape.conv_rank), ("conv_alpha", shape.conv_alpha))
              if getattr(c, name) not in (None, default[name]) and getattr(c, name) != mine]
    differ += [f"lora.{name} is set" for name in ("block_ranks", "block_alphas") if getattr(c, name)]
    if unet is not None and c.target_modules != default["target_modules"]:
        wanted = set(targeted(unet, unet_targets(c.target_modules, c.variant)))
        if wanted != unet_modules:
            example = sorted(wanted ^ unet_modules)[0]
            differ.append(f"lora.target_modules {c.target_modules} reach {len(wanted)} UNet layers and the file has "
                          f"{len(unet_modules)} (e.g. {example} is in one and not the other)")
    if differ:
        raise UserError(f"lora.init_from {shape.path} decides the adapter's layers, ranks and alphas, but the job "
                        f"sets them otherwise: {'; '.join(differ)}.",
                        "Remove those settings from the job (the run says the file's shape when it starts), or set "
                        "them as the file has them.")


def _exists(c) -> Path:
    where = Path(c.init_from).expanduser()
    if not where.exists():
        raise UserError(f"lora.init_from {c.init_from} does not exist.",
                        "Give the path of the LoRA file to go on from.")
    return where


def check_init_file(c, allow_pickle: bool = False) -> None:
    """Before a run folder is made: the file exists, is read, holds what can go on training and agrees with the
    job's shape settings, as far as the file alone tells (its names on SD-1.5's layers; sizes and target_modules
    are checked on the model itself when the run starts)."""
    from personae.models.addons import read_lora_tensors
    from personae.models.lora_layouts import place, sd15_table

    where = _exists(c)
    tensors, header, configs = read_lora_tensors(where, allow_pickle)
    if not tensors:
        raise UserError(f"lora.init_from {where} holds no tensors, so it is no LoRA.", "Check the path.")
    lora = place(where, tensors, header, sd15_table(), check_sizes=False, configs=configs)
    if lora.unplaced or not lora.changes:  # a model of another layout (the world's): read on the model itself
        return
    _check(lora, where, c.variant)
    _agree(c, _shape(lora, where, c.text_encoder))


def add_lora_from_file(pipe, c, allow_pickle: bool = False) -> FileShape:
    """The file `c.init_from` (c: the job's LoraSection) as the trained adapter (see the module's text); its
    text-encoder layers train when `c.text_encoder`, else they are kept fixed. A text encoder the file does not
    cover is left to the caller."""
    where = _exists(c)
    lora = read_lora(pipe, where, allow_pickle)  # every key placed on this model, sizes checked, or refused
    _check(lora, where, c.variant)
    shape = _shape(lora, where, c.text_encoder)
    _agree(c, shape, pipe.unet, {module for component, module in lora.changes if component == UNET})
    _load(pipe.unet, lora.changes, UNET, c.dropout, True)
    _load(pipe.text_encoder, lora.changes, TEXT, c.dropout, c.text_encoder)
    return shape


def adapter_shape(unet) -> dict:
    """{rank, alpha, conv_rank, conv_alpha} of the UNet's adapter as it is: the most common rank and alpha of its
    layers, and of its 3x3 convolutions apart (None without them), for the export's header."""
    alphas, ranks, convs = layer_alphas(unet), {}, set()
    for name, module in unet.named_modules():
        if isinstance(module, BaseTunerLayer) and "default" in getattr(module, "r", {}):
            ranks[name] = module.r["default"]
            base = module.get_base_layer()
            if isinstance(base, torch.nn.Conv2d) and tuple(base.kernel_size) != (1, 1):
                convs.add(name)
    rest = [name for name in ranks if name not in convs] or sorted(convs)
    shape = {"rank": int(_common(ranks[n] for n in rest)), "alpha": float(_common(alphas[n] for n in rest))}
    shape["conv_rank"] = int(_common(ranks[n] for n in convs)) if convs else None
    shape["conv_alpha"] = float(_common(alphas[n] for n in convs)) if convs else None
    return shape


def source_name(path: str) -> str:
    """The file gone on from, for the export's header: its name and the hash A1111 shows for a LoRA."""
    from personae.models.addons import file_sha256, lora_sources

    where = Path(path).expanduser()
    try:
        return f"{where.name} ({file_sha256(lora_sources(where)[0][0], skip_safetensors_header=True)[:12]})"
    except (OSError, IndexError, UserError):  # moved away since the run started: the name alone
        return where.name
