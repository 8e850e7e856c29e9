"""The hires fix inside a txt2img call (A1111's "Hires. fix"): its checks, its prompt, and its two sampling passes
with what each pass carries: AND composition, NGMS / Skip Early CFG, and the ControlNet units each unit's
"Hires-Fix Option" names (the redraw's maps fitted to its size, as sd-webui-controlnet fits them). The resize and
upscale arithmetic is in inference/hires.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext

from personae.config.generate import GenerateSettings
from personae.errors import UserError
from personae.events import EventHandler
from personae.inference.composable import composing
from personae.inference.controlnet import PreparedControl, control_call
from personae.inference.dynamic_thresholding import DynamicThresholding, thresholded
from personae.inference.hires import hires_fix, redrawn_size
from personae.inference.img2img import denoiser, noised_start
from personae.inference.ip_adapter import ip_window
from personae.inference.ksampler import KDiffusionScheduler
from personae.inference.samplers import Sampler, get_sampler, k_tuning
from personae.inference.session import Session
from personae.inference.skip_uncond import skipping_uncond
from personae.inference.speedups import offload_beside
from personae.inference.token_merging import token_merged
from personae.models.lora_dir import lora_tags
from personae.models.upscalers import UpscalerNet, read_upscaler, resolve_upscaler


def hires_prompt_text(settings: GenerateSettings) -> str:
    """--hires-prompt without its <lora:...> tags, which must be the prompt's own (the LoRAs apply to both passes)."""
    text, tags = lora_tags(settings.hires_prompt)
    if tags and {(t.name, t.weight) for t in tags} != {(t.name, t.weight) for t in lora_tags(settings.prompt)[1]}:
        raise UserError("--hires-prompt has LoRA tags other than the prompt's; personae applies one set of LoRAs to "
                        "both passes.", "Give the hires prompt the prompt's tags, or none.")
    return text


def check_hires(settings: GenerateSettings) -> tuple[GenerateSettings, UpscalerNet | None]:
    """The hires fix is a txt2img second pass (as in A1111): not with img2img, and with a step to run. Returns the
    settings with a model upscaler's name resolved to its file, and that upscaler read (else None)."""
    if settings.init_image:
        raise UserError("--hires-scale cannot be combined with --init-image: the hires fix redraws a txt2img picture.",
                        "Leave out --hires-scale, or run img2img on the picture yourself with a larger "
                        "--width / --height.")
    steps = settings.hires_steps or settings.steps
    k_diffusion = get_sampler(settings.hires_sampler or settings.sampler).scheduler is KDiffusionScheduler
    if int(steps * settings.hires_denoise) < 1 and not k_diffusion:  # A1111's k-diffusion redraw runs every step
        raise UserError(f"--hires-denoise {settings.hires_denoise:g} with {steps} hires steps leaves no step of the "
                        "redraw (it runs steps x denoise, rounded down).",
                        "Raise --hires-denoise (0.3-0.7 is usual) or --hires-steps.")
    if settings.hires_upscaler in ("latent", "image"):
        return settings, None
    path = resolve_upscaler(settings.hires_upscaler, settings.upscaler_dir)
    net = read_upscaler(path, settings.allow_pickle)  # a wrong or missing file fails before the model loads
    return settings.model_copy(update={"hires_upscaler": str(path)}), net


@contextmanager
def within(*managers) -> Iterator[None]:
    """Every one of `managers` entered, in order, for the block."""
    with ExitStack() as stack:
        for manager in managers:
            stack.enter_context(manager)
        yield


@contextmanager
def sampling_pass(prompts, unet, nets, settings: GenerateSettings, scheduler, merging: float | None = None,
                  cfg: float | None = None, images: int | None = None) -> Iterator[None]:
    """One sampling pass's UNet (and ControlNet) calls, drawing `images` pictures (default: --batch-size) at `cfg`
    (default: --cfg): AND composed, a prompt and a negative prompt of different lengths drawn as --pad-conds says,
    the negative prompt left out where NGMS / Skip Early CFG say so, tokens merged at `merging` (default:
    --token-merging), the guidance thresholded where --dynamic-thresholding says (after AND's composition), the
    IP-Adapter units acting inside their guidance windows."""
    images = settings.batch_size if images is None else images
    with composing(prompts, unet, nets, settings.pad_conds), \
            skipping_uncond(unet, scheduler, settings, images, nets), \
            token_merged(unet, settings.token_merging if merging is None else merging), \
            thresholded(unet, scheduler, DynamicThresholding.of(settings), settings.cfg if cfg is None else cfg,
                        images), \
            ip_window(unet, scheduler):
        yield


def draw_hires(session: Session, settings: GenerateSettings, size: tuple[int, int], pipe, scheduler,
               hires_sampler: Sampler, kwargs: dict, generators: Callable, upscaler: UpscalerNet | None, first_pass,
               hires_prompts, report: Callable, controls: list[PreparedControl], nets: list,
               on_upscale: Callable[[int, int], None], on_event: EventHandler) -> list:
    """One batch's pictures through both passes: `pipe` with `kwargs` (in `first_pass`) at `size`, upscaled, then
    redrawn with `hires_prompts` (its steps reported to `report`). Each ControlNet unit controls the passes its
    Hires-Fix Option names; the redraw's maps are the first pass's fitted to the redraw's size."""
    width, height = size
    n = settings.batch_size
    redraw_scheduler = hires_sampler.make(session.base_scheduler, k_tuning(settings))
    noised_start(redraw_scheduler, extra=settings.extra_noise)  # A1111's "Extra noise" reaches the redraw too
    low = [c for c in controls if c.ref.hr_option != "High res only"]
    high = [c for c in controls if c.ref.hr_option != "Low res only"]
    base, base_args, base_units = control_call(session, settings, low, size, scheduler, n, on_event=on_event) \
        if low else (pipe, {}, nullcontext())
    redraw, redraw_args, redraw_units = control_call(
        session, settings, high, redrawn_size(settings, width, height), redraw_scheduler, n, img2img=True,
        made_for=size, on_event=on_event) if high else (denoiser(session, None, None, redraw_scheduler), {},
                                                        nullcontext())
    if upscaler is not None and not offload_beside(upscaler.net, session.pipe.vae, session.runtime, session.device):
        upscaler.net.to(session.device)
    redraw_pass = sampling_pass(hires_prompts, session.pipe.unet, [nets[controls.index(c)] for c in high], settings,
                                redraw_scheduler, settings.hires_token_merging or settings.token_merging,
                                settings.cfg if settings.hires_cfg is None else settings.hires_cfg)
    return hires_fix(base, redraw, settings, size, kwargs, generators, upscaler,
                     {**hires_prompts.call_kwargs(), "callback_on_step_end": report,
                      **({"guidance_scale": settings.hires_cfg} if settings.hires_cfg is not None else {}),
                      **redraw_args},
                     on_upscale, passes=(within(first_pass, base_units), within(redraw_pass, redraw_units)),
                     base_kwargs=base_args)
