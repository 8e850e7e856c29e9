"""`personae extract`: a LoRA from a fine-tuned model's difference from its base (kohya's
networks/extract_lora_from_models.py), so a DreamBooth model can be shared as a small file.

    run_extract("runs/db/model", "out/db.safetensors", ExtractSettings(base="sd15/", rank=32))

As kohya computes it: for each layer its LoRA network covers (the transformers' attention, projection and
feed-forward layers and the text encoder's attention and MLP; with conv_rank the resnets and samplers too, their 3x3
convolutions at conv_rank) the difference D = W_tuned - W_base (a convolution's flattened over its kernel) is cut
to its leading singular vectors, up = U S and down = Vh at the rank, both clamped to the clamp_quantile-th value of
their entries (and its negative), alpha = rank (scale 1). Text encoders that differ by at most min_diff anywhere
are left out (kohya extracts the UNet alone then). The file is kohya's layout (A1111, ComfyUI, kohya and
`personae generate --lora` read it) with sd-scripts' header; it is read back by personae's loader before it is
kept, and how close it comes is said: the share of the difference's squared norm the rank keeps, and on a probe
input how far the base model with the LoRA moves toward the tuned model.

SVDs run in fp32 (the models are read in fp32); personae's own SVD is reduced (full_matrices off), which gives the
leading vectors kohya's full one gives, up to their signs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from personae.config.extract import ExtractSettings
from personae.errors import UserError
from personae.events import EventHandler, Message, Progress, ignore
from personae.jobs.merge import check_alike
from personae.methods.lora_resize import low_rank
from personae.models.resolve import load_pipeline, resolve_model
from personae.outputs import absolute, check_file_output

# kohya's networks.lora: the modules whose layers get a LoRA (its *_TARGET_REPLACE_MODULE), by class name
UNET_PARENTS = ("Transformer2DModel",)
CONV_PARENTS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TEXT_PARENTS = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def target_layers(model, parents: tuple[str, ...], convs: bool) -> dict[str, torch.nn.Module]:
    """{module path: layer} of the Linear and Conv2d layers inside modules of the `parents` classes; 3x3 (and larger)
    convolutions only with `convs`, as kohya's LoRA network takes them (1x1 ones count as linear)."""
    found = {}
    for name, parent in model.named_modules():
        if type(parent).__name__ not in parents:
            continue
        for child_name, child in parent.named_modules():
            if not isinstance(child, (torch.nn.Linear, torch.nn.Conv2d)):
                continue
            if isinstance(child, torch.nn.Conv2d) and tuple(child.kernel_size) != (1, 1) and not convs:
                continue
            found[f"{name}.{child_name}" if name else child_name] = child
    return found


def layers_of(pipe, conv_rank: int | None) -> dict[tuple[str, str], torch.nn.Module]:
    """(component, module path) -> layer of everything the extraction covers."""
    unet = target_layers(pipe.unet, UNET_PARENTS + (CONV_PARENTS if conv_rank else ()), bool(conv_rank))
    text = target_layers(pipe.text_encoder, TEXT_PARENTS, False)
    return {**{("unet", m): layer for m, layer in unet.items()},
            **{("text_encoder", m): layer for m, layer in text.items()}}


def kohya_name(component: str, module: str) -> str:
    """The module's name in kohya's layout (as methods/lora_files writes it)."""
    if component == "unet":
        return "lora_unet_" + module.replace(".", "_")
    return "lora_te_text_model_" + module.removeprefix("text_model.").replace(".", "_")


@torch.no_grad()
def _covered(layers: dict, base_layers: dict, settings: ExtractSettings, on_event: EventHandler) -> list:
    """The (component, module) keys to extract: the text encoder's left out when it is the same (kohya's min_diff
    test); a tuned model that is the base model is refused."""
    def largest(component: str) -> float:
        return max((float((layers[key].weight.float() - base_layers[key].weight.float()).abs().max())
                    for key in layers if key[0] == component), default=0.0)

    keys, text = list(layers), largest("text_encoder")
    if text <= settings.min_diff:
        on_event(Message(f"the text encoders are the same (largest difference {text:.2g} <= min_diff "
                         f"{settings.min_diff:g}): the LoRA covers the UNet alone"))
        keys = [key for key in keys if key[0] == "unet"]
        if largest("unet") == 0.0:
            raise UserError("The tuned model's UNet and text encoder are the base model's, weight for weight: there "
                            "is no difference to extract.",
                            "Pass the fine-tuned model as TUNED and the model it was trained from as --base.")
    return keys


