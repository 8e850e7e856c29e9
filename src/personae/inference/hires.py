"""A1111's hires fix: draw at the base size, upscale, then redraw the upscaled picture with img2img.

    --hires-scale 2 --hires-denoise 0.5 --hires-upscaler latent      # "Hires upscale: 2", "Denoising strength: 0.5"
    --hires-scale 2 --hires-upscaler ~/webui/models/ESRGAN/4x-UltraSharp.pth --allow-pickle
    --hires-resize 1024x1024                                          # "Hires resize: 1024x1024"

The base pass gives latents; the upscale is either of the latents themselves (A1111's "Latent": bilinear
interpolation, then the redraw needs a denoise of about 0.5 or more to clean it up) or of the decoded picture
(A1111's "Lanczos": PIL Lanczos; or a model upscaler, an ESRGAN-family network run as A1111 runs it,
models/upscalers.py), then re-encoded by the img2img pipeline. The redraw is diffusers'
img2img pipeline on the session's modules at `hires_denoise`, `hires_steps` (0: the base steps) long, with
a fresh scheduler of the same sampler and fresh generators from the same seeds, so each image reproduces alone.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from PIL import Image

from personae.inference.ksampler import img2img_steps
from personae.models.upscalers import UpscalerNet, a1111_name, upscale_picture

# A1111's "Hires upscaler" names <-> ours: what A1111 writes, and how its names read back
A1111_UPSCALER = {"latent": "Latent", "image": "Lanczos"}
_RESIZERS = ("lanczos", "image", "nearest", "none")  # A1111's upscalers that only resize the picture


def upscaler_to_a1111(upscaler: str) -> str:
    """What A1111 writes for --hires-upscaler: Latent, Lanczos, or the model upscaler's name (its file's stem)."""
    return A1111_UPSCALER.get(upscaler) or a1111_name(upscaler)


def upscaler_from_a1111(name: str) -> tuple[str, bool]:
    """(our upscaler, exact) for an A1111 "Hires upscaler" value: its latent modes -> latent; Lanczos, Nearest and
    None -> image (exact only for Lanczos); a model upscaler (ESRGAN, SwinIR, ...) -> its name, which --upscaler-dir
    may find (exact then, for the ESRGAN family personae reads)."""
    lowered = name.strip().lower()
    if lowered.startswith("latent"):
        return "latent", lowered in ("latent", "latent (antialiased)")
    if lowered in _RESIZERS:
        return "image", lowered in ("lanczos", "image")
    return name.strip(), True


def hires_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The upscaled size, each side rounded to a multiple of 8 (the VAE's cell), as A1111 does."""
    return max(8, int(width * scale) // 8 * 8), max(8, int(height * scale) // 8 * 8)


def resize_plan(width: int, height: int, target: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """A1111's "Hires resize" (its calculate_target_resolution): the size to upscale to, covering `target` at the
    picture's aspect ratio (a 0 side follows the other), and the overhang in latent cells (x, y) to crop."""
    to_w, to_h = target
    if not to_h:
        size = (to_w, to_w * height // width)
    elif not to_w:
        size = (to_h * width // height, to_h)
    elif width / height < to_w / to_h:
        size = (to_w, to_w * height // width)
    else:
        size = (to_h * width // height, to_h)
    if not (to_w and to_h):
        return size, (0, 0)
    return size, ((size[0] - to_w) // 8, (size[1] - to_h) // 8)


def crop_overhang(upscaled, truncate: tuple[int, int], cell: int):
    """The upscaled latents (or pictures) with the overhang cropped evenly, the extra cell at the end, as A1111's
    sample_hr_pass slices its latents: [ty // 2 : H - (ty + 1) // 2, tx // 2 : W - (tx + 1) // 2]; pictures are cut
    at the same cells, `cell` pixels each."""
    tx, ty = truncate
    if not (tx or ty):
        return upscaled
    if isinstance(upscaled, torch.Tensor):
        h, w = upscaled.shape[-2:]
        return upscaled[..., ty // 2:h - (ty + 1) // 2, tx // 2:w - (tx + 1) // 2]
    return [p.crop((tx // 2 * cell, ty // 2 * cell, p.width - (tx + 1) // 2 * cell, p.height - (ty + 1) // 2 * cell))
            for p in upscaled]


def hires_plan(settings, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The size the base picture is upscaled to and the overhang (x, y, in latent cells) cut from it afterwards."""
    if settings.hires_resize:  # A1111's "Hires resize": cover the size, then crop the overhang
        size, truncate = resize_plan(width, height, settings.hires_target)
        return (max(8, size[0] // 8 * 8), max(8, size[1] // 8 * 8)), truncate
    return hires_size(width, height, settings.hires_scale), (0, 0)


def redrawn_size(settings, width: int, height: int) -> tuple[int, int]:
    """The size of the hires fix's redraw (and of its pictures): the upscaled size less the overhang."""
    (w, h), (tx, ty) = hires_plan(settings, width, height)
    return w - 8 * tx, h - 8 * ty


def upscale(pipe, latents: torch.Tensor, size: tuple[int, int], upscaler: str,
            net: UpscalerNet | None = None, on_tile=None) -> torch.Tensor | list[Image.Image]:
    """The base pass's latents at `size`: interpolated latents, or decoded pictures resized with Lanczos or
    upscaled by `net` (then Lanczos to the exact size, as A1111 does)."""
    width, height = size
    scale = pipe.vae_scale_factor
    if upscaler == "latent":
        return F.interpolate(latents, size=(height // scale, width // scale), mode="bilinear", antialias=False)
    decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    pictures = pipe.image_processor.postprocess(decoded, output_type="pil")
    if net is not None:
        return [upscale_picture(net, p, size, on_tile=on_tile) for p in pictures]
    return [p.resize(size, Image.Resampling.LANCZOS) for p in pictures]


def hires_fix(pipe, redraw_pipe, settings, size: tuple[int, int], kwargs: dict, generators,
              net: UpscalerNet | None = None, redraw_kwargs: dict | None = None, on_tile=None, passes=None,
              base_kwargs: dict | None = None):
    """Images of `settings` with the hires fix: `pipe` draws the base picture, `redraw_pipe` (img2img, with a
    scheduler of its own) redraws the upscaled one. `kwargs`: the shared call arguments (embeds, steps, cfg, the
    base pass's generators); `generators()`: fresh generators of the same seeds for the redraw (inference/rng.py);
    `net`: the model upscaler that --hires-upscaler names, read beforehand; `redraw_kwargs`: the redraw's own
    (its prompt schedule over the hires steps, A1111's hr conditioning); `on_tile(done, total)`: the upscaler's
    progress; `passes`: a context manager for each pass to run in (the base pass, the redraw), such as the hooks
    that compose a prompt's AND parts, each pass its own; `base_kwargs`: the base pass's own (a ControlNet's maps)."""
    width, height = size
    base_pass, redraw_pass = passes or (nullcontext(), nullcontext())
    # 1. the base picture, kept as latents
    with base_pass:
        base = pipe(width=width, height=height, output_type="latent", **kwargs, **(base_kwargs or {})).images
    # 2. upscale the latents or the decoded picture
    size, truncate = hires_plan(settings, width, height)
    image = crop_overhang(upscale(pipe, base, size, settings.hires_upscaler, net, on_tile), truncate,
                          pipe.vae_scale_factor)
    # 3. redraw at the denoising strength, from the same seeds: A1111's hires pass draws from fresh generators, its
    # starting noise made as the base pass's (variation seed, seed resize) at the new size
    redraw = {**kwargs, **(redraw_kwargs or {}), "generator": generators(),
              **img2img_steps(redraw_pipe.scheduler, settings.hires_steps or settings.steps, settings.hires_denoise,
                              hires=True)}
    redraw_pipe.scheduler.generators = redraw["generator"]  # a k-sampler's churn draws before its first call
    with redraw_pass:
        return redraw_pipe(image=image, **redraw).images
