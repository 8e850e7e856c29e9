"""ControlNet generation: control maps from images, ControlNets loaded once per session,
and diffusers' ControlNet pipelines built on the session's own modules (no copies).

txt2img, img2img and inpainting each have a ControlNet counterpart in diffusers; the
session's LoRAs stay active (they live in the shared UNet) and prompts arrive as our
own embeddings (weights, chunks, clip skip, textual inversion). Several units make a
multi-ControlNet. Guidance start/end are fractions of the steps, as A1111's sliders, and
act as there (inference/control_steps.py, with the units' Control Modes).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from personae.config.generate import ControlRef, GenerateSettings
from personae.data.control import ControlType, get_control_type, processed_map
from personae.data.control.fit import filled_at, fit_map, pixel_perfect_res
from personae.data.control.inpaint import inpaint_hint
from personae.errors import UserError
from personae.events import EventHandler, Message, ignore
from personae.inference.control_steps import UnitSteps, unit_steps
from personae.inference.img2img import kept_by_sampler, load_mask, open_image
from personae.inference.ksampler import img2img_steps
from personae.media.controlnet_text import write_unit
from personae.models.controlnet import ControlNetSource, check_available, load_controlnet, resolve_controlnet


@dataclass
class PreparedControl:
    ref: ControlRef
    control_type: ControlType
    model: str  # what was asked for: a folder or hub id
    map: Image.Image  # the control map as the preprocessor made it (at the unit's processor resolution)
    photo: Image.Image | None = None  # what it was made from (a pixel-perfect unit remakes it for the picture's size)
    made: dict = field(default_factory=dict)  # res -> map, made once each
    seed: int = 0  # the numpy seed a seeded type's map was drawn from (data/control/shuffle.py)

    def map_at(self, size: tuple[int, int], made_for: tuple[int, int] | None = None) -> Image.Image:
        """The map at the picture's size, fitted as the unit's "Resize Mode" says (data/control/fit.py); a
        pixel-perfect unit's map made at the resolution that size needs, or that `made_for` needs (the hires fix's
        redraw takes the first pass's map, fitted to its own size, as the extension does)."""
        made = self.map
        if self.ref.pixel_perfect and self.photo is not None and self.control_type.scaled \
                and self.control_type.a1111_module != "none":
            res = pixel_perfect_res(self.photo.size, made_for or size, self.ref.resize_mode)
            if res not in self.made:
                self.made[res] = make_map(self.ref, self.photo, res, self.seed)
            made = self.made[res]
        return fit_map(made, size, self.ref.resize_mode)

    def with_ref(self, ref: ControlRef) -> PreparedControl:
        """The same map for another unit with the same image and preprocessor (a comparison's rows)."""
        return PreparedControl(ref, self.control_type, model_for(ref), self.map, self.photo, self.made, self.seed)

    def for_seed(self, seed: int) -> PreparedControl:
        """The unit for a picture whose preprocessors draw from numpy seed `seed`: itself, unless its map is random
        (shuffle), which is drawn again from that seed."""
        if not self.control_type.seeded or seed == self.seed or self.photo is None:
            return self
        return PreparedControl(self.ref, self.control_type, self.model,
                               make_map(self.ref, self.photo, self.ref.processor_res, seed), self.photo, {}, seed)


def make_map(ref: ControlRef, photo: Image.Image, res: int, seed: int = 0) -> Image.Image:
    """A unit's map as A1111's extension preprocesses its photo at Processor Res `res` (data/control's
    processed_map); `seed`: the numpy seed of a seeded type (shuffle.numpy_seed)."""
    return processed_map(ref.type, photo, res, ref.options, where=f"the control image {ref.image}", seed=seed)


def model_for(ref: ControlRef) -> str:
    """The ControlNet a unit uses: the one named, else its control type's public default."""
    control_type = get_control_type(ref.type)
    if ref.model:
        return ref.model
    if control_type.default_model is None:
        raise UserError(f'Control type "{ref.type}" has no default ControlNet: the map could be of any kind.',
                        f"Name the model with --controlnet {ref.type}=PATH_OR_HUB_ID.")
    return control_type.default_model


