"""AnimateDiff clips on the loaded model: diffusers' AnimateDiffPipeline with our prompts, samplers and add-ons.

    clip = animate(AnimateSettings(model="./tiny", motion_adapter="./tiny-motion", prompt="a cat", steps=4))

- The motion UNet is built from the session's UNet and the motion adapter; LoRAs loaded
  on the session (peft adapters) are carried over with their weights, embeddings and
  text-encoder LoRAs act through the shared tokenizer and text encoder.
- Prompts go through our encoder (A1111 weights, any length, clip skip), samplers by
  their A1111 names with A1111's sampler parameters (eta, churn, schedule), seeds on a CPU
  generator as in txt2img.
- Clips longer than the motion module's context run as overlapping windows (FreeNoise),
  so frame 17 of a 32-frame clip continues frame 16 instead of starting a second clip.
- `motion_scale` multiplies what each motion module adds to its input: 0 gives frames
  drawn independently by the image model, 1 the motion as trained.
- An adapter folder holding a motion condition (inference/motion_condition.py, personae's
  own file) gets it attached: the motion the prompt's words name, as a track across the frames.
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
from dataclasses import dataclass, field
from functools import cached_property

import torch
from PIL import Image

from personae import __version__
from personae.config.animate import AnimateSettings
from personae.config.sampling import RuntimeSettings
from personae.data.control.shuffle import numpy_seed
from personae.data.dynamic_prompts import image_prompts, is_template
from personae.errors import UserError
from personae.events import EventHandler, Message, Progress, ignore
from personae.inference.animate_control import clip_control_call, clip_frames, is_one_picture, prepare_clip_controls
from personae.inference.composable import composable_parts
from personae.inference.controlnet import control_infotext
from personae.inference.freeinit import free_init_passes, last_alphabar
from personae.inference.img2img import open_image
from personae.inference.ksampler import img2img_steps
from personae.inference.nans import nan_guard
from personae.inference.picture_start import start_from_picture, weights
from personae.inference.prompt import with_styles
from personae.inference.prompt_schedule import prompt_schedule
from personae.inference.prompt_travel import frame_conditionings, frame_conditions, read_travel
from personae.inference.samplers import get_sampler, k_tuning, schedule_said, uniform_said
from personae.inference.session import Session, open_session
from personae.inference.speedups import keep_unet_attention, place_pipeline, rebuilt_while_streamed
from personae.media.png import format_parameters, infotext_values
from personae.models.addons import hashes_text
from personae.models.embedding_dir import expand_embedding_names
from personae.models.layer_patches import copy_patches
from personae.models.lora_dir import expand_lora_tags, lora_tags
from personae.models.motion import (
    MotionSource,
    is_motion_lora,
    load_motion_adapter,
    load_motion_loras,
    resolve_motion_adapter,
)

# AnimateDiff's motion modules were trained on the linear beta schedule (not SD's scaled_linear) with
# DDIM-style "linspace" timesteps and no sample clipping; samplers are built on that schedule.
MOTION_SCHEDULE = {"beta_schedule": "linear", "clip_sample": False, "timestep_spacing": "linspace", "steps_offset": 1}


@dataclass
class Clip:
    frames: list[Image.Image]
    seed: int
    parameters: str  # A1111-style infotext plus Frames, FPS, Motion module, Motion scale
    settings: AnimateSettings  # settings that reproduce this clip (its seed and size filled in)

    def settings_json(self) -> str:
        return json.dumps(self.settings.model_dump(), ensure_ascii=False)


def _own_embeds(free_noise_self, prompt, num_frames, device, num_videos_per_prompt, do_classifier_free_guidance,
                negative_prompt=None, prompt_embeds=None, negative_prompt_embeds=None, lora_scale=None,
                clip_skip=None):
    """FreeNoise's prompt encoding for our embeddings: diffusers' FreeNoise path encodes prompts itself and refuses
    `prompt_embeds`; ours carry A1111 weights, 75-token chunks and clip skip, so they are repeated per frame exactly
    as the plain path does (negative frames first, then positive)."""
    positive = prompt_embeds.to(device).repeat_interleave(num_frames, dim=0)
    if not do_classifier_free_guidance:
        return positive, None
    negative = negative_prompt_embeds.to(device).repeat_interleave(num_frames, dim=0)
    return torch.cat([negative, positive]), negative


def _pipeline_class(control: bool = False, video: bool = False):
    """diffusers' AnimateDiff pipeline (its ControlNet one for `control`, its video-to-video one for `video`) whose
    FreeNoise path takes our embeddings."""
    import diffusers

    name = "AnimateDiff" + ("VideoToVideo" if video else "") + ("ControlNet" if control else "") + "Pipeline"
    base = getattr(diffusers, name)
    return type(f"Windowed{base.__name__}", (base,), {"_encode_prompt_free_noise": _own_embeds})


def motion_unet(unet, adapter, lora_weights: dict[str, float] | None = None, share: bool = False):
    """A UNetMotionModel from the session's UNet (LoRA adapters and their weights included) plus the motion modules.

    diffusers' `UNetMotionModel.from_unet2d` copies the UNet block by block and fails on a UNet
    that carries peft LoRA layers (their weights appear as extra keys). So the motion UNet gets
    the same adapters first, then the whole state dict (same key names for every image layer).
    `share`: the model is built empty and holds the UNet's and the adapter's own tensors instead of copies (no
    second UNet in memory, not even while it is built; for sampling only, where nothing changes a weight in place).
    """
    from accelerate import init_empty_weights
    from diffusers import UNetMotionModel

    with init_empty_weights() if share else contextlib.nullcontext():  # the weights wait on the meta device
        model = UNetMotionModel.from_unet2d(unet, adapter, load_weights=False)
    lora_configs = dict(getattr(unet, "peft_config", {}) or {})
    for name, config in lora_configs.items():
        model.add_adapter(_only_wrapped_modules(unet, name, config), adapter_name=name)
    missing, unexpected = model.load_state_dict(unet.state_dict(), strict=False, assign=share)
    not_motion = [k for k in missing if ".motion_modules." not in k]
    if unexpected or not_motion:
        raise RuntimeError(f"UNet -> motion UNet: unexpected {unexpected[:3]}, missing {not_motion[:3]}")
    try:
        _load_motion_modules(model, adapter, assign=share)
    except RuntimeError as exc:  # same block layout, other channel counts
        raise ValueError("its motion modules do not match the UNet's channels (" + str(exc).splitlines()[0] + ")") from None
    empty = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if empty:
        raise RuntimeError(f"UNet -> motion UNet: no weights for {empty[:3]}")
    if lora_configs:  # the same adapters active at the same weights as on the session's UNet
        names = list(lora_configs)
        weights = [(lora_weights or {}).get(name, 1.0) for name in names]
        model.set_adapters(names, weights)
    copy_patches(unet, model)  # a LoRA's changes beside its layers (norms, OFT, ...): the state dict has none
    return model.to(device=unet.device, dtype=unet.dtype)


def _load_motion_modules(model, adapter, assign: bool = False) -> None:
    """diffusers' `load_motion_modules`, block by block; `assign`: the adapter's own tensors rather than copies."""
    pairs = [*zip(model.down_blocks, adapter.down_blocks), *zip(model.up_blocks, adapter.up_blocks)]
    if hasattr(model.mid_block, "motion_modules"):  # v1 adapters have no mid-block module
        pairs.append((model.mid_block, adapter.mid_block))
    for ours, theirs in pairs:
        ours.motion_modules.load_state_dict(theirs.motion_modules.state_dict(), assign=assign)


def _only_wrapped_modules(unet, adapter_name: str, config):
    """The adapter's config targeting exactly the modules it wraps in `unet`, by full name.

    A LoRA's config often targets short names ("to_q"), which would also match the motion
    modules' attention layers; a LoRA trained on the image UNet has no weights for those.
    """
    from peft.tuners.lora import LoraLayer

    config = copy.deepcopy(config)
    config.target_modules = sorted(name for name, module in unet.named_modules()
                                   if isinstance(module, LoraLayer) and adapter_name in module.scaling)
    return config


class MotionScale:
    """A forward hook on each motion module's output projection: what the module adds is multiplied by `value`."""

    def __init__(self, unet):
        from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

        self.value = 1.0
        for module in unet.modules():
            if isinstance(module, AnimateDiffTransformer3D):
                module.proj_out.register_forward_hook(self._scale)

    def _scale(self, module, args, output):
        return output if self.value == 1.0 else output * self.value


