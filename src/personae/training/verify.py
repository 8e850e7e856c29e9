"""Prove every export: reload it with the loader it is meant for and compare the image.

Files are grouped by the tool family that would load them together (kohya LoRA with
A1111 embeddings; diffusers LoRA with diffusers embeddings; a peft adapter folder; a model
folder; a single file), loaded into a fresh copy of the base model with diffusers' (or
peft's) own loaders, and rendered with the in-memory model's prompt, seed and sampler.
Every kohya / LyCORIS file is also loaded the way `personae generate --lora` loads it
(family "generate": models.addons, which reads LoCon, DoRA, LoHa and LoKr too). A difference above the
tolerance fails the run: a file that loads differently elsewhere is a bug, not a detail.

The fresh copy of the base model is built on the trained pipeline's own frozen weights (`borrowed_base`): a second
SD-1.5 read from its files would double a save's memory (4.3 GB in fp32), and a run that fits its GPU while it
trains must not run out of memory at its first checkpoint. What trains (a DreamBooth UNet, a text encoder whose
token table learns) is read from the base model's files, as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DDIMScheduler

from personae.methods.base import ExportFile
from personae.models.resolve import ModelSource, load_pipeline

TOLERANCE = 1e-4
# The reference image is rendered with the trained tensors rounded to the export's precision (what the file
# holds), so the files must still match closely; what is left is the diffusers layout folding alpha / rank into
# the up matrix before rounding (one unit in the last place of some weights): fp16 keeps 11 bits (2^-11 = 5e-4
# relative), bf16 8 bits (2^-8 = 4e-3). A wrong key or scale differs by 1e-2 or more.
TOLERANCES = {"fp32": TOLERANCE, "fp16": 1e-3, "bf16": 1e-2}
_FAMILY = {"kohya": "a1111", "a1111": "a1111", "diffusers": "diffusers", "original": "single_file", "peft": "peft"}
_GENERATE_FORMATS = ("kohya", "lycoris")  # the LoRA files `personae generate --lora` is checked on


@dataclass
class Check:
    family: str
    files: list[str]
    max_abs_diff: float
    tolerance: float = TOLERANCE

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


@torch.no_grad()
def render(pipe, prompt: str) -> np.ndarray:
    """A small, fixed-seed image (2 DDIM steps at 64 px, CFG on): cheap, and exercises every weight."""
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    return pipe(prompt, negative_prompt="", num_inference_steps=2, guidance_scale=5.0, height=64, width=64,
                generator=torch.Generator("cpu").manual_seed(0), output_type="np").images


def _rebuilt(module: torch.nn.Module) -> torch.nn.Module | None:
    """A new module of `module`'s class and config whose weights are `module`'s own tensors (no copy), or None when
    one of them trains or is missing (an adapter wraps a layer as `<layer>.base_layer`, and adds weights of its own
    that the new module has no place for)."""
    from accelerate import init_empty_weights

    kind = type(module)
    with init_empty_weights():  # weights on the meta device: nothing allocated; buffers real
        fresh = kind.from_config(module.config) if hasattr(kind, "from_config") else kind(module.config)
    own = {name.replace(".base_layer.", "."): t for name, t in module.state_dict(keep_vars=True).items()}
    state = {}
    for name, wanted in fresh.state_dict(keep_vars=True).items():
        t = own.get(name)
        if t is None or t.requires_grad or t.shape != wanted.shape or t.dtype != wanted.dtype:
            return None
        state[name] = t.detach()
    fresh.load_state_dict(state, strict=True, assign=True)
    return fresh.requires_grad_(False).eval()


def borrowed_base(pipe, base: ModelSource):
    """A fresh pipeline of the base model on `pipe`'s frozen weights: its UNet and text encoder rebuilt around the
    very tensors of `pipe`'s (`_rebuilt`) where nothing in them trains, else read from the base model's files; the
    run's VAE (train's `vae`, else the base model's own); the tokenizer and scheduler from the base model. The
    caller holds `pipe` at its base weights' full values (training/precision.full_precision)."""
    components = {"vae": pipe.vae}
    for name in ("unet", "text_encoder"):
        if (module := _rebuilt(getattr(pipe, name))) is not None:
            components[name] = module
    return load_pipeline(base, components=components)


