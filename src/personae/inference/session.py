"""A loaded model ready to generate: pipeline, device, add-ons and prompt encoder.

Loading is the slow part, so callers that generate many images (compare, storyboard,
the UI) keep one `Session` and change only what differs between images.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from personae.config.sampling import RuntimeSettings
from personae.errors import UserError
from personae.events import EventHandler, Message, ignore
from personae.inference.prompt import PromptEncoder
from personae.inference.rng import route
from personae.inference.speedups import check_runtime, place_pipeline
from personae.models.addons import (
    LoadedEmbedding,
    LoadedLora,
    check_embedding_path,
    check_lora_path,
    load_embeddings,
    load_loras,
)
from personae.models.device import pick_device, pick_dtype
from personae.models.resolve import ModelSource, load_pipeline, model_hash, resolve_model
from personae.models.vae import NO_VAE, load_vae, loads_unasked, vae_beside


@dataclass
class Session:
    pipe: object  # a diffusers StableDiffusionPipeline (or a subclass sharing its components)
    source: ModelSource
    device: torch.device
    dtype: torch.dtype
    loras: list[LoadedLora] = field(default_factory=list)
    embeddings: list[LoadedEmbedding] = field(default_factory=list)
    base_scheduler: dict = field(default_factory=dict)  # the model's own scheduler config, samplers build on it
    controlnets: dict = field(default_factory=dict)  # ControlNets loaded so far: spec -> (ControlNetSource, model)
    image_encoders: dict = field(default_factory=dict)  # IP-Adapters' CLIP image encoders loaded so far: spec -> model
    vae_name: str | None = None  # a --vae in place of the model's: its name and hash, as A1111's infotext has them
    vae_hash: str | None = None
    runtime: RuntimeSettings | None = None  # the speed and memory switches it was opened with (ControlNets get them)

    def __post_init__(self):
        if not self.base_scheduler:
            self.base_scheduler = dict(self.pipe.scheduler.config)

    @property
    def encoder(self) -> PromptEncoder:
        return PromptEncoder(self.pipe)

    @property
    def native_size(self) -> int:
        """The model's training resolution in pixels (512 for SD-1.5, 64 for the tiny model)."""
        return int(self.pipe.unet.config.sample_size) * int(self.pipe.vae_scale_factor)

    @property
    def model_hash(self) -> str | None:
        return model_hash(self.source)

    def pipeline(self, cls: type | None = None, base=None, **parts):
        """A pipeline of class `cls` (default: the session's) built on the session's modules (no copy) with
        `parts` swapped in, such as this call's scheduler or a ControlNet: per-call choices never change the
        session, so one session can serve any number of calls (compare, storyboard, the UI)."""
        base = base or self.pipe
        cls = cls or type(base)
        accepted = inspect.signature(cls.__init__).parameters
        kwargs = {k: v for k, v in {**base.components, **parts}.items() if k in accepted}
        if "requires_safety_checker" in accepted:
            kwargs["requires_safety_checker"] = False
        pipe = cls(**kwargs)
        pipe.set_progress_bar_config(disable=True)
        route(pipe, pipe.scheduler)  # the image generators' draws (A1111's RNG sources and ENSD): inference/rng.py
        return pipe

    @contextmanager
    def lora_weights(self, loras: list[LoadedLora] | None) -> Iterator[list[LoadedLora]]:
        """Within the block, the session's LoRAs at the weights `loras` give (one left out is off); after it,
        back at the session's own. Yields the LoRAs in effect (for the infotext)."""
        if loras is None or not self.loras:
            yield self.loras if loras is None else loras
            return
        chosen = {lora.adapter: lora.adapter_weight for lora in loras}
        adapters = [lora.adapter for lora in self.loras]
        self.pipe.set_adapters(adapters, adapter_weights=[chosen.get(a, 0.0) for a in adapters])
        try:
            yield loras
        finally:
            self.pipe.set_adapters(adapters, adapter_weights=[lora.adapter_weight for lora in self.loras])