def config_only(adapter):
    """The motion adapter as the pipeline keeps it once its modules are in the motion UNet: its config (diffusers'
    FreeNoise reads the context length there) without its weights, which would be a second copy of the motion
    modules in memory, and on the GPU with the pipeline."""
    empty = copy.copy(adapter)  # a new instance sharing the config; the module tables below are its own
    empty._modules, empty._parameters, empty._buffers = {}, {}, {}
    first = next(adapter.parameters())  # an empty tensor keeps its dtype and device, which pipelines ask of it
    empty.register_buffer("placed", torch.empty(0, dtype=first.dtype, device=first.device), persistent=False)
    return empty


@dataclass
class AnimateSession:
    """A session plus its AnimateDiff pipeline (the motion UNet is built once per adapter)."""

    session: Session
    pipe: object  # WindowedAnimateDiffPipeline sharing the session's VAE, text encoder and tokenizer
    motion: MotionSource
    motion_scale: MotionScale
    context_limit: int = field(default=32)  # positions in the adapter's table
    condition: object = None  # the adapter folder's MotionCondition, attached to the motion UNet, or None
    motion_loras: list = field(default_factory=list)  # LoadedLora of the MotionLoRAs on the motion UNet
    attention: str = "sdpa"  # the runtime's attention, set again where FreeNoise rebuilds the motion modules' blocks

    @property
    def loras(self) -> list:
        """Every LoRA of the clip: the image model's, then the motion UNet's (as A1111 lists them in the prompt)."""
        return [*self.session.loras, *self.motion_loras]

    @cached_property
    def motion_hash(self) -> str | None:
        """Like A1111's "Model hash": sha256 of the file, first 10 hex digits (hashed once: real modules are 1.7 GB)."""
        from pathlib import Path

        from personae.models.addons import file_sha256

        return file_sha256(Path(self.motion.location))[:10] if self.motion.kind == "single_file" else None


