"""ControlNet generation: control maps from images, ControlNets loaded once per session,
and diffusers' ControlNet pipelines built on the session's own modules (no copies).

txt2img, img2img and inpainting each have a ControlNet counterpart in diffusers; the
session's LoRAs stay active (they live in the shared UNet) and prompts arrive as our
own embeddings (weights, chunks, clip skip, textual inversion). Several units make a
multi-ControlNet. Guidance start/end are fractions of the steps, as A1111's sliders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from personae.config.generate import ControlRef, GenerateSettings
from personae.data.control import ControlType, detect_control, get_control_type
from personae.errors import UserError
from personae.events import EventHandler, Message, ignore
from personae.inference.img2img import open_image
from personae.inference.ksampler import img2img_steps
from personae.models.controlnet import ControlNetSource, check_available, load_controlnet, resolve_controlnet


@dataclass
class PreparedControl:
    ref: ControlRef
    control_type: ControlType
    model: str  # what was asked for: a folder or hub id
    map: Image.Image  # the control map at the photo's size

    def map_at(self, size: tuple[int, int]) -> Image.Image:
        """The map at the output size (stretched like the init image, so both stay aligned)."""
        return self.map if self.map.size == size else self.map.resize(size, Image.Resampling.BILINEAR)


def model_for(ref: ControlRef) -> str:
    """The ControlNet a unit uses: the one named, else its control type's public default."""
    control_type = get_control_type(ref.type)
    if ref.model:
        return ref.model
    if control_type.default_model is None:
        raise UserError(f'Control type "{ref.type}" has no default ControlNet: the map could be of any kind.',
                        f"Name the model with --controlnet {ref.type}=PATH_OR_HUB_ID.")
    return control_type.default_model


def prepare_controls(controls: list[ControlRef], allow_pickle: bool = False) -> list[PreparedControl]:
    """Read every control image and draw its map: bad input fails here, before any model loads."""
    prepared = []
    for i, ref in enumerate(controls):
        control_type = get_control_type(ref.type)
        check_available(resolve_controlnet(model_for(ref), allow_pickle))  # a wrong path or an unreachable hub id, at once
        photo = open_image(ref.image, f"control image of ControlNet {i} ({ref.type})")
        control_map = detect_control(ref.type, photo, ref.options, where=f"the control image {ref.image}")
        prepared.append(PreparedControl(ref, control_type, model_for(ref), control_map))
    return prepared


def controlnet_for(session, spec: str, allow_pickle: bool = False, on_event: EventHandler = ignore):
    """The ControlNet named by `spec`, loaded once per session and moved to its device and dtype."""
    if spec not in session.controlnets:
        source = resolve_controlnet(spec, allow_pickle)
        on_event(Message(f"loading ControlNet {source.location}" + (f"/{source.subfolder}" if source.subfolder else "")))
        model = load_controlnet(source, session.dtype).to(session.device)
        if model.config.cross_attention_dim != session.pipe.unet.config.cross_attention_dim:
            raise UserError(f"The ControlNet {spec} was made for another base model (cross-attention width "
                            f"{model.config.cross_attention_dim}, this model's is {session.pipe.unet.config.cross_attention_dim}).",
                            "Use a ControlNet trained for this model's family (SD 1.x ControlNets for SD 1.x models).")
        session.controlnets[spec] = (source, model)
    return session.controlnets[spec][1]


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


def control_denoise(session, settings: GenerateSettings, controls: list[PreparedControl], init: Image.Image | None,
                    mask: Image.Image | None, size: tuple[int, int], kwargs: dict, scheduler,
                    on_event: EventHandler = ignore) -> list[Image.Image]:
    """Denoise with every control unit; `kwargs` are the shared pipeline arguments (embeds, steps, generators)."""
    controlnets = [controlnet_for(session, c.model, settings.allow_pickle, on_event) for c in controls]
    maps = [c.map_at(size) for c in controls]
    weights = [float(c.ref.weight) for c in controls]
    single = len(controls) == 1
    control = dict(controlnet_conditioning_scale=weights[0] if single else weights,
                   control_guidance_start=settings.control_start, control_guidance_end=settings.control_end)
    pipe = control_pipeline(session, controlnets, img2img=init is not None, inpaint=mask is not None,
                            scheduler=scheduler)
    width, height = size
    if init is None:
        return pipe(image=maps[0] if single else maps, width=width, height=height, **control, **kwargs).images
    extra = {"mask_image": mask} if mask is not None else {}
    steps = img2img_steps(scheduler, settings.steps, settings.strength, fixed=settings.img2img_fix_steps)
    return pipe(image=init, control_image=maps[0] if single else maps, width=width, height=height, **extra,
                **control, **{**kwargs, **steps}).images


def control_infotext(settings: GenerateSettings, session) -> dict[str, str]:
    """A1111's "ControlNet 0: ..." entries (module, model, weight, thresholds, guidance window)."""
    entries = {}
    for i, ref in enumerate(settings.controls):
        control_type = get_control_type(ref.type)
        spec = ref.model or control_type.default_model or ""
        source: ControlNetSource | None = session.controlnets.get(spec, (None, None))[0]
        name = (f"{source.name} [{source.hash}]" if source.hash else source.name) if source else Path(spec).name
        fields = {"Module": control_type.a1111_module, "Model": name,
                  "Weight": f"{ref.weight:g}"}
        options = control_type.check_options(ref.options)
        for label, value in zip(("Threshold A", "Threshold B"), options.values()):
            fields[label] = f"{value:g}"
        fields.update({"Guidance Start": f"{settings.control_start:g}", "Guidance End": f"{settings.control_end:g}"})
        entries[f"ControlNet {i}"] = ", ".join(f"{k}: {v}" for k, v in fields.items())
    return entries