def prepare_controls(controls: list[ControlRef], allow_pickle: bool = False, seed: int = 0) -> list[PreparedControl]:
    """Read every control image and make its map (`seed`: the numpy seed of random maps, shuffle.numpy_seed): bad
    input fails here, before any model loads."""
    prepared = []
    for i, ref in enumerate(controls):
        control_type = get_control_type(ref.type)
        check_available(resolve_controlnet(model_for(ref), allow_pickle))  # a wrong path or an unreachable hub id, at once
        photo = open_image(ref.image, f"control image of ControlNet {i} ({ref.type})")
        if ref.mask:
            load_mask(ref.mask, photo.size, 0)  # a missing or unreadable mask, before any model loads
        prepared.append(PreparedControl(ref, control_type, model_for(ref),
                                        make_map(ref, photo, ref.processor_res, seed), photo, seed=seed))
    return prepared


def unit_controlnets(session, units: list[list[PreparedControl]], allow_pickle: bool = False,
                     on_event: EventHandler = ignore) -> list:
    """The ControlNet of each unit (`units`: the units each ControlNet serves, a picture's one or a clip's one per
    keyframe); one that a unit asks "Low VRAM" of waits in main memory between its calls."""
    low = {c.model for group in units for c in group if c.ref.low_vram}
    return [controlnet_for(session, group[0].model, allow_pickle, on_event, low_vram=group[0].model in low)
            for group in units]


def controlnet_for(session, spec: str, allow_pickle: bool = False, on_event: EventHandler = ignore,
                   low_vram: bool = False):
    """The ControlNet named by `spec`, loaded once per session in its dtype, with the session's attention and memory
    order, on its device (under --medvram / --lowvram: offloaded as the session's modules are; else with a unit's
    `low_vram`: there for each of its calls only)."""
    from personae.inference.speedups import beside_unet, offload_beside, unit_low_vram

    if spec not in session.controlnets:
        source = resolve_controlnet(spec, allow_pickle)
        on_event(Message(f"loading ControlNet {source.location}" + (f"/{source.subfolder}" if source.subfolder else "")))
        model = load_controlnet(source, session.dtype)
        _check_fits(spec, model.config, session.pipe.unet.config)
        beside_unet(model, session.runtime)
        # a pooled ControlNet (shuffle) is pooled unit by unit (inference/control_steps.py): diffusers, seeing the
        # flag, would run every unit of the pipeline in guess mode
        model.global_average_pooling = bool(model.config.global_pool_conditions)
        model.register_to_config(global_pool_conditions=False)
        session.controlnets[spec] = (source, model)
    model = session.controlnets[spec][1]
    if not offload_beside(model, session.pipe.vae, session.runtime, session.device):
        unit_low_vram(model, low_vram, session.device)
    return model


def _check_fits(spec: str, net, unet) -> None:
    """A ControlNet's residuals are added to the UNet's skip connections and it reads the UNet's text: the two
    (configs `net` and `unet`) must have the same text width and the same down blocks."""
    def blocks(config) -> str:
        return f"{config.layers_per_block} layers per block, {', '.join(map(str, config.block_out_channels))} wide"

    if net.cross_attention_dim != unet.cross_attention_dim:
        mismatch = f"cross-attention width {net.cross_attention_dim}, this model's is {unet.cross_attention_dim}"
    elif blocks(net) != blocks(unet):
        mismatch = f"down blocks of {blocks(net)}, this model's of {blocks(unet)}"
    else:
        return
    raise UserError(f"The ControlNet {spec} was made for another base model ({mismatch}).",
                    "Use a ControlNet trained for this model's family (SD 1.x ControlNets for SD 1.x models).")


def pools(controlnet) -> bool:
    """Whether a ControlNet loaded by controlnet_for averages its control over the picture (a shuffle model)."""
    return getattr(controlnet, "global_average_pooling", False)


def control_pipeline(session, controlnets: list, img2img: bool, inpaint: bool, scheduler):
    """diffusers' ControlNet pipeline for this mode, sharing the session's modules, with this call's scheduler."""
    from diffusers import (
        StableDiffusionControlNetImg2ImgPipeline,
        StableDiffusionControlNetInpaintPipeline,
        StableDiffusionControlNetPipeline,
    )

    cls = (StableDiffusionControlNetInpaintPipeline if inpaint else
           StableDiffusionControlNetImg2ImgPipeline if img2img else StableDiffusionControlNetPipeline)
    return session.pipeline(cls, scheduler=scheduler,
                            controlnet=controlnets[0] if len(controlnets) == 1 else controlnets)