def open_animate_session(session: Session, adapter, motion: MotionSource, motion_loras: list[tuple] = (),
                         allow_pickle: bool = False, runtime: RuntimeSettings | None = None) -> AnimateSession:
    """Build the AnimateDiff pipeline on a loaded session and a loaded MotionAdapter; `motion_loras` ((path,
    weight) pairs) load on its motion UNet. The pipeline gets `runtime`'s switches and goes to the session's device
    (or is offloaded to it); a session opened with `place=False` stays in main memory, where its image UNet shares
    its tensors with the motion UNet, so the model is not held twice."""
    base = session.pipe
    adapter = adapter.to(device=base.unet.device, dtype=session.dtype)
    unet_weights = {l.adapter: l.weight if l.unet_weight is None else l.unet_weight for l in session.loras}
    try:
        unet = motion_unet(base.unet, adapter, unet_weights, share=True)
    except ValueError as exc:  # from_unet2d: block counts or layers per block differ
        raise UserError(f"The motion adapter {motion.location} does not fit the model {session.source.name}: {exc}.",
                        "Use a motion adapter made for this model family (Stable Diffusion 1.x adapters for SD-1.x models).") from None
    pipe = _pipeline_class()(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=unet,
                             motion_adapter=config_only(adapter), scheduler=base.scheduler)
    pipe.set_progress_bar_config(disable=True)
    loaded = load_motion_loras(pipe, list(motion_loras), unet_weights, allow_pickle)
    condition = _condition(unet, base.tokenizer, motion)
    runtime = runtime or RuntimeSettings()
    place_pipeline(pipe, runtime, session.device, session.dtype)  # attention, memory order, compile: the motion UNet's
    if condition is not None:  # not a pipeline module: it goes where the UNet runs
        condition.to(session.device)
    return AnimateSession(session, pipe, motion, MotionScale(unet), int(adapter.config.motion_max_seq_length),
                          condition, loaded, runtime.attention)


