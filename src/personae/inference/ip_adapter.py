"""IP-Adapter units at generation time: the adapters put into the session's UNet for one drawing, then taken out.

The adapters' layers are diffusers' own (the UNet's IP-Adapter attention processors and image projection, put in by
its IP-Adapter loader). What personae does around them:
- each unit's picture is encoded once per drawing by its image encoder (kept on the session, as its ControlNets) as
  diffusers' pipelines encode it: the projected embedding (plain adapters) or the penultimate hidden states (plus,
  full-face), with zeros (plain) or an encoded black picture (the others) for the negative prompt;
- a hook hands the embeddings to every UNet call of the drawing, at the rows that call has (the prompt alone at CFG 1,
  the negative prompt's first with CFG; AND, skipped negative prompts and split calls take them from there), so the
  txt2img, img2img, inpainting and ControlNet pipelines and both hires passes all see them without knowing;
- each unit acts at its weight inside its guidance window, counted as A1111's ControlNet extension counts a unit's
  (inference/control_steps.py), and not at all outside it;
- when the drawing ends, the UNet gets back the attention processors and image projection it had, so the session
  draws as before (an ADetailer pass after the drawing runs without the adapters, as the extension leaves them out of
  ADetailer's own pass).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from PIL import Image

from personae.config.ip_adapter import IpAdapterRef
from personae.errors import UserError
from personae.inference.img2img import open_image
from personae.models.ip_adapter import (
    IpAdapterFile,
    check_fits,
    check_image_encoder,
    ip_adapter_path,
    load_image_encoder,
    read_ip_adapter,
)


def ip_adapters_checked(units: Sequence[IpAdapterRef], allow_pickle: bool = False) -> None:
    """Every unit's picture, adapter and image encoder is here or reachable: said before any model loads."""
    for unit in units:
        open_image(unit.image, "IP-Adapter picture")
        ip_adapter_path(unit.model, allow_pickle, fetch=False)
        check_image_encoder(unit.image_encoder, allow_pickle)


def image_encoder(session, spec: str, allow_pickle: bool = False):
    """The image encoder `spec` names, loaded once per session, on its device and at its dtype."""
    if spec not in session.image_encoders:
        session.image_encoders[spec] = load_image_encoder(spec, session.dtype, allow_pickle).to(session.device)
    return session.image_encoders[spec]


def image_processor(encoder):
    try:
        from transformers import CLIPImageProcessorPil as Processor  # transformers 5 without torchvision
    except ImportError:
        from transformers import CLIPImageProcessor as Processor
    size = int(encoder.config.image_size)
    return Processor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


