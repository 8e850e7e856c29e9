"""`personae merge`: A1111's Checkpoint Merger, and LoRAs baked into a model (kohya's networks/merge_lora.py).

    run_merge(["a.safetensors", "b.safetensors"], "ab.safetensors", MergeSettings(multiplier=0.3))
    run_merge(["base/"], "with-me/", MergeSettings(method="none", loras=["me.safetensors:0.8"]))

As A1111's run_modelmerger: weighted-sum gives A x (1 - M) + B x M, add-difference A + (B - C) x M (B - C first,
then C is freed, so at most two models are in memory), over every weight of the UNet, the text encoder and the
VAE; an inpainting (9-channel) or instruct-pix2pix (8-channel) A takes B's first 4 input channels, and such a B
with an ordinary A is refused, as A1111 refuses it. The models load through the same loader as `generate` (diffusers
folders, single files, hub ids already downloaded) and merge in fp32 (A1111 merges in the files' own precision,
fp16 for most shared checkpoints, so its last bits can differ). The result keeps A's tokenizer and scheduler.
Then the VAE is replaced (--vae, "Bake in VAE") and the LoRAs are fused into the weights at their strengths through
peft's merge (diffusers' fuse_lora), as kohya's merge_lora adds up x down x alpha / rank to each weight; the forms
personae keeps beside the layers (OFT, BOFT, GLoRA, IA3, input-axis DoRA, normalisation and embedding changes) are
added as the weight changes they make (layer_patches.take_patches), so every file `--lora` reads can be baked.

Written as one original-layout .safetensors file (what A1111, ComfyUI and model sites use) when OUT ends in
.safetensors, else as a diffusers folder (with merge.json saying how it was made). Inputs are never written.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from personae.config.merge import MergeSettings
from personae.errors import UserError
from personae.events import EventHandler, Message, Progress, ignore
from personae.models.folders import save_pipeline_folder
from personae.models.layer_patches import add_changes, take_patches
from personae.models.original_layout import save_single_file
from personae.models.resolve import load_pipeline, resolve_model
from personae.models.vae import load_vae
from personae.outputs import MODEL_FOLDER, absolute, check_file_output, check_output, staged_output
from personae.staging import write_text

NEEDS = {"none": 1, "weighted-sum": 2, "add-difference": 3}
COMPONENTS = ("unet", "text_encoder", "vae")
LABELS = "ABC"
CLIP_VOCAB = 49408  # what a single file's text encoder is read with: CLIP's own tokenizer


def _load(spec: str, label: str, allow_pickle: bool, on_event: EventHandler):
    on_event(Message(f"loading {label}: {spec}"))
    return load_pipeline(resolve_model(spec, allow_pickle))


def check_alike(a, other, a_label: str, label: str, fix: str = "") -> None:
    """Same tokenizer and the same weights by name and shape (an inpainting A's first layer aside); `fix`: what to
    do instead of merging models of one family."""
    if a.tokenizer.get_vocab() != other.tokenizer.get_vocab():
        raise UserError(f"{a_label} and {label} have different tokenizers ({len(a.tokenizer)} and "
                        f"{len(other.tokenizer)} tokens), so their text encoders do not mean the same thing by the "
                        "same weights.",
                        fix or "Merge models of one family (SD-1.x with SD-1.x).")
    for part in COMPONENTS:
        mine, theirs = getattr(a, part).state_dict(), getattr(other, part).state_dict()
        odd = sorted(set(mine) ^ set(theirs))
        wrong = [k for k in sorted(set(mine) & set(theirs)) if mine[k].shape != theirs[k].shape
                 and not _inpainting_pair(mine[k], theirs[k])]
        if odd or wrong:
            key = (odd or wrong)[0]
            shapes = f"{tuple(mine[key].shape) if key in mine else 'absent'} in {a_label}, " \
                     f"{tuple(theirs[key].shape) if key in theirs else 'absent'} in {label}"
            raise UserError(f"{a_label} and {label} are not the same architecture: {part} weight {key} is {shapes}.",
                            fix or "Merge models of one architecture (SD-1.x with SD-1.x); for an inpainting model, "
                                   "pass it as A.")


def _inpainting_pair(a: torch.Tensor, b: torch.Tensor) -> bool:
    """A's first convolution with the extra input channels of an inpainting (9) or instruct-pix2pix (8) model."""
    return a.ndim == 4 and a.shape[0] == b.shape[0] and a.shape[2:] == b.shape[2:] and a.shape[1] in (8, 9) \
        and b.shape[1] == 4


def _refuse_inpainting_b(a, b, a_label: str, label: str) -> None:
    first_a, first_b = a.unet.conv_in.weight, b.unet.conv_in.weight
    if first_b.shape[1] in (8, 9) and first_a.shape[1] == 4:
        kind = "an inpainting" if first_b.shape[1] == 9 else "an instruct-pix2pix"
        raise UserError(f"{label} is {kind} model ({first_b.shape[1]} input channels) and {a_label} is not.",
                        f"When merging {kind} model with an ordinary one, pass it as A (as A1111 asks).")


def _difference(b, c) -> None:
    """B <- B - C, in place, for every floating-point weight."""
    with torch.no_grad():
        for part in COMPONENTS:
            theirs = getattr(c, part).state_dict()
            for key, value in getattr(b, part).state_dict().items():
                if value.is_floating_point():
                    value.sub_(theirs[key])


def _merge(a, b, method: str, m: float, on_event: EventHandler) -> None:
    """A <- A (1 - M) + B M, or A + M (B - C) with B already holding B - C; in place, A1111's expressions."""
    with torch.no_grad():
        for i, part in enumerate(COMPONENTS):
            theirs = getattr(b, part).state_dict()
            for key, value in getattr(a, part).state_dict().items():
                if not value.is_floating_point():
                    continue  # ids and counters stay A's
                other = theirs[key]
                target = value[:, :4] if value.shape != other.shape else value  # an inpainting A: its first 4 inputs
                target.copy_((1 - m) * target + m * other if method == "weighted-sum" else target + m * other)
            on_event(Progress("merge", i + 1, len(COMPONENTS)))


def _bake_loras(pipe, settings: MergeSettings, single_file: bool, on_event: EventHandler) -> None:
    from personae.models.addons import load_loras, read_lora  # peft's import: after the checks of run_merge

    for ref in settings.loras:  # every file read and checked before the weights change
        lora = read_lora(pipe, Path(ref.path).expanduser(), settings.allow_pickle)
        if lora.embeddings and single_file:
            raise UserError(f"{ref.path} bundles embeddings ({', '.join(lora.embeddings)}): their tokens would join "
                            "the tokenizer, which a single checkpoint file does not carry.",
                            "Write a diffusers folder (an OUT not ending in .safetensors), or leave the LoRA out.")
    loaded = load_loras(pipe, [(r.path, r.weight, r.unet_weight) for r in settings.loras], settings.allow_pickle)
    # the changes kept beside the layers (OFT, BOFT, GLoRA, IA3, input-axis DoRA, norms, embeddings) as weight
    # changes, computed from the weights before the LoRA pairs are fused, then added after: the sum the layers gave
    beside = take_patches(pipe.unet) + take_patches(pipe.text_encoder)
    pipe.fuse_lora(components=["unet", "text_encoder"], lora_scale=1.0, adapter_names=[l.adapter for l in loaded])
    pipe.unload_lora_weights()
    add_changes(beside)
    for l in loaded:
        on_event(Message(f"baked {l.tag} ({l.layout})"))


def _check_out(models: list[str], out: Path, single_file: bool, overwrite: bool) -> None:
    for spec in models:
        source = absolute(spec)
        if source.exists() and (out == source or source in out.parents or out in source.parents):
            raise UserError(f"--out {out} is, holds or sits inside the model {spec}; personae never writes its inputs.",
                            "Choose another output.")
    if single_file:
        check_file_output(out, overwrite)
    else:
        check_output(out, MODEL_FOLDER, overwrite)


def run_merge(models: list[str], out_path: str | Path, settings: MergeSettings, overwrite: bool = False,
              on_event: EventHandler = ignore) -> Path:
    needs = NEEDS[settings.method]
    if len(models) != needs:
        names = ", ".join(LABELS[:needs])
        raise UserError(f"--method {settings.method} takes {needs} model{'s' * (needs > 1)} ({names}); "
                        f"{len(models)} {'was' if len(models) == 1 else 'were'} given.",
                        "Pass A and B for weighted-sum, A, B and C for add-difference, A alone for none.")
    if settings.method == "none" and not settings.loras and not settings.vae and not settings.half:
        raise UserError("--method none with nothing to bake in writes model A as it is.",
                        "Add --lora, --vae or --half.")
    out = absolute(out_path)
    single_file = out.suffix.lower() == ".safetensors"
    _check_out(models, out, single_file, overwrite)
    for spec in models:
        resolve_model(spec, settings.allow_pickle)  # a missing or refused model fails before any loads
    b = None
    if needs > 1:
        b = _load(models[1], "B", settings.allow_pickle, on_event)
    if needs > 2:
        c = _load(models[2], "C", settings.allow_pickle, on_event)
        check_alike(b, c, "B", "C")
        _difference(b, c)
        del c
    a = _load(models[0], "A", settings.allow_pickle, on_event)
    if b is not None:
        _refuse_inpainting_b(a, b, "A", "B")
        check_alike(a, b, "A", "B")
        if a.scheduler.config.get("prediction_type") != b.scheduler.config.get("prediction_type"):
            on_event(Message(f"A predicts {a.scheduler.config.get('prediction_type')}, B "
                             f"{b.scheduler.config.get('prediction_type')}: the result keeps A's scheduler", "warning"))
        _merge(a, b, settings.method, settings.multiplier, on_event)
        del b
    if settings.vae:
        vae = load_vae(settings.vae, allow_pickle=settings.allow_pickle).vae
        _check_alike_vae(a.vae, vae, settings.vae)
        a.register_modules(vae=vae)  # its config too: a VAE's scaling factor belongs to its weights
        on_event(Message(f"baked in the VAE {settings.vae}"))
    if settings.loras:
        _bake_loras(a, settings, single_file, on_event)
    if single_file and len(a.tokenizer) != CLIP_VOCAB:
        raise UserError(f"The result's tokenizer has {len(a.tokenizer)} tokens, not CLIP's {CLIP_VOCAB}: a single "
                        "checkpoint file carries no tokenizer, so tools would read it with the wrong one.",
                        "Write a diffusers folder (an OUT not ending in .safetensors).")
    if settings.half:
        a.to(torch.float16)
    recipe = {"method": settings.method, "multiplier": settings.multiplier, "models": dict(zip(LABELS, models)),
              "loras": [r.model_dump() for r in settings.loras], "vae": settings.vae, "half": settings.half}
    if single_file:
        save_single_file(a, out)
    else:
        with staged_output(out, MODEL_FOLDER, replace=overwrite) as work:
            save_pipeline_folder(a, work)
            write_text(work / "merge.json", json.dumps(recipe, indent=2))
    on_event(Message(f"wrote {out}"))
    return out


def _check_alike_vae(mine, theirs, spec: str) -> None:
    a, b = mine.state_dict(), theirs.state_dict()
    if set(a) != set(b) or any(a[k].shape != b[k].shape for k in a):
        raise UserError(f"--vae {spec} is not of this model's VAE architecture.", "Pass an SD-1.x VAE.")