def _condition(unet, tokenizer, motion: MotionSource):
    """The motion condition in the adapter's folder, attached to the motion UNet; None when there is none."""
    from pathlib import Path

    from personae.inference.motion_condition import CONDITION_FILE, MotionCondition

    path = Path(motion.location) / CONDITION_FILE
    if motion.kind != "folder" or not path.is_file():
        return None
    try:
        condition = MotionCondition.load(path, unet, tokenizer)
    except ValueError as exc:
        raise UserError(f"The motion condition {path} does not fit its adapter and model: {exc}.",
                        f"Move {CONDITION_FILE} out of the adapter's folder to animate without it.") from None
    condition.attach(unet)
    return condition


def check_context(settings: AnimateSettings, limit: int, adapter_name: str) -> None:
    if settings.context > limit:
        raise UserError(f"context {settings.context} is more than the {limit} frame positions the motion adapter "
                        f"{adapter_name} knows.", f"Use a context of at most {limit} (16 suits AnimateDiff v1-v3).")


def use_context_windows(pipe, frames: int, context: int, stride: int) -> bool:
    """FreeNoise windows when the clip is longer than the context, the plain path otherwise (the blocks diffusers
    rebuilds for either keep --lowvram's streaming: speedups.rebuilt_while_streamed)."""
    from diffusers.models.attention import BasicTransformerBlock, FreeNoiseTransformerBlock

    # diffusers' disable_free_noise assumes a mid-block motion module (v1 adapters have none): only blocks that have
    # them are touched
    motion = [block for block in [*pipe.unet.down_blocks, pipe.unet.mid_block, *pipe.unet.up_blocks]
              if hasattr(block, "motion_modules")]

    def rebuilt(becomes: type):
        return rebuilt_while_streamed([(m.transformer_blocks, i) for block in motion for m in block.motion_modules
                                       for i, b in enumerate(m.transformer_blocks) if not isinstance(b, becomes)])

    if frames > context:
        with rebuilt(FreeNoiseTransformerBlock):
            pipe.enable_free_noise(context_length=context, context_stride=stride)
        return True
    if pipe.free_noise_enabled:
        with rebuilt(BasicTransformerBlock):
            for block in motion:
                pipe._disable_free_noise_in_block(block)
        pipe._free_noise_context_length = None
    return False


def clip_infotext(settings: AnimateSettings, animate_session: AnimateSession, seed: int, width: int, height: int) -> str:
    session = animate_session.session
    sampler = get_sampler(settings.sampler)
    params = {  # the settings that declare an A1111 name, then what this run resolved (as txt2img's infotext)
        **infotext_values(settings), **uniform_said(settings.sampler),
        **schedule_said(session.base_scheduler),
        **sampler.eta_said(settings.eta, settings.eta_ddim),
        **sampler.sigmas_said(settings.sigma_churn, settings.sigma_tmin, settings.sigma_tmax, settings.sigma_noise),
        **({"Emphasis": settings.emphasis} if settings.emphasis != "Original" else {}),
        "Seed": seed,
        "Size": f"{width}x{height}", "Model hash": session.model_hash, "Model": session.source.name,
        "VAE hash": session.vae_hash, "VAE": session.vae_name,
        "Lora hashes": hashes_text({l.name: l.hash for l in animate_session.loras}),
        "TI hashes": hashes_text({e.token: e.hash for e in session.embeddings}),
        "Motion module": animate_session.motion.name, "Motion module hash": animate_session.motion_hash,
        "Context": f"{settings.context}/{settings.context_stride}" if settings.frames > settings.context else None,
        **control_infotext(settings, session),
        "Version": f"personae {__version__}",
    }
    if not (settings.init_image and is_one_picture(settings.init_image)):  # the fade is a clip from one picture's
        for key in ("Latent power", "Latent scale"):
            params.pop(key, None)
    prompt = settings.prompt + "".join(f" {l.tag}" for l in animate_session.loras)
    return format_parameters(prompt, settings.negative, params)


