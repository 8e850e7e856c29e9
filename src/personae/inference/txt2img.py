"""Text to image, A1111-style: samplers by name, weighted long prompts, clip skip, seeds.

    images = txt2img(GenerateSettings(model="./tiny", prompt="a photo of a cat", steps=4))

Seeds follow A1111: image i of batch b gets seed + b * batch_size + i, each with its
own generator (inference/rng.py: CPU numbers, or an NVIDIA GPU's computed on the CPU), so an image
reproduces on any device and at any batch position. Seeds go up to 2**64 - 1 (ComfyUI's range;
torch's generators take 64 bits) and wrap there; a seed picked at random stays below 2**32, as
A1111 picks them.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image

from personae import __version__
from personae.config.generate import GenerateSettings
from personae.data.control import get_control_type
from personae.data.control.shuffle import numpy_seed
from personae.data.dynamic_prompts import image_prompts, is_template
from personae.errors import UserError
from personae.events import EventHandler, Message, Progress, ignore
from personae.inference.composable import ComposablePrompts, scheduled_prompts
from personae.inference.cond_lengths import pads
from personae.inference.controlnet import (
    PreparedControl,
    control_denoise,
    control_infotext,
    prepare_controls,
    restore_inpaint_only,
    unit_controlnets,
)
from personae.inference.detailer import check_detailer, detail_faces, detailer_infotext
from personae.inference.dynamic_thresholding import thresholding_checked
from personae.inference.freeu import freeu_applied
from personae.inference.hires import upscaler_to_a1111
from personae.inference.hires_passes import check_hires, draw_hires, hires_prompt_text, sampling_pass
from personae.inference.img2img import (
    LATENT_RESIZE,
    a1111_latent_mask,
    composite,
    crop_region,
    cut_region,
    default_size,
    denoiser,
    fill_masked,
    fit_region,
    latent_resized,
    load_mask,
    mask_kwargs,
    noised_start,
    open_image,
    overlay_mask,
    paste_back,
    vae_roundtrip,
)
from personae.inference.ip_adapter import ip_adapted, ip_adapter_infotext, ip_adapters_checked
from personae.inference.ksampler import KDiffusionScheduler, img2img_steps
from personae.inference.nans import check_embeddings, nan_guard
from personae.inference.prompt import with_styles
from personae.inference.prompt_schedule import ScheduledPrompts
from personae.inference.rng import image_generators
from personae.inference.samplers import get_sampler, k_tuning, schedule_said, uniform_said
from personae.inference.session import Session, open_session
from personae.inference.soft_inpaint import overlay_masks, soft_checked, uncropped
from personae.inference.tiling import tiling_applied
from personae.inference.variation import variation_generators
from personae.media.png import format_parameters, infotext_values
from personae.models.addons import LoadedEmbedding, LoadedLora, hashes_text
from personae.models.embedding_dir import expand_embedding_names
from personae.models.lora_dir import expand_lora_tags, lora_tags
from personae.models.upscalers import is_path
from personae.models.vae import NO_VAE

SEEDS = 2**64  # seeds (and variation seeds) are 0 .. SEEDS - 1; counting up wraps there


@dataclass
class GeneratedImage:
    image: Image.Image
    seed: int
    parameters: str  # A1111 infotext for the PNG's `parameters` chunk
    settings: GenerateSettings  # settings that reproduce this one image (its seed, batch of 1)

    def png_text(self) -> dict[str, str]:
        """Text chunks to write: A1111's `parameters` and personae's full settings."""
        return {"personae": json.dumps(self.settings.model_dump(), ensure_ascii=False)}


def session_for(settings: GenerateSettings, on_event: EventHandler = ignore) -> Session:
    return open_session(settings.model, settings.device, settings.dtype, settings.allow_pickle,
                        loras=[(l.path, l.weight, l.unet_weight) for l in settings.loras],
                        embeddings=[(e.path, e.token) for e in settings.embeddings], on_event=on_event,
                        vae=settings.vae, runtime=settings)


def infotext(settings: GenerateSettings, session: Session, seed: int, width: int, height: int,
             loras: list[LoadedLora] | None = None, embeddings: list[LoadedEmbedding] | None = None,
             padded: bool = False) -> str:
    """A1111's `parameters` text; `loras` / `embeddings`: the add-ons this image used (default: the session's);
    `padded`: a prompt and negative prompt of different lengths met (A1111 then says how it padded them)."""
    loras = session.loras if loras is None else loras
    embeddings = session.embeddings if embeddings is None else embeddings
    params = {  # the settings that declare an A1111 name, then what this run resolved
        **infotext_values(settings), **uniform_said(settings.sampler),
        **schedule_said(session.base_scheduler),
        **get_sampler(settings.sampler).eta_said(settings.eta, settings.eta_ddim),
        **get_sampler(settings.sampler).sigmas_said(settings.sigma_churn, settings.sigma_tmin, settings.sigma_tmax,
                                                    settings.sigma_noise),
        **({"Emphasis": settings.emphasis} if settings.emphasis != "Original" else {}),
        **(uniform_said(settings.hires_sampler, "Hires schedule type")
           if settings.hires_scale and settings.hires_sampler else {}),
        **({"Token merging ratio hr": settings.token_merging}  # the redraw's ratio, as A1111 writes it
           if settings.hires_scale and settings.token_merging and not settings.hires_token_merging else {}),
        "Seed": seed,
        "Size": f"{width}x{height}", "Model hash": session.model_hash, "Model": session.source.name,
        "VAE hash": session.vae_hash, "VAE": session.vae_name,
        "Lora hashes": hashes_text({l.name: l.hash for l in loras}),
        "TI hashes": hashes_text({e.token: e.hash for e in embeddings}),
        **control_infotext(settings, session),
        **ip_adapter_infotext(settings.ip_adapters, len(settings.controls), settings.allow_pickle),
        **({"Hires upscaler": upscaler_to_a1111(settings.hires_upscaler)} if settings.hires_scale else {}),
        **({"Seed resize from": f"{settings.seed_resize_from_w}x{settings.seed_resize_from_h}"}
           if settings.seed_resize_from_w and settings.seed_resize_from_h else {}),
        **({"Inpaint area": "Only masked", "Masked area padding": settings.masked_padding}
           if settings.mask and settings.inpaint_area == "masked" else {}),
        **({"Mask mode": "Inpaint not masked"} if settings.mask and settings.mask_invert else {}),
        **({"Masked content": settings.masked_content}
           if settings.mask and settings.masked_content != "original" else {}),
        **(detailer_infotext(settings) if settings.ad_model else {}),
        **({"Pad conds": True} if padded and settings.pad_conds == "on" else {}),
        **({"Pad conds v0": True} if padded and settings.pad_conds == "v0" else {}),
        "Version": f"personae {__version__}",
    }
    prompt = settings.prompt + "".join(f" {l.tag}" for l in loras)
    return format_parameters(prompt, settings.negative, params)


def session_lora_tags(settings: GenerateSettings, session: Session, loras: list[LoadedLora] | None
                      ) -> tuple[GenerateSettings, list[LoadedLora] | None]:
    """A caller holding a session (compare, storyboard): a prompt's <lora:name:w> tags pick the weights of the
    session's LoRAs by name for this call; a name the session has not loaded is an error (it cannot load one)."""
    prompt, tags = lora_tags(settings.prompt)
    if not tags:
        return settings, loras
    chosen = {l.name: l for l in (session.loras if loras is None else loras)}
    by_name = {l.name: l for l in session.loras}
    for tag in tags:
        if tag.name not in by_name:
            raise UserError(f"The prompt asks for the LoRA {tag.text}, which is not among the LoRAs loaded for this "
                            f"run ({', '.join(by_name) or 'none'}).", "Add the file to the run's LoRAs (--lora or the "
                            "file's `loras:`), or take the tag out of the prompt.")
        chosen[tag.name] = replace(by_name[tag.name], weight=tag.weight, unet_weight=tag.unet_weight)
    return settings.model_copy(update={"prompt": prompt}), list(chosen.values())