def control_call(session, settings: GenerateSettings, controls: list[PreparedControl], size: tuple[int, int],
                 scheduler, batch: int, img2img: bool = False, inpaint: bool = False,
                 made_for: tuple[int, int] | None = None, on_event: EventHandler = ignore):
    """One pass with these units: diffusers' ControlNet pipeline (with `scheduler`), its control arguments (the maps
    fitted to `size`, the weights) and the hooks that give each unit its Control Mode and A1111's guidance window
    (to be entered around the pass; `batch`: the pictures it draws)."""
    controlnets = unit_controlnets(session, [[c] for c in controls], settings.allow_pickle, on_event)
    maps = [masked_hint(c, settings, size) if c.control_type.masked else c.map_at(size, made_for) for c in controls]
    weights = [float(c.ref.weight) for c in controls]
    units = [UnitSteps(c.ref.control_mode, *unit_window(settings, c.ref), by_noise=c.ref.guidance_by == "noise",
                       pooled=pools(net)) for c, net in zip(controls, controlnets)]
    single = len(controls) == 1
    # the windows are A1111's, kept by unit_steps: diffusers' own would count the steps another way
    arguments = {"control_image" if img2img else "image": maps[0] if single else maps,
                 "controlnet_conditioning_scale": weights[0] if single else weights,
                 "control_guidance_start": 0.0 if single else [0.0] * len(controls),
                 "control_guidance_end": 1.0 if single else [1.0] * len(controls)}
    pipe = control_pipeline(session, controlnets, img2img=img2img, inpaint=inpaint, scheduler=scheduler)
    return pipe, arguments, _both(unit_steps(controlnets, units, batch, scheduler),
                                  kept_outside(session, settings, controls, size))


@contextmanager
def _both(first, second):
    with first, second:
        yield


def control_denoise(session, settings: GenerateSettings, controls: list[PreparedControl], init: Image.Image | None,
                    mask: Image.Image | None, size: tuple[int, int], kwargs: dict, scheduler,
                    on_event: EventHandler = ignore, soft=None) -> list[Image.Image]:
    """Denoise with every control unit; `kwargs` are the shared pipeline arguments (embeds, steps, generators).
    Inpainting under `mask` is A1111's where the sampler can keep the picture (img2img.kept_by_sampler: the
    ControlNet img2img pipeline, the mask in the sampler, `soft` its Soft inpainting), else diffusers' ControlNet
    inpainting pipeline."""
    if soft is not None and session.pipe.unet.config.in_channels != 4:
        raise UserError("Soft inpainting with an inpainting model under ControlNet units: diffusers' ControlNet "
                        "inpainting pipeline gives the model a rounded mask, not A1111's soft one.",
                        "Leave --soft-inpainting or the ControlNet out, or use an ordinary model.")
    mask = kept_by_sampler(session, mask, scheduler, soft, init)
    pipe, control, steps_hooks = control_call(session, settings, controls, size, scheduler,
                                              kwargs["prompt_embeds"].shape[0], img2img=init is not None,
                                              inpaint=mask is not None, on_event=on_event)
    width, height = size
    with steps_hooks:
        if init is None:
            return pipe(width=width, height=height, **control, **kwargs).images
        extra = {"mask_image": mask} if mask is not None else {}
        steps = img2img_steps(scheduler, settings.steps, settings.strength, fixed=settings.img2img_fix_steps)
        return pipe(image=init, width=width, height=height, **extra, **control, **{**kwargs, **steps}).images