def held_lora_tags(settings: AnimateSettings, session) -> AnimateSettings:
    """A caller holding an animate session: the prompt's <lora:name:w> tags come out of the prompt. The session's
    motion UNet was built with its LoRAs at their weights, so a tag may only name one of them at that weight."""
    prompt, tags = lora_tags(settings.prompt)
    if not tags:
        return settings
    loaded = {l.name: l for l in session.loras}
    for tag in tags:
        if tag.name not in loaded:
            raise UserError(f"The prompt asks for the LoRA {tag.text}, which is not among the LoRAs loaded for this "
                            f"clip ({', '.join(loaded) or 'none'}).", "Add the file to the clip's LoRAs (--lora), "
                            "or take the tag out of the prompt.")
        have = loaded[tag.name]
        unet = (tag.weight if tag.unet_weight is None else tag.unet_weight,
                have.weight if have.unet_weight is None else have.unet_weight)
        if abs(tag.weight - have.weight) > 1e-6 or abs(unet[0] - unet[1]) > 1e-6:
            asked = f"{tag.weight:g}" + ("" if tag.unet_weight is None else f":{tag.unet_weight:g}")
            raise UserError(f"The prompt asks for the LoRA {tag.text}, but it is loaded as {have.tag} for these clips "
                            "(a clip's LoRA weights are fixed when its motion model is built).",
                            f"Write {have.tag}, or start a new run with --lora FILE:{asked}.")
    return settings.model_copy(update={"prompt": prompt})


def open_for(settings: AnimateSettings, on_event: EventHandler = ignore) -> AnimateSession:
    """Load the motion adapter named in `settings` (first: it is the smaller download), then the model and add-ons."""
    motion = resolve_motion_adapter(settings.motion_adapter, settings.allow_pickle)
    on_event(Message(f"loading motion adapter {motion.location}"))
    adapter = load_motion_adapter(motion)
    check_context(settings, int(adapter.config.motion_max_seq_length), motion.name)
    # a MotionLoRA (its keys name motion modules) loads on the motion UNet, any other LoRA on the image model
    moving = [is_motion_lora(l.path, settings.allow_pickle) for l in settings.loras]
    for lora, is_motion in zip(settings.loras, moving):
        if is_motion and lora.unet_weight is not None and lora.unet_weight != lora.weight:
            raise UserError(f"--lora {lora.path}:{lora.weight:g}:{lora.unet_weight:g} gives a motion LoRA two weights, "
                            "but it has no text-encoder part.",
                            f"Give it one weight: --lora {lora.path}:{lora.weight:g}.")
    session = open_session(settings.model, settings.device, settings.dtype, settings.allow_pickle,
                           loras=[(l.path, l.weight, l.unet_weight) for l, m in zip(settings.loras, moving) if not m],
                           embeddings=[(e.path, e.token) for e in settings.embeddings], on_event=on_event,
                           vae=settings.vae, runtime=settings, place=False)  # the motion pipeline is placed
    return open_animate_session(session, adapter, motion, [(l.path, l.weight) for l, m in zip(settings.loras, moving)
                                                           if m], settings.allow_pickle, settings)