def check_session_inputs(model: str, allow_pickle: bool = False, loras: list = (), embeddings: list = ()):
    """The model, LoRA and embedding paths `open_session` would load, checked without loading anything (a caller
    with slow work of its own to do first checks them before it)."""
    source = resolve_model(model, allow_pickle=allow_pickle)
    for path in loras:  # a bad add-on fails before the model loads
        check_lora_path(path, allow_pickle)  # a file, or a peft adapter folder
    for path in embeddings:
        check_embedding_path(path, allow_pickle)  # a tensor file or an A1111 embedding card
    return source


def _automatic_vae(source: ModelSource, vae: str | None, allow_pickle: bool, on_event: EventHandler) -> str | None:
    """The VAE to load: the one asked for; none for "None" (A1111's SD VAE None: the model's own); unasked, A1111's
    Automatic, the VAE file named after a single-file model beside it (a pickle one only with allow_pickle)."""
    if vae and vae.strip().lower() == NO_VAE:
        return None
    if vae or source.kind != "single_file" or (near := vae_beside(Path(source.location))) is None:
        return vae
    if not loads_unasked(near, allow_pickle):
        on_event(Message(f"{near.name} lies beside the model, and A1111 draws with it, but it is a pickle (it can run "
                         "code when loaded): the model's own VAE draws here. Pass --allow-pickle to use it, or "
                         "--vae None to say so.", "warning"))
        return None
    on_event(Message(f"VAE: {near.name}, beside the model (A1111's Automatic; --vae None draws with the model's own)"))
    return str(near)


def open_session(model: str, device: str = "auto", dtype: str = "auto", allow_pickle: bool = False,
                 loras: list[tuple] = (), embeddings: list[tuple[str, str | None]] = (),
                 on_event: EventHandler = ignore, vae: str | None = None,
                 runtime: RuntimeSettings | None = None, place: bool = True) -> Session:
    """Resolve and load a model, put `vae` (a folder or file) in place of its VAE, apply LoRAs and embeddings,
    then the speed and memory switches of `runtime` (its device and dtype are `device` and `dtype`), and move it.

    `place=False` leaves the pipeline in main memory as loaded (in `dtype`, no switches, not moved or offloaded):
    the caller builds the pipeline that runs on its modules and places that one (animate: on the motion UNet)."""
    # 1. check inputs before any heavy work
    source = check_session_inputs(model, allow_pickle, [path for path, *_ in loras], [path for path, _ in embeddings])
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    check_runtime(runtime or RuntimeSettings(), dev)  # offload on a CPU: said before the model loads
    # 2. load the VAE asked for (first: it is small, and a wrong file fails before the model loads), the base model
    asked, vae = vae, _automatic_vae(source, vae, allow_pickle, on_event)
    try:
        own_vae = load_vae(vae, torch_dtype, allow_pickle) if vae else None
    except UserError as exc:
        if asked:
            raise
        raise UserError(f"{vae} lies beside the model, so A1111's Automatic SD VAE (and personae without --vae) draws "
                        f"with it, but it cannot be: {exc.what.removeprefix('--vae ')}",
                        "Move it away or rename it, or pass --vae None to draw with the model's own VAE.") from None
    on_event(Message(f"loading {source.kind.replace('_', ' ')} {source.location}"))
    pipe = load_pipeline(source, dtype=torch_dtype)
    if own_vae:
        on_event(Message(f"VAE: {own_vae.name} in place of the model's"))
        pipe.register_modules(vae=own_vae.vae)
    pipe.set_progress_bar_config(disable=True)
    # 3. add-ons: diffusers' own loaders
    session = Session(pipe, source, dev, torch_dtype, vae_name=own_vae and own_vae.name, vae_hash=own_vae and own_vae.hash,
                      runtime=runtime)
    session.loras = load_loras(pipe, list(loras), allow_pickle=allow_pickle)
    for lora in session.loras:
        bundled = f", with the embeddings {', '.join(lora.tokens)}" if lora.tokens else ""
        on_event(Message(f"LoRA {lora.name}: read as {lora.layout}{bundled}"))
    session.embeddings = load_embeddings(pipe, list(embeddings), allow_pickle=allow_pickle)
    # 4. attention, memory order, VAE slicing / tiling / upcast, offload or the device, compile
    if place:
        place_pipeline(pipe, runtime, dev, torch_dtype, on_event)
    return session