@torch.no_grad()
def picture_embeds(encoder, picture: Image.Image, hidden_states: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(the picture's, the negative prompt's) embeddings as diffusers' pipelines make them (encode_image)."""
    device, dtype = encoder.device, next(encoder.parameters()).dtype
    pixels = image_processor(encoder)(picture.convert("RGB"), return_tensors="pt").pixel_values.to(device, dtype)
    if hidden_states:
        own = encoder(pixels, output_hidden_states=True).hidden_states[-2]
        return own, encoder(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
    own = encoder(pixels).image_embeds
    return own, torch.zeros_like(own)


@contextmanager
def ip_adapted(session, units: Sequence[IpAdapterRef], batch: int, allow_pickle: bool = False) -> Iterator[
        IpAdapterHook | None]:
    """Within the block, the session's UNet carries `units` and every call of it gets their pictures; then it is as
    it was. Yields the hook (its `window(scheduler)` counts one sampling pass's guidance windows), or None."""
    if not units:
        yield None
        return
    unet = session.pipe.unet
    adapters = [read_ip_adapter(unit.model, allow_pickle) for unit in units]
    for adapter in adapters:
        check_fits(adapter, unet)
    embeds = []
    for unit, adapter in zip(units, adapters):
        encoder = image_encoder(session, unit.image_encoder, allow_pickle)
        embeds.append(picture_embeds(encoder, open_image(unit.image, "IP-Adapter picture"), adapter.hidden_states))
    processors, projection = unet.attn_processors, unet.encoder_hid_proj
    hid_type = unet.config.encoder_hid_dim_type
    try:
        try:
            unet._load_ip_adapter_weights([{"image_proj": a.image_proj, "ip_adapter": a.layers} for a in adapters],
                                          low_cpu_mem_usage=False)
        except (RuntimeError, KeyError, ValueError) as exc:
            names = ", ".join(a.path for a in adapters)
            raise UserError(f"{names} could not be put into this model's UNet ({str(exc).splitlines()[0][:200]}).",
                            "Use IP-Adapters made for this model's family (SD 1.x: ip-adapter_sd15*).") from None
        hook = IpAdapterHook(unet, units, adapters, embeds, batch)
        handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
        _ACTIVE[id(unet)] = hook
        try:
            yield hook
        finally:
            handle.remove()
            _ACTIVE.pop(id(unet), None)
    finally:
        unet.encoder_hid_proj = projection
        unet.config.encoder_hid_dim_type = hid_type  # as diffusers' own loader and unloader set it
        unet.set_attn_processor(processors)


_ACTIVE: dict[int, IpAdapterHook] = {}  # id(unet) -> the hook of the drawing it is in


def ip_window(unet, scheduler):
    """The guidance windows of the IP-Adapter units `unet` carries, for one sampling pass (a no-op without)."""
    from contextlib import nullcontext

    hook = _ACTIVE.get(id(unet))
    return hook.window(scheduler) if hook is not None else nullcontext()


class IpAdapterHook:
    """A UNet forward pre-hook: the units' embeddings at the call's rows, and each unit's weight where its window
    says (0 outside)."""

    def __init__(self, unet, units: Sequence[IpAdapterRef], adapters: Sequence[IpAdapterFile], embeds: list,
                 batch: int):
        from diffusers.models.attention_processor import IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0

        self.units, self.adapters, self.embeds, self.batch = list(units), list(adapters), embeds, batch
        self.layers = [p for p in unet.attn_processors.values()
                       if isinstance(p, (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0))]
        self.on = None  # call -> whether each unit acts (set by `window` for a pass)
        self._weights([unit.weight for unit in units])

    def _weights(self, weights: list[float]) -> None:
        for layer in self.layers:
            layer.scale = list(weights)

    @contextmanager
    def window(self, scheduler) -> Iterator[None]:
        """Within the block (one sampling pass with `scheduler`), each unit acts inside its guidance window."""
        from personae.inference.control_steps import sampling_percent

        if all(u.guidance_start == 0 and u.guidance_end == 1 for u in self.units):
            yield
            return
        calls = itertools.count()

        def on() -> list[bool]:
            percent = sampling_percent(scheduler, next(calls))
            return [u.guidance_start <= percent <= u.guidance_end for u in self.units]

        self.on = on
        try:
            yield
        finally:
            self.on = None
            self._weights([unit.weight for unit in self.units])

    def __call__(self, module, args, kwargs):
        import inspect

        arguments = inspect.signature(module.forward).bind(*args, **kwargs).arguments
        rows, n = arguments["sample"].shape[0], self.batch
        if rows not in (n, 2 * n):
            raise RuntimeError(f"IP-Adapter: the UNet got {rows} rows for a batch of {n}")
        hidden = arguments["encoder_hidden_states"]
        image_embeds = []
        for own, negative in self.embeds:
            one = own[None].expand(n, *own.shape)
            rows_of = torch.cat([negative[None].expand(n, *negative.shape), one]) if rows == 2 * n else one
            image_embeds.append(rows_of.to(hidden.device, hidden.dtype))
        if self.on is not None:
            self._weights([unit.weight if on else 0.0 for unit, on in zip(self.units, self.on())])
        added = dict(arguments.get("added_cond_kwargs") or {})
        arguments["added_cond_kwargs"] = {**added, "image_embeds": image_embeds}
        return (), arguments


def ip_adapter_infotext(units: Sequence[IpAdapterRef], first: int, allow_pickle: bool = False) -> dict[str, str]:
    """The units as A1111's ControlNet extension writes its IP-Adapter units: "ControlNet N" entries numbered after
    the ControlNet units (`first` of them), the adapter by its file name and short hash, the preprocessor by the
    image encoder it names (ViT-H: ip-adapter_clip_sd15; ViT-bigG, h94's sdxl_models encoder: ip-adapter_clip_sdxl)."""
    from personae.media.controlnet_text import write_unit
    from personae.models.ip_adapter import adapter_hash

    entries = {}
    for i, unit in enumerate(units):
        path = ip_adapter_path(unit.model, allow_pickle)
        module = "ip-adapter_clip_sdxl" if "sdxl_models" in unit.image_encoder else "ip-adapter_clip_sd15"
        fields = {"Module": module, "Model": f"{path.stem} [{adapter_hash(path)}]", "Weight": f"{unit.weight:g}",
                  "Resize Mode": "Crop and Resize", "Low Vram": "False", "Processor Res": "512",
                  "Guidance Start": f"{unit.guidance_start:g}", "Guidance End": f"{unit.guidance_end:g}",
                  "Pixel Perfect": "False", "Control Mode": "Balanced", "Hr Option": "Both"}
        entries[f"ControlNet {first + i}"] = write_unit(fields)
    return entries