def animate(settings: AnimateSettings, animate_session: AnimateSession | None = None,
            on_event: EventHandler = ignore) -> Clip:
    # 1. check inputs and fix the seed
    sampler = get_sampler(settings.sampler)
    settings = with_styles(settings)
    seed = settings.seed if settings.seed >= 0 else random.randrange(2**32)
    if is_template(settings.prompt) or is_template(settings.negative):  # Dynamic Prompts: drawn from the seed
        [(prompt, negative)] = image_prompts(settings.prompt, settings.negative, [seed], settings.wildcards_dir)
        on_event(Message(f"Dynamic Prompts: the clip's prompt is \"{prompt}\""))
        settings = settings.model_copy(update={"prompt": prompt, "negative": negative})
    if animate_session is None:
        settings = expand_embedding_names(expand_lora_tags(settings))  # <lora:name:w> tags, embeddings by name
    else:
        settings = held_lora_tags(settings, animate_session)  # never passed on to the text encoder
    for text, flag in ((settings.prompt, "--prompt"), (settings.negative, "--negative")):
        if len(prompt_schedule(text, settings.steps)) > 1:  # read as words, the brackets would be drawn
            raise UserError(f"{flag} uses A1111's prompt editing ([from:to:when] or [a|b]), which `personae generate` "
                            "applies and animate does not: every frame is drawn with one prompt here.",
                            "Write the prompt without it, or make the stills with `personae generate`.")
    travel = read_travel(settings.prompt, settings.frames)  # prompt travel: "frame: prompt" lines
    # ControlNet units: their control frames read and mapped now, before any model loads; and the clip to start from
    controls = prepare_clip_controls(settings.controls, settings.frames, settings.allow_pickle, numpy_seed(seed))
    init = clip_frames(settings.init_image, settings.frames, "init clip") if settings.init_image else None
    one_picture = bool(settings.init_image) and is_one_picture(settings.init_image)  # A1111's img2gif
    if settings.last_frame:
        if not one_picture:
            raise UserError(f"--last-frame {settings.last_frame} is the picture a clip from one picture ends at, but "
                            f"--init-image {settings.init_image} is not one picture.",
                            "Give --init-image one picture, or leave out --last-frame.")
        init = [*init[:-1], open_image(settings.last_frame, "last frame")]
    if composable_parts(settings.prompt) is not None:  # read as words, AND and the weight would be drawn
        raise UserError("--prompt uses A1111's AND or ends in a weight (:0.5), composable diffusion, which `personae "
                        "generate` applies and animate does not: the motion UNet runs every frame with one prompt.",
                        "Write the prompt as one part without a trailing weight, or make the stills with `personae "
                        "generate`.")
    # 2. load the model, add-ons and motion adapter (unless the caller holds them)
    animate_session = animate_session or open_for(settings, on_event)
    session, pipe = animate_session.session, animate_session.pipe
    check_context(settings, animate_session.context_limit, animate_session.motion.name)
    width = settings.width or session.native_size
    height = settings.height or session.native_size
    # 3. the sampler, on the schedule the motion modules were trained with, with A1111's sampler parameters
    scheduler = sampler.make(session.base_scheduler, k_tuning(settings), MOTION_SCHEDULE)
    if settings.freeinit and last_alphabar(scheduler) < 1e-6:  # diffused to the last step, nothing of a pass is left
        raise UserError("FreeInit starts each pass from the last one diffused to the last training step, where this "
                        "clip's Zero Terminal SNR noise schedule keeps nothing of it: every pass would draw the first "
                        "one again.", "Leave out --freeinit for this model (its schedule already starts sampling "
                        "from what training started from).")
    # 4. encode prompts: weighted (A1111's emphasis mode), chunked by 75 tokens (at a comma within the word wrap
    # limit), clip skip
    # (a travelling prompt: each keyframe's prompt, all of one length)
    texts = travel.prompts if travel else [settings.prompt]
    *encoded, negative = session.encoder.encode_alike([*texts, settings.negative], settings.clip_skip,
                                                      settings.emphasis, settings.comma_backtrack)
    positive = encoded[0]
    if positive.chunks > 1:
        on_event(Message(f"prompt has {max(e.tokens for e in encoded)} tokens: encoded as {positive.chunks} chunks "
                         "of 75 (not truncated)"))
    frame_conds = None
    if travel:
        frame_conds = frame_conditionings({frame: e.embeds for (frame, _), e in zip(travel.keyframes, encoded)},
                                          settings.frames)
        on_event(Message(f"prompt travel: keyframes at frames {', '.join(str(f) for f, _ in travel.keyframes)}"))
    # 5. motion: strength, the motion the prompt names (an adapter with a condition)
    animate_session.motion_scale.value = settings.motion_scale
    if animate_session.condition is not None:
        with torch.no_grad():
            animate_session.condition.given = animate_session.condition.read(pipe.tokenizer, [settings.prompt])

    passes = settings.freeinit_iters if settings.freeinit else 1

    def report_pass(index: int):  # the calls each pass makes (img2img: the last of the schedule), FreeInit's in turn
        def report(pipeline, step, timestep, kwargs):
            calls = getattr(pipeline, "_num_timesteps", None) or settings.steps
            on_event(Progress("denoise", index * calls + step + 1, passes * calls))
            return kwargs
        return report

    # 6. the pipeline: the motion pipeline with this call's scheduler (the session's is back afterwards; it keeps
    # its FreeNoise state across calls, so it is lent rather than rebuilt), or with ControlNet units or a clip to
    # start from diffusers' pipeline for that on the same modules; overlapping windows for clips longer than the
    # context
    control, unit_hooks, conditioned = {}, contextlib.nullcontext, [pipe.unet]
    previous, other = pipe.scheduler, bool(controls or init)
    if other:
        use_context_windows(pipe, 1, settings.context, settings.context_stride)  # the UNet's blocks back to plain
        cls = _pipeline_class(control=bool(controls), video=init is not None)
        if controls:
            pipe, control, unit_hooks, nets = clip_control_call(animate_session, settings, controls, (width, height),
                                                                scheduler, cls, on_event)
            conditioned += nets
        else:
            pipe = cls(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
                       motion_adapter=pipe.motion_adapter, scheduler=scheduler)
            pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = scheduler
    if init is None:
        steps = {"num_frames": settings.frames, "num_inference_steps": settings.steps}
    else:  # A1111's img2img steps: the last int(strength x steps) + 1 of the schedule for a k-diffusion sampler
        steps = {"video": init, **img2img_steps(scheduler, settings.steps, settings.strength)}
    windows = use_context_windows(pipe, settings.frames, settings.context, settings.context_stride)
    keep_unet_attention(pipe.unet, animate_session.attention)  # rebuilt blocks have diffusers' default
    if windows:
        on_event(Message(f"{settings.frames} frames: motion in overlapping windows of {settings.context} "
                         f"(stride {settings.context_stride})"))
    # 7. denoise all frames together
    generator = torch.Generator("cpu").manual_seed(seed)
    scheduler.generators = generator  # a k-sampler's churn draws from the clip's generator before the pipeline does
    if one_picture:  # each frame starts from a share of the picture (and of the last frame), the rest noise
        last = (settings.latent_power_last, settings.latent_scale_last) if settings.last_frame else None
        start_from_picture(scheduler, *weights(settings.frames, settings.latent_power, settings.latent_scale, last),
                           generator)
    guided = settings.cfg > 1  # the pipeline's classifier-free guidance: negative rows before the prompt's
    call = {"prompt_embeds": positive.embeds.to(session.dtype),
            "negative_prompt_embeds": negative.embeds.to(session.dtype), **steps, "width": width, "height": height,
            "guidance_scale": settings.cfg, **({"eta": settings.eta_ddim} if settings.eta_ddim else {}), **control,
            "generator": generator}

    def run_pass(index: int, output_type: str):
        with unit_hooks():  # A1111's guidance windows count the steps of one pass
            return pipe(**call, callback_on_step_end=report_pass(index), output_type=output_type)

    try:
        with torch.no_grad(), frame_conditions(conditioned, frame_conds, negative.embeds if guided else None), \
                nan_guard(pipe, [l.tag for l in animate_session.loras]):  # never a clip of black frames
            if settings.freeinit:  # A1111's AnimateDiff FreeInit: passes, each from the last one's low frequencies
                on_event(Message(f"FreeInit: {passes} passes ({settings.freeinit_filter}, d_s "
                                 f"{settings.freeinit_ds:g}, d_t {settings.freeinit_dt:g})"))
                out = free_init_passes(pipe, scheduler, passes, settings.freeinit_filter, settings.freeinit_ds,
                                       settings.freeinit_dt, init is not None, run_pass)
            else:
                out = run_pass(0, "pil")
    finally:
        if other:  # the blocks back to plain, for the motion pipeline's next call
            use_context_windows(pipe, 1, settings.context, settings.context_stride)
        animate_session.pipe.scheduler = previous
    frames = list(out.frames[0])
    # 8. settings that reproduce this clip
    exact = settings.model_copy(update={"seed": seed, "width": width, "height": height})
    return Clip(frames, seed, clip_infotext(settings, animate_session, seed, width, height), exact)