def load_family(family: str, files: list[ExportFile], base: ModelSource, pipe):
    """The pipeline `family`'s files make, loaded as its tools load them; on `pipe`'s device."""
    kind, device = files[0].loader, pipe.device
    if family == "generate":
        from personae.models.addons import load_embeddings, load_loras

        pipe = borrowed_base(pipe, base)
        load_loras(pipe, [(str(f.path), 1.0) for f in files if f.loader != "embedding"])
        embeddings = [(str(f.path), f.token) for f in files if f.loader == "embedding"]
        if embeddings:
            load_embeddings(pipe, embeddings)
        return pipe.to(device)
    if kind == "folder":
        return load_pipeline(ModelSource("folder", str(files[0].path), files[0].path.name))
    if kind == "single_file":
        return load_pipeline(ModelSource("single_file", str(files[0].path), files[0].path.stem))
    pipe = borrowed_base(pipe, base)
    for f in files:
        if f.loader == "lora":
            pipe.load_lora_weights(str(f.path))
        elif f.loader == "embedding":
            pipe.load_textual_inversion(str(f.path), token=f.token)
        elif f.loader == "peft":
            from peft import PeftModel

            for component in ("unet", "text_encoder"):
                if (f.path / component).is_dir():  # peft injects its layers into the component in place
                    PeftModel.from_pretrained(getattr(pipe, component), str(f.path / component))
    return pipe.to(device)


def families(files: list[ExportFile]) -> dict[str, list[ExportFile]]:
    """The files each check loads together: by tool family, plus "generate" (every kohya / LyCORIS LoRA file
    with the A1111 embeddings, through personae's own loader)."""
    groups: dict[str, list[ExportFile]] = {}
    for f in files:
        if f.loader == "personae":
            continue  # read by personae's loader only: the generate family
        groups.setdefault(_FAMILY.get(f.format, f.loader) if f.loader != "folder" else "folder", []).append(f)
    loras = [f for f in files if f.format in _GENERATE_FORMATS]
    if loras:
        groups["generate"] = loras + [f for f in files if f.format == "a1111" and f.loader == "embedding"]
    # Pivotal tuning with an adapter diffusers cannot read (a DoRA kohya file, LoHa / LoKr): a family left with
    # embeddings alone would render without the adapter and always differ. Its embeddings are checked where their
    # users load them beside the adapter: A1111 embeddings with the LyCORIS file (generate), diffusers embeddings
    # with the peft folder (peft, then diffusers' load_textual_inversion).
    homes = {"a1111": "generate", "diffusers": "peft"}
    for family, group in list(groups.items()):
        home = homes.get(family)
        if all(f.loader == "embedding" for f in group) and len(group) < len(files) and home in groups:
            del groups[family]
            if home != "generate":
                groups[home] = groups[home] + group
    return groups


def verify_exports(pipe, files: list[ExportFile], base: ModelSource, prompt: str,
                   tolerance: float = TOLERANCE) -> list[Check]:
    """Compare each family of exported files, reloaded, with the in-memory `pipe` (left unchanged)."""
    scheduler = pipe.scheduler
    training = {name: getattr(pipe, name).training for name in ("unet", "text_encoder")}
    pipe.unet.eval(), pipe.text_encoder.eval()
    try:
        reference = render(pipe, prompt)
    finally:
        pipe.scheduler = scheduler
        for name, was in training.items():
            getattr(pipe, name).train(was)
    checks = []
    for family, group in families(files).items():
        reloaded = load_family(family, group, base, pipe)
        diff = float(np.abs(render(reloaded, prompt) - reference).max())
        checks.append(Check(family, [str(f.path) for f in group], diff, tolerance))
        del reloaded
    return checks