def _probe(pipe) -> torch.Tensor:
    """The UNet's output on fixed inputs (the comparison of the base, the base with the LoRA, the tuned model)."""
    g = torch.Generator().manual_seed(0)
    size = max(8, int(pipe.unet.config.sample_size) // 4)
    latents = torch.randn(1, pipe.unet.config.in_channels, size, size, generator=g)
    ids = pipe.tokenizer(["a photo"], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        text = pipe.text_encoder(ids.to(pipe.device))[0]
        return pipe.unet(latents.to(pipe.device), 500, encoder_hidden_states=text).sample.float().cpu()


def run_extract(tuned_spec: str, out_path: str | Path, settings: ExtractSettings, overwrite: bool = False,
                on_event: EventHandler = ignore) -> Path:
    out = absolute(out_path)
    if out.suffix.lower() != ".safetensors":
        raise UserError(f"--out {out_path} does not end in .safetensors: the LoRA is one file in kohya's layout.",
                        "Name it NAME.safetensors.")
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but this PyTorch sees no CUDA GPU.", "Use --device cpu.")
    for spec in (tuned_spec, settings.base):
        source = absolute(spec)
        if source.exists() and (out == source or source in out.parents):
            raise UserError(f"--out {out} is or sits inside the model {spec}; personae never writes its inputs.",
                            "Choose another output.")
    check_file_output(out, overwrite)
    tuned_source = resolve_model(tuned_spec, settings.allow_pickle)
    base_source = resolve_model(settings.base, settings.allow_pickle)  # a missing model fails before any loads
    from personae.methods.lora_files import write_kohya  # peft's seconds of importing: after the checks
    from personae.models.addons import load_loras

    on_event(Message(f"loading the tuned model {tuned_spec} and the base model {settings.base}"))
    tuned, base = load_pipeline(tuned_source), load_pipeline(base_source)
    check_alike(tuned, base, "TUNED", "--base", "Pass as --base the model TUNED was fine-tuned from.")
    layers, base_layers = layers_of(tuned, settings.conv_rank), layers_of(base, settings.conv_rank)
    keys = _covered(layers, base_layers, settings, on_event)
    dtype, tensors, kept, total = DTYPES[settings.save_precision], {}, 0.0, 0.0
    for i, (component, module) in enumerate(keys):  # one difference in memory at a time
        key = (component, module)
        diff = (layers[key].weight.detach().float() - base_layers[key].weight.detach().float()).to(settings.device)
        is_3x3 = diff.dim() == 4 and tuple(diff.shape[2:]) != (1, 1)
        part = low_rank(diff, settings.conv_rank if is_3x3 else settings.rank, settings.clamp_quantile)
        name = kohya_name(component, module)
        tensors[f"{name}.lora_up.weight"] = part.up.to("cpu", dtype).contiguous()
        tensors[f"{name}.lora_down.weight"] = part.down.to("cpu", dtype).contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(float(part.down.shape[0]), dtype=dtype)
        kept, total = kept + part.kept, total + part.total
        on_event(Progress("extract", i + 1, len(keys)))
    args = {"conv_dim": str(settings.conv_rank), "conv_alpha": str(float(settings.conv_rank))} \
        if settings.conv_rank else {}
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(settings.rank),
            "ss_network_alpha": str(float(settings.rank)), "ss_network_args": json.dumps(args),
            "ss_base_model_version": "sd_v1", "ss_sd_model_name": base_source.name, "ss_v2": "False",
            "modelspec.architecture": "stable-diffusion-v1/lora", "modelspec.title": out.stem,
            "personae_extracted_from": json.dumps({"tuned": tuned_source.name, "base": base_source.name,
                                                   "clamp_quantile": settings.clamp_quantile})}
    tuned_probe, base_probe = _probe(tuned), _probe(base)
    del tuned
    written = write_kohya(out, tensors, meta)
    try:
        load_loras(base, [(str(written), 1.0)])  # read back as every --lora is: every key placed
    except UserError:
        written.unlink()
        raise
    moved = _probe(base)
    gap = float((tuned_probe - base_probe).norm())
    error = float((moved - tuned_probe).norm()) / gap if gap else 0.0
    on_event(Message(f"rank {settings.rank}{f' (3x3 convolutions {settings.conv_rank})' if settings.conv_rank else ''}"
                     f" keeps {kept / total:.1%} of the difference's squared norm over {len(keys)} layers; on a "
                     f"probe input the base model with the LoRA is {error:.1%} of the base-to-tuned distance away "
                     "from the tuned model"))
    return written