def inpaint_parts(control: PreparedControl, settings: GenerateSettings, size: tuple[int, int]
                  ) -> tuple[Image.Image, Image.Image]:
    """An inpaint unit's picture and mask (white: redrawn) at the picture's `size`: its picture fitted as the unit
    says; its own mask, else the generation's --mask (with --mask-invert), read at the picture's size and fitted the
    same way; a "Resize and Fill" margin redrawn too (data/control/inpaint.py)."""
    photo = control.photo if control.photo is not None else control.map
    if control.ref.mask:
        mask = load_mask(control.ref.mask, photo.size, 0)
    elif settings.mask:
        mask = load_mask(settings.mask, photo.size, 0, settings.mask_invert)
    else:
        mask = Image.new("L", photo.size, 0)
    fitted = fit_map(mask.convert("RGB"), size, control.ref.resize_mode)
    if control.ref.resize_mode == "Resize and Fill":
        top, left, height, width = filled_at(photo.size, size)
        margin = np.full((size[1], size[0], 3), 255, np.uint8)
        margin[top:top + height, left:left + width] = np.asarray(fitted)[top:top + height, left:left + width]
        fitted = Image.fromarray(margin)
    return fit_map(photo, size, control.ref.resize_mode), fitted.convert("L")


def masked_hint(control: PreparedControl, settings: GenerateSettings, size: tuple[int, int]):
    """An inpaint unit's hint (data/control/inpaint.py) at the picture's `size`, as a tensor diffusers' ControlNet
    pipelines take as they are."""
    import torch

    return torch.from_numpy(inpaint_hint(*inpaint_parts(control, settings, size))).permute(2, 0, 1)[None]


def kept_outside(session, settings: GenerateSettings, controls: list[PreparedControl], size: tuple[int, int]):
    """The inpaint_only units' restoration at each model call of a pass at `size` (inference/inpaint_only.py)."""
    from personae.inference.inpaint_only import KeptUnit, kept_latents

    units = [KeptUnit(*inpaint_parts(c, settings, size), c.ref.weight) for c in controls
             if c.control_type.name == "inpaint_only"]
    return kept_latents(session.pipe.unet, session.pipe.vae, session.base_scheduler, units)


def restore_inpaint_only(images: list[Image.Image], settings: GenerateSettings,
                         controls: list[PreparedControl]) -> list[Image.Image]:
    """The finished pictures with each inpaint_only unit's picture kept outside its mask (inference/inpaint_only.py);
    a unit the hires fix's redraw leaves out ("Low res only") does not reach the final size, as in the extension."""
    from personae.inference.inpaint_only import kept_pixels

    for control in controls:
        if control.control_type.name == "inpaint_only" and not (
                settings.hires_scale and control.ref.hr_option == "Low res only"):
            images = [kept_pixels(image, *inpaint_parts(control, settings, image.size)) for image in images]
    return images


def unit_window(settings: GenerateSettings, ref: ControlRef) -> tuple[float, float]:
    """A unit's "Guidance Start" / "Guidance End": its own, else the generation's."""
    return (settings.control_start if ref.guidance_start is None else ref.guidance_start,
            settings.control_end if ref.guidance_end is None else ref.guidance_end)


def control_infotext(settings: GenerateSettings, session) -> dict[str, str]:
    """A1111's "ControlNet 0: ..." entries, in the extension's form (media/controlnet_text.py)."""
    entries = {}
    for i, ref in enumerate(settings.controls):
        control_type = get_control_type(ref.type)
        spec = ref.model or control_type.default_model or ""
        source: ControlNetSource | None = session.controlnets.get(spec, (None, None))[0]
        name = (f"{source.name} [{source.hash}]" if source.hash else source.name) if source else Path(spec).name
        start, end = unit_window(settings, ref)
        fields = {"Module": control_type.a1111_module, "Model": name, "Weight": f"{ref.weight:g}",
                  "Resize Mode": ref.resize_mode, "Low Vram": str(ref.low_vram), "Guidance Start": f"{start:g}",
                  "Guidance End": f"{end:g}",
                  "Pixel Perfect": str(ref.pixel_perfect), "Control Mode": ref.control_mode,
                  "Hr Option": ref.hr_option}
        if control_type.a1111_module != "none":  # the extension leaves out what a unit does not use
            fields["Processor Res"] = str(ref.processor_res)
        options = control_type.check_options(ref.options)
        for label, value in zip(("Threshold A", "Threshold B"), options.values()):
            fields[label] = f"{value:g}"
        entries[f"ControlNet {i}"] = write_unit(fields)
    return entries