def _no_vae(vae: str | None) -> bool:
    return bool(vae) and vae.strip().lower() == NO_VAE  # A1111's SD VAE "None", not a file


def _absolute(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else path


def with_absolute_paths(settings: GenerateSettings, session: Session) -> GenerateSettings:
    """`settings` as stored in the PNG: every local file by its absolute path (the model as loaded), so
    `--from-png` works from any working folder, not only the one the image was made in; hub ids stay ids."""
    model = settings.model if session.source.kind == "hub" else session.source.location
    return settings.model_copy(update={
        "model": model, "init_image": _absolute(settings.init_image), "mask": _absolute(settings.mask),
        "lora_dir": _absolute(settings.lora_dir),
        "vae": settings.vae if _no_vae(settings.vae) else _absolute(settings.vae),
        "upscaler_dir": _absolute(settings.upscaler_dir),
        **({"hires_upscaler": _absolute(settings.hires_upscaler)} if is_path(settings.hires_upscaler) else {}),
        "loras": [l.model_copy(update={"path": _absolute(l.path)}) for l in settings.loras],
        "embeddings": [e.model_copy(update={"path": _absolute(e.path)}) for e in settings.embeddings],
        "controls": [c.model_copy(update={"image": _absolute(c.image), "mask": _absolute(c.mask)})
                     for c in settings.controls],
        "ip_adapters": [u.model_copy(update={"image": _absolute(u.image), "model": _local(u.model),
                                             "image_encoder": _local(u.image_encoder)}) for u in settings.ip_adapters]})


def _local(spec: str) -> str:
    """A local file or folder by its absolute path; a hub id as it is."""
    return _absolute(spec) if Path(spec).expanduser().exists() else spec


@contextmanager
def model_patches(session: Session, settings: GenerateSettings) -> Iterator[None]:
    """The run's changes to the model itself, within the block: FreeU on the UNet, A1111's Tiling (circular padding)
    on the UNet and the VAE."""
    with freeu_applied(session.pipe.unet, settings.freeu, settings.freeu_v2), \
            tiling_applied((session.pipe.unet, session.pipe.vae), settings.tiling):
        yield


def inpaint_units_checked(settings: GenerateSettings, on_event: EventHandler) -> GenerateSettings:
    """The inpaint units' masks: each needs its own, --mask, or a "Resize and Fill" margin to redraw; with --mask
    (A1111's img2img inpainting, which keeps the unmasked part itself) an inpaint_only unit runs as
    inpaint_global_harmonious, as the extension runs it there."""
    for ref in settings.controls:
        if ref.mask and not get_control_type(ref.type).masked:
            raise UserError(f"The {ref.type} unit ({ref.image}) has a mask ({ref.mask}); only the inpaint and "
                            "inpaint_only units have one.", "Leave the mask out, or make the unit an inpaint unit.")
        outpaints = ref.resize_mode == "Resize and Fill"
        if get_control_type(ref.type).masked and not (ref.mask or settings.mask or outpaints):
            raise UserError(f"--control {ref.type} marks the part its mask redraws (ControlNet 1.1's inpaint model); "
                            "no mask is given.", f"Give its mask (--control-mask {ref.type}=MASK; in the web UI: "
                                                 '"Control mask"), or --init-image and --mask, or outpaint with '
                                                 '--control-resize "Resize and Fill".')
    if settings.mask and any(ref.type == "inpaint_only" for ref in settings.controls):
        on_event(Message("inpaint_only with --mask: img2img inpainting keeps the unmasked part itself, so the unit "
                         "runs as inpaint_global_harmonious (as A1111's ControlNet extension does)", "warning"))
        settings = settings.model_copy(update={"controls": [
            ref.model_copy(update={"type": "inpaint"}) if ref.type == "inpaint_only" else ref
            for ref in settings.controls]})
    return settings


def _each_drawn(settings: GenerateSettings, session: Session | None, on_event: EventHandler, loras, embeddings,
                controls) -> list[GeneratedImage]:
    """Dynamic Prompts' templates: every image its own prompt, drawn from its seed (data/dynamic_prompts.py), each
    image drawn alone with it (a batch shares one prompt in the pipeline); the PNG gets the drawn prompts and the
    templates as Dynamic Prompts writes them. LoRA tags the drawn prompts name are loaded once, off (weight 0) in
    the images whose prompt does not name them."""
    seed = settings.seed if settings.seed >= 0 else random.randrange(2**32)
    variation = settings.subseed_strength > 0
    subseed = settings.subseed if settings.subseed >= 0 else random.randrange(2**32)
    count = settings.batch_size * settings.batch_count
    seeds = [seed if variation else (seed + i) % SEEDS for i in range(count)]
    subseeds = [(subseed + i) % SEEDS for i in range(count)]
    keys = [(s * 2**32 + v) if variation else s for s, v in zip(seeds, subseeds)]  # what each draw is seeded by
    drawn = image_prompts(settings.prompt, settings.negative, keys, settings.wildcards_dir)
    on_event(Message(f"Dynamic Prompts: {len({p for p, _ in drawn})} different prompt(s) for {count} image(s)"))
    own = session is None
    if own:  # one session for every image: the LoRAs any drawn prompt names, loaded off (weight 0)
        tags = {tag.name: tag for prompt, _ in drawn for tag in lora_tags(prompt)[1]}
        named = "".join(f" <lora:{tag.name}:0>" for tag in tags.values())
        loaded = expand_lora_tags(settings.model_copy(update={"prompt": named}))
        every = "\n".join(text for pair in drawn for text in pair)  # and the embeddings any drawn prompt names
        loaded = expand_embedding_names(loaded.model_copy(update={"prompt": every, "negative": ""}))
        given = {Path(l.path).expanduser().resolve(): l for l in settings.loras}  # --lora keeps its weights
        session = session_for(loaded.model_copy(update={"loras": [
            given.get(Path(l.path).expanduser().resolve(), l).model_copy(update={"path": l.path})
            for l in loaded.loras]}), on_event)
    results = []
    for i, ((prompt, negative), image_seed, image_subseed) in enumerate(zip(drawn, seeds, subseeds)):
        one = settings.model_copy(update={"prompt": prompt, "negative": negative, "seed": image_seed,
                                          "subseed": image_subseed, "batch_size": 1, "batch_count": 1})
        image_loras, stored = loras, None
        if own:  # this image's LoRAs: --lora's and those its prompt drew, as a run of that prompt alone loads them
            text, tags = lora_tags(prompt)
            chosen = {l.name: l for l in session.loras if l.weight}
            by_name = {l.name: l for l in session.loras}
            chosen.update({tag.name: replace(by_name[tag.name], weight=tag.weight, unet_weight=tag.unet_weight)
                           for tag in tags})
            image_loras, stored = list(chosen.values()), expand_lora_tags(one).loras
            one = one.model_copy(update={"prompt": text})
        on_event(Progress("images", i, count))
        [image] = txt2img(one, session, on_event, image_loras, embeddings, controls)
        templates = [("Template", settings.prompt), ("Negative Template", settings.negative)]
        extra = "".join(f"\n{key}: {text}" for key, text in templates if text and is_template(text))
        if stored is not None:
            image = replace(image, settings=image.settings.model_copy(update={"loras": [
                l.model_copy(update={"path": str(Path(l.path).expanduser().resolve())}) for l in stored]}))
        results.append(replace(image, parameters=image.parameters + extra))
    on_event(Progress("images", count, count))
    return results


def txt2img(settings: GenerateSettings, session: Session | None = None, on_event: EventHandler = ignore,
            loras: list[LoadedLora] | None = None, embeddings: list[LoadedEmbedding] | None = None,
            controls: list[PreparedControl] | None = None) -> list[GeneratedImage]:
    """Images for `settings`. A caller holding a session may pick, per call, the weights of its LoRAs (`loras`:
    the session's LoRAs at other weights; one left out is off) and which of its embeddings the PNG names; the
    session itself is left exactly as it was (its pipeline, scheduler and LoRA weights). A caller drawing many
    images with the same units may pass their maps (`controls`: prepare_controls(settings.controls)), drawn once."""
    # 1. check inputs and fix the seed; <lora:name:w> tags become LoRAs (found in --lora-dir, or the session's)
    sampler = get_sampler(settings.sampler)
    settings = settings.model_copy(update={"sampler": sampler.name})  # written as A1111 names it, whatever was typed
    settings = with_styles(settings)  # A1111's styles: the prompts as written to the PNG, so it reproduces alone
    if is_template(settings.prompt) or is_template(settings.negative):  # Dynamic Prompts: one prompt per image
        return _each_drawn(settings, session, on_event, loras, embeddings, controls)
    hires_sampler = get_sampler(settings.hires_sampler) if settings.hires_sampler else sampler
    if settings.hires_sampler:
        settings = settings.model_copy(update={"hires_sampler": hires_sampler.name})
    hires_text = hires_prompt_text(settings)
    if session is None:
        settings = expand_embedding_names(expand_lora_tags(settings))
    else:
        settings, loras = session_lora_tags(settings, session, loras)
    seed = settings.seed if settings.seed >= 0 else random.randrange(2**32)
    variation = settings.subseed_strength > 0
    resized = bool(settings.seed_resize_from_w and settings.seed_resize_from_h)
    if (variation or resized) and settings.init_image:
        flag = "--subseed-strength (A1111's variation seeds)" if variation else "--seed-resize-from-w / -h"
        raise UserError(f"{flag} shapes the starting noise of txt2img; img2img starts from --init-image's picture "
                        "instead.", "Leave it out, or vary --seed with img2img.")
    if variation:
        subseed = settings.subseed if settings.subseed >= 0 else random.randrange(2**32)
        settings = settings.model_copy(update={"subseed": subseed})
    if settings.mask and not settings.init_image:
        raise UserError("--mask needs --init-image (the picture to inpaint).")
    if settings.extra_noise and not (settings.init_image or settings.hires_scale or settings.hires_resize):
        raise UserError(f"--extra-noise {settings.extra_noise:g} is added to the picture img2img or the hires fix "
                        "starts from; this is txt2img without the hires fix.",
                        "Add --init-image or --hires-scale, or leave --extra-noise out.")
    if (settings.masked_content != "original" or settings.mask_invert) and not settings.mask:
        flag = "--mask-invert" if settings.mask_invert else f'--masked-content "{settings.masked_content}"'
        raise UserError(f"{flag} says how the part under --mask is redrawn; no --mask is given.",
                        "Add --mask (with --init-image), or leave it out.")
    soft = soft_checked(settings, sampler.scheduler is KDiffusionScheduler)  # A1111's Soft inpainting, or None
    thresholding_checked(settings)  # Dynamic Thresholding where it can run
    if settings.resize_mode != "Just resize" and not settings.init_image:
        raise UserError(f'--resize-mode "{settings.resize_mode}" says how --init-image meets the picture\'s size; no '
                        "--init-image is given.", "Add --init-image, or leave --resize-mode out.")
    if settings.resize_mode == LATENT_RESIZE and settings.mask:
        raise UserError(f'--resize-mode "{LATENT_RESIZE}" with --mask: the picture would be resized as latents and the '
                        "mask as pixels (A1111's own inpainting breaks on this).",
                        'Inpaint with "Just resize", "Crop and resize" or "Resize and fill".')
    if settings.resize_mode != "Just resize" and settings.inpaint_area == "masked":
        raise UserError("--resize-mode with --inpaint-area masked: the mask's region is cut out and fitted to the "
                        "drawing size, so the picture is not resized (A1111 ignores its Resize mode there).",
                        "Leave --resize-mode out, or inpaint the whole picture (--inpaint-area whole).")
    if settings.inpaint_area == "masked" and not settings.mask:
        raise UserError("--inpaint-area masked draws the region of --mask alone; no --mask is given.",
                        "Add --mask, or leave --inpaint-area at whole.")
    if settings.inpaint_area == "masked" and settings.controls:
        raise UserError("--inpaint-area masked with --control: the control image would need the same cut, which "
                        "personae does not make.", "Inpaint the whole picture with the control, or leave --control out.")
    if settings.init_image and settings.strength > 0 and int(settings.steps * settings.strength) < 1 \
            and sampler.scheduler is not KDiffusionScheduler:  # A1111's k-diffusion img2img runs one step more
        # img2img runs int(steps x strength) of the steps: none at all is an error deep inside diffusers
        raise UserError(f"--strength {settings.strength:g} with --steps {settings.steps} leaves no denoising step "
                        f"(img2img runs steps x strength = {settings.steps * settings.strength:g}, rounded down).",
                        f"Raise --steps to at least {math.ceil(1 / settings.strength)}, or --strength to at least "
                        f"{math.ceil(100 / settings.steps) / 100:g}.")
    upscaler = None
    if settings.hires_scale:
        settings, upscaler = check_hires(settings)
    if settings.ad_model:
        settings = check_detailer(settings)
    for path, what in ((settings.init_image, "init image"), (settings.mask, "mask")):
        if path:
            open_image(path, what)  # a missing or unreadable file fails before the model loads
    settings = inpaint_units_checked(settings, on_event)
    ip_adapters_checked(settings.ip_adapters, settings.allow_pickle)  # pictures, adapters, encoders: before loading
    unit_seed = numpy_seed(seed, settings.subseed)  # what A1111 seeds numpy with before each unit's preprocessor
    if controls is None:  # no face found: said before loading
        controls = prepare_controls(settings.controls, settings.allow_pickle, unit_seed)
    controls = [c.for_seed(unit_seed) for c in controls]  # a random map (shuffle) is this picture's seed's
    if settings.mask:  # a caller's inpaint_only units run as harmonious too (inpaint_units_checked)
        controls = [replace(c, ref=c.ref.model_copy(update={"type": "inpaint"}), control_type=get_control_type(
            "inpaint")) if c.control_type.name == "inpaint_only" else c for c in controls]
    # 2. load the model, LoRAs and embeddings (unless the caller holds a session)
    session = session or session_for(settings, on_event)
    size = default_size(settings.init_image) if settings.init_image else (session.native_size, session.native_size)
    width = settings.width or size[0]
    height = settings.height or size[1]
    latent_resize = settings.resize_mode == LATENT_RESIZE  # the init encoded at its own size, its latents resized
    init = open_image(settings.init_image, "init image", None if latent_resize else (width, height),
                      settings.resize_mode) if settings.init_image else None
    mask = load_mask(settings.mask, (width, height), settings.mask_blur, settings.mask_invert, settings.resize_mode) \
        if settings.mask else None
    region = original = full_mask = None
    if mask is not None and settings.inpaint_area == "masked":  # A1111's "Only masked": the region drawn alone
        original = open_image(settings.init_image, "init image")
        full_mask = load_mask(settings.mask, original.size, settings.mask_blur, settings.mask_invert)
        found = crop_region(full_mask, settings.masked_padding)
        if found is None:
            on_event(Message("the mask is blank, so the whole picture is drawn (A1111 does the same)", "warning"))
        else:
            region = fit_region(found, width, height, original.size)
            init, mask = cut_region(original, region, (width, height)), cut_region(full_mask, region, (width, height))
    # 3. the sampler, built on the model's own noise schedule, in a pipeline of this call's own
    scheduler = sampler.make(session.base_scheduler, k_tuning(settings))
    kept = init  # what the result keeps outside the mask; the masked part starts from "Masked content"
    if mask is not None and settings.masked_content != "original":
        init = fill_masked(init, mask)
        noised_start(scheduler, settings.masked_content, a1111_latent_mask(mask, session.pipe.vae_scale_factor,
                                                                           rounded=soft is None),
                     settings.noise_multiplier, settings.extra_noise)
    elif init is not None:
        noised_start(scheduler, multiplier=settings.noise_multiplier, extra=settings.extra_noise)
    pipe = session.pipeline(scheduler=scheduler)
    # 4. encode prompts: weighted, chunked by 75 tokens, clip skip; A1111's prompt editing ([a:b:0.5], [a|b]): each
    # text the schedule reaches encoded once, swapped in by the step callback; A1111's AND: each part on its own,
    # composed by hooks on the UNet during each pass (inference/composable.py)
    n = settings.batch_size
    prompts = scheduled_prompts(session.encoder, settings.prompt, settings.negative, settings.clip_skip,
                                sampler.prompt_steps(settings.steps), n, session.dtype, settings.emphasis,
                                settings.comma_backtrack)
    hires_prompts = scheduled_prompts(session.encoder, hires_text or settings.prompt,
                                      settings.hires_negative or settings.negative, settings.clip_skip,
                                      hires_sampler.prompt_steps(settings.hires_steps or settings.steps), n,
                                      session.dtype, settings.emphasis, settings.comma_backtrack)
    with torch.no_grad(), session.lora_weights(loras):  # every text encoded now, through this call's LoRA weights
        pairs = prompts.every_pair() + (hires_prompts.every_pair() if settings.hires_scale else [])
    for positive, negative in pairs:
        check_embeddings(positive.embeds)  # NaN from emphasis or an embedding file: said before any denoising
        check_embeddings(negative.embeds, "negative prompt")
    positive = prompts.pair(0)[0]
    if positive.chunks > 1:
        on_event(Message(f"prompt has {positive.tokens} tokens: encoded as {positive.chunks} chunks of 75 (not truncated)"))
    if prompts.changes:
        on_event(Message(f"prompt editing: {len(prompts.prompts)} prompt and {len(prompts.negatives)} negative "
                         f"prompt stage(s) over {settings.steps} steps"))
    if isinstance(prompts, ComposablePrompts):
        on_event(Message(f"composable diffusion (AND): {len(prompts.weights)} part(s) at weight(s) "
                         f"{', '.join(f'{w:g}' for w in prompts.weights)}"))
    padded = pads(prompts) or bool(settings.hires_scale and pads(hires_prompts))
    nets = unit_controlnets(session, [[c] for c in controls], settings.allow_pickle, on_event)
    results: list[GeneratedImage] = []
    stored = with_absolute_paths(settings, session)
    for batch in range(settings.batch_count):
        # A1111's all_seeds / all_subseeds: with a variation strength the seed stays and the variation seed counts up
        seeds = [seed if variation else (seed + batch * n + i) % SEEDS for i in range(n)]
        subseeds = [(settings.subseed + batch * n + i) % SEEDS for i in range(n)] if variation else [None] * n
        total = settings.steps

        def reporter(scheduled: ScheduledPrompts | ComposablePrompts, _batch=batch):
            def report(pipeline, step, timestep, kwargs):
                count = len(pipeline.scheduler.timesteps) or total
                on_event(Progress("denoise", step + 1, count, {"batch": _batch + 1, "batches": settings.batch_count}))
                return scheduled.after_step(pipeline, step, kwargs)
            return report

        # 5. denoise: one generator per image, so each seed reproduces alone (A1111's RNG source and ENSD); its
        # starting noise bent toward the variation seed's, drawn at another size, in each pass (hires fix too)
        def generators(_seeds=seeds, _subseeds=subseeds):
            if not (variation or resized):
                return image_generators(_seeds, settings.rng, settings.ensd)
            cell = pipe.vae_scale_factor
            drawn = (settings.seed_resize_from_h // cell, settings.seed_resize_from_w // cell) if resized else None
            return variation_generators(_seeds, _subseeds, settings.subseed_strength, settings.rng, settings.ensd,
                                        drawn)

        kwargs = dict(**prompts.call_kwargs(), num_inference_steps=settings.steps, guidance_scale=settings.cfg,
                      **({"eta": settings.eta_ddim} if settings.eta_ddim else {}),
                      generator=generators(), callback_on_step_end=reporter(prompts))
        scheduler.generators = kwargs["generator"]  # a k-sampler's churn draws before the pipeline hands them over
        # A1111's AND: the pass's UNet (and ControlNet) calls run every part of its prompt; the hires fix's two
        # passes each compose their own prompt
        first_pass = sampling_pass(prompts, session.pipe.unet, nets, settings, scheduler)
        with torch.no_grad(), session.lora_weights(loras) as used, model_patches(session, settings), \
                nan_guard(session.pipe, [f"{l.name} at {l.weight:g}" + (f" (UNet {l.unet_weight:g})" if l.unet_weight
                                                                        is not None else "")
                                         for l in used if l.weight or l.unet_weight]), \
                ip_adapted(session, settings.ip_adapters, n, settings.allow_pickle):
            start = latent_resized(pipe, init, (width, height), kwargs["generator"]) \
                if latent_resize and settings.strength else init  # what img2img starts from
            if init is not None and settings.strength == 0:  # nothing to redraw: the image as the VAE gives it
                images = [vae_roundtrip(pipe, init, (width, height))] * n
            elif controls and not settings.hires_scale:
                with first_pass:
                    images = control_denoise(session, settings, controls, start, mask, (width, height), kwargs,
                                             scheduler, on_event, soft)
            elif init is not None:
                redrawer = denoiser(session, init, mask, scheduler, soft)
                with first_pass:
                    steps = img2img_steps(scheduler, settings.steps, settings.strength, fixed=settings.img2img_fix_steps)
                    images = redrawer(image=start, **mask_kwargs(redrawer, mask, width, height),
                                      **{**kwargs, **steps}).images
            elif settings.hires_scale:
                images = draw_hires(session, settings, (width, height), pipe, scheduler, hires_sampler, kwargs,
                                    generators, upscaler, first_pass, hires_prompts, reporter(hires_prompts),
                                    controls, nets, lambda done, tiles, _b=batch: on_event(Progress(
                                        "upscale", done, tiles, {"batch": _b + 1, "batches": settings.batch_count})),
                                    on_event)
            else:
                with first_pass:
                    images = pipe(width=width, height=height, **kwargs).images
        images = restore_inpaint_only(images, settings, controls)
        # the original laid back over the drawing: where the mask is black (A1111's overlay), or with Soft inpainting
        # where the drawing barely changed the picture (none was drawn at strength 0)
        drawn = getattr(scheduler, "drawn", None) if soft else None
        overlays = overlay_masks(soft, scheduler.inpaint[1], scheduler.init_latent, drawn, (width, height)) \
            if drawn is not None else None
        if region is not None:
            images = [paste_back(original, image, region, uncropped(overlays[i], original.size, region)
                                 if overlays else full_mask) for i, image in enumerate(images)]
        elif mask is not None:
            images = [composite(kept, image, overlays[i] if overlays else overlay_mask(mask))
                      for i, image in enumerate(images)]
        if settings.ad_model:  # ADetailer's face fix on each picture; after inpainting the whole picture, only on
            within = open_image(settings.mask, "mask", (width, height), settings.resize_mode) \
                if mask is not None and region is None else None  # only the faces it hits
            with torch.no_grad(), session.lora_weights(loras), nan_guard(session.pipe), \
                    model_patches(session, settings):
                images = [detail_faces(session, settings, image, s, sampler, (width, height), on_event,
                                       batch * n + i + 1, within) for i, (image, s) in enumerate(zip(images, seeds))]
        # 6. settings that reproduce each image on its own
        for image, s, sub in zip(images, seeds, subseeds):
            own = {"seed": s, **({"subseed": sub} if variation else {})}
            one = stored.model_copy(update={**own, "batch_size": 1, "batch_count": 1, "width": width, "height": height})
            shown = settings.model_copy(update={"subseed": sub}) if variation else settings
            results.append(GeneratedImage(image, s, infotext(shown, session, s, width, height, used, embeddings,
                                                             padded), one))
    return results
