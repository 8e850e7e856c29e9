"""LoRA and its family (LoCon, DoRA, LoHa, LoKr): peft adapters on the UNet, optionally on the text encoder.

Trains: peft layers on `lora.target_modules` of the UNet (rank, alpha, dropout), and on the text encoder's
    attention when `lora.text_encoder`; the base weights stay frozen. `lora.variant` picks peft's class:
    lora and locon (`LoraConfig`; locon adds the resnet / sampler 3x3 convolutions at conv_rank / conv_alpha,
    kohya's conv_dim / conv_alpha), dora (`LoraConfig(use_dora=True)`), loha (`LoHaConfig`), lokr (`LoKrConfig`).
Exports: `<name>.safetensors` in kohya / A1111 layout (LyCORIS key names and `ss_network_module:
    lycoris.kohya` for dora, loha and lokr; sd-scripts' ss_* header and hashes); beside it
    `<name>_diffusers/pytorch_lora_weights.safetensors` for diffusers (lora, locon, dora) or `<name>_peft/`
    (a peft adapter folder per component, loha and lokr). Tensors in `output_dtype`; every file reloaded and checked.
Reads: `lora` (variant, rank, alpha, targets, text encoder), `dreambooth` (prior preservation), `train`, `data`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoHaConfig, LoKrConfig, LoraConfig
from peft.utils import get_peft_model_state_dict

from personae.errors import UserError
from personae.methods.base import ExportFile, Method, ParamGroup, export_dtype
from personae.methods.lora_blocks import layer_shapes, patterns
from personae.methods.lora_files import (
    kohya_metadata,
    peft_to_kohya,
    training_metadata,
    write_a1111_card,
    write_diffusers,
    write_kohya,
)
from personae.methods.lora_layers import LOCON_CONVS, layer_alphas, targeted, unet_targets
from personae.methods.lycoris_files import lycoris_network_args, peft_to_lycoris, write_peft_folder
from personae.models.prediction import modelspec_prediction

TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def freeze(pipe) -> None:
    for part in (pipe.unet, pipe.vae, pipe.text_encoder):
        part.requires_grad_(False)


def adapter_config(variant: str, rank: int, alpha: float, dropout: float, targets: list[str],
                   shapes: dict[str, tuple[int, float]] | None = None):
    """peft's config for one component: LoraConfig (lora, locon, dora), LoHaConfig or LoKrConfig. `shapes`
    ({module: (rank, alpha)}, from lora_blocks.layer_shapes) become its rank_pattern / alpha_pattern."""
    ranks, alphas = patterns(shapes or {}, rank, alpha)
    if variant == "loha":
        return LoHaConfig(r=rank, alpha=alpha, target_modules=targets, rank_pattern=ranks, alpha_pattern=alphas)
    if variant == "lokr":
        return LoKrConfig(r=rank, alpha=alpha, target_modules=targets, rank_pattern=ranks, alpha_pattern=alphas)
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                      init_lora_weights="gaussian", use_dora=variant == "dora", rank_pattern=ranks,
                      alpha_pattern=alphas)


def check_targets(model, targets: list[str], variant: str, where: str) -> None:
    """Every layer `targets` names is one peft's `variant` can adapt (Linear / Conv2d), and at least one exists:
    else one paragraph before anything trains."""
    matched = targeted(model, targets)
    if not matched:
        raise UserError(f"lora.target_modules {targets} name no layer of the {where}.",
                        "Use layer names such as to_q, to_k, to_v, to_out.0, proj_in, conv1, conv2.")
    kinds = ("Linear", "Conv2d") + (("Embedding",) if variant in ("lora", "locon", "dora") else ())
    odd = {name: kind for name, kind in matched.items() if kind not in kinds}
    if odd:
        name, kind = next(iter(odd.items()))
        raise UserError(f"lora.variant {variant} cannot adapt {name} of the {where}: it is a {kind}, and peft's "
                        f"{variant} layers go on {', '.join(kinds)} layers only ({len(odd)} such layer(s) matched "
                        f"lora.target_modules {targets}).",
                        "Take that name out of lora.target_modules (e.g. norm layers cannot carry a LoRA).")


def add_lora(pipe, rank: int, alpha: float, dropout: float, targets: list[str], text_encoder: bool,
             te_rank: int | None, variant: str = "lora", conv_rank: int | None = None,
             conv_alpha: float | None = None, te_alpha: float | None = None, block_ranks: dict[str, int] | None = None,
             block_alphas: dict[str, float] | None = None) -> None:
    """peft adapters on the UNet (rank and alpha per block and, for locon, per 3x3 convolution) and optionally on
    the text encoder (te_rank, te_alpha; by default the UNet's rank and alpha / rank scale)."""
    targets = unet_targets(targets, variant)
    check_targets(pipe.unet, targets, variant, "UNet")
    modules = list(targeted(pipe.unet, targets))
    convs = {}
    if variant == "locon" and (conv_rank or conv_alpha):
        convs = {m: (conv_rank, conv_alpha) for m in modules if m.rsplit(".", 1)[-1] in LOCON_CONVS}
    shapes = layer_shapes(pipe.unet, modules, rank, alpha, block_ranks or {}, block_alphas or {}, convs)
    pipe.unet.add_adapter(adapter_config(variant, rank, alpha, dropout, targets, shapes))
    if text_encoder:
        r = te_rank or rank
        pipe.text_encoder.add_adapter(adapter_config("lora" if variant == "locon" else variant, r,
                                                     te_alpha or alpha * r / rank, dropout, TEXT_ENCODER_TARGETS))


def variant_of(model) -> str:
    """"lora", "dora", "loha" or "lokr": what kind of adapter `model` carries."""
    config = model.peft_config["default"]
    kind = type(config).__name__
    return {"LoHaConfig": "loha", "LoKrConfig": "lokr"}.get(kind, "dora" if getattr(config, "use_dora", False)
                                                             else "lora")


def export_lora(pipe, out: Path, *, name: str, rank: int, alpha: float, te_alpha: float | None = None, steps: int,
                base_model: str, trigger: str, extra_meta: dict[str, str], file_stem: str = "lora",
                dtype: torch.dtype = torch.float32, network_args: dict[str, str] | None = None) -> list[ExportFile]:
    """Write `<file_stem>.safetensors` (kohya/A1111 or LyCORIS names) and the diffusers or peft export beside it.

    `name` is what the file calls itself (`ss_output_name`: the run's name); `file_stem` names the files. Each
    module's alpha is read from the adapted layers: `rank` and `alpha` only describe the run in the header, and
    `te_alpha` is no longer needed (kept for callers)."""
    te_trained = bool(getattr(pipe.text_encoder, "peft_config", None))
    models = {"unet": pipe.unet, **({"text_encoder": pipe.text_encoder} if te_trained else {})}
    variant = variant_of(pipe.unet)
    # pivotal tuning resizes the token embeddings: they travel in the embedding file; peft would put the whole
    # table into the LoRA, which diffusers' loader then rejects ("all LoRA param names contain 'lora'")
    states = {part: get_peft_model_state_dict(m, save_embedding_layers=False) for part, m in models.items()}
    alphas = {part: layer_alphas(m) for part, m in models.items()}
    out.mkdir(parents=True, exist_ok=True)
    meta = kohya_metadata(rank=rank, alpha=alpha, steps=steps, base_model=base_model, trigger=trigger,
                          name=name, te_trained=te_trained, extra=extra_meta)
    scheduler = getattr(pipe, "scheduler", None)  # methods/lora_size.py sizes a file on bare components
    if scheduler is not None:
        meta.update(modelspec_prediction(dict(scheduler.config)))  # what the base predicts, as kohya says it
    if variant in ("lora", "dora"):
        tensors = peft_to_kohya(states["unet"], states.get("text_encoder"), alphas["unet"], alphas.get("text_encoder"),
                                dtype)
    else:
        tensors = peft_to_lycoris(models, states, dtype)
    if variant != "lora" or network_args:
        meta.update(lycoris_network_args(variant, te_trained, network_args or {}))
    kohya = write_kohya(out / f"{file_stem}.safetensors", tensors, meta)
    write_a1111_card(kohya, trigger, base_model)
    if variant in ("loha", "lokr"):
        folder = write_peft_folder(out / f"{file_stem}_peft", models, states, dtype, training_metadata(kohya))
        return [ExportFile(kohya, "lycoris", "personae"), ExportFile(folder, "peft", "peft")]
    parts = {part: (states[part], alphas[part]) for part in models}
    diffusers_file = write_diffusers(out / f"{file_stem}_diffusers", parts, training_metadata(kohya), dtype)
    # diffusers' kohya converter hands dora_scale over unshaped (peft wants (out,)): a DoRA file is checked, and
    # meant to be read, by LyCORIS-aware loaders (personae generate, ComfyUI), not load_lora_weights
    return [ExportFile(kohya, "kohya", "personae" if variant == "dora" else "lora"),
            ExportFile(diffusers_file, "diffusers", "lora")]


def lora_plus_groups(name: str, module: torch.nn.Module, lr: float, ratio: float | None) -> list[ParamGroup]:
    """The module's trainable parameters at `lr`; with LoRA+'s `ratio` (Hayou et al. 2024; kohya's
    loraplus_lr_ratio, peft's create_loraplus_optimizer) the up matrices (peft's lora_B) in a group of their own at
    lr x ratio."""
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if not ratio:
        return [ParamGroup(name, [p for _, p in trainable], lr)]
    up = [p for n, p in trainable if ".lora_B." in n]
    return [ParamGroup(name, [p for n, p in trainable if ".lora_B." not in n], lr),
            ParamGroup(f"{name}_up", up, lr * ratio)]


@dataclass
class LoraMethod(Method):

    def setup(self, pipe) -> list[ParamGroup]:
        c = self.job.lora
        freeze(pipe)
        if c.init_from:
            self._from_file(pipe)
        else:
            add_lora(pipe, c.rank, c.alpha, c.dropout, c.target_modules, c.text_encoder, c.text_encoder_rank,
                     c.variant, c.conv_rank, c.conv_alpha, c.text_encoder_alpha, c.block_ranks, c.block_alphas)
        lr = self.job.train.learning_rate
        groups = lora_plus_groups("unet_lora", pipe.unet, lr, c.loraplus_lr_ratio)
        if c.text_encoder:
            groups += lora_plus_groups("text_encoder_lora", pipe.text_encoder, c.text_encoder_lr or lr,
                                       c.loraplus_lr_ratio)
        return groups

    def _from_file(self, pipe) -> None:
        """lora.init_from: the file's layers are the adapter (methods.lora_init); a text encoder it does not cover
        gets new layers when lora.text_encoder is on."""
        from personae.methods.lora_init import add_lora_from_file

        c = self.job.lora
        shape = add_lora_from_file(pipe, c, self.job.allow_pickle)
        if shape.layers["text_encoder"] and (c.text_encoder_rank or c.text_encoder_alpha):
            raise UserError(f"lora.init_from {c.init_from} has text-encoder layers of its own, so "
                            "lora.text_encoder_rank / text_encoder_alpha do not apply.", "Remove them.")
        if c.text_encoder and not shape.layers["text_encoder"]:
            r = c.text_encoder_rank or shape.rank
            pipe.text_encoder.add_adapter(adapter_config("lora" if c.variant == "locon" else c.variant, r,
                                                         c.text_encoder_alpha or shape.alpha * r / shape.rank,
                                                         c.dropout, TEXT_ENCODER_TARGETS))
            self.said.append(shape.summary() + f"; the text encoder gets new layers at rank {r}")
        else:
            self.said.append(shape.summary())

    def modules(self, pipe) -> list[torch.nn.Module]:
        return [pipe.unet, pipe.text_encoder] if self.job.lora.text_encoder else [pipe.unet]

    @property
    def text_encoder_changes(self) -> bool:
        return self.job.lora.text_encoder

    def export(self, pipe, out: Path, metadata: dict[str, str]) -> list[ExportFile]:
        c = self.job.lora
        header = {k: v for k, v in metadata.items() if k.startswith(("ss_", "modelspec.", "personae_"))}
        if c.init_from:  # the header describes the adapter as the file made it, not the (unset) rank and alpha
            from personae.methods.lora_init import adapter_shape, source_name

            c = c.model_copy(update=adapter_shape(pipe.unet))
            header["personae_init_from"] = source_name(c.init_from)
        return export_lora(pipe, out, name=self.job.name or Path(self.job.output).resolve().name or "lora",
                           rank=c.rank, alpha=c.alpha, steps=int(metadata.get("steps", 0)),
                           base_model=metadata.get("base_model", ""), trigger=self.job.trigger, extra_meta=header,
                           file_stem=self.job.name or "lora", dtype=export_dtype(self.job),
                           network_args=locon_args(c) if c.variant == "locon" else None)


def locon_args(c) -> dict[str, str]:
    """kohya's conv_dim / conv_alpha network args of a locon run."""
    return {"conv_dim": str(c.conv_rank or c.rank), "conv_alpha": f"{c.conv_alpha or c.alpha:g}"}
