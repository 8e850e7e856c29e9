"""img2img and inpainting on the loaded model: diffusers' pipelines sharing the session's components.

Like A1111: the init image is resized to the output size as its "Resize mode" says; "Denoising strength" 0 returns
the image as the VAE reproduces it; inpainting redraws the white part of the mask and
pastes the untouched pixels back through a feathered mask, so unmasked pixels are kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter, ImageOps

from personae.errors import UserError


def _read(path: str, what: str, mode: str | None = "RGB") -> Image.Image:
    """The picture at `path`, turned upright by its EXIF orientation, in `mode` (None: the file's own)."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"The {what} {p} is a folder, not a picture.", "Give one picture file.")
    if not p.is_file():
        raise UserError(f"The {what} {p} does not exist.")
    try:
        with Image.open(p) as im:
            im = ImageOps.exif_transpose(im) or im
            image = im.convert(mode) if mode else im.copy()
            image.load()
    except Image.DecompressionBombError as exc:
        raise UserError(f"The {what} {p} is too large to decode safely ({exc.args[0].split(' exceeds')[0]}).",
                        "Use a smaller image (a few thousand pixels a side is plenty).") from None
    except (OSError, SyntaxError, ValueError) as exc:  # PIL reports damaged files as these
        raise UserError(f"The {what} {p} is not a readable image ({exc}).") from None
    return image


def open_image(path: str, what: str, size: tuple[int, int] | None = None, resize_mode: str = "Just resize"
               ) -> Image.Image:
    image = _read(path, what)
    return a1111_resize(image, size, resize_mode) if size and image.size != size else image


LATENT_RESIZE = "Just resize (latent upscale)"


def a1111_resize(image: Image.Image, size: tuple[int, int], mode: str = "Just resize") -> Image.Image:
    """`image` brought to `size` by A1111's img2img "Resize mode" (images.resize_image, no img2img upscaler set, so
    Lanczos): "Just resize" stretches it; "Crop and resize" scales it to cover the size, centred, the overhang cut;
    "Resize and fill" scales it to fit, centred, and fills each side's gap with its outermost row (or column)
    stretched across it. diffusers' image processor carries A1111's two ("crop", "fill"); a mask stays a mask. The
    latent mode resizes latents, not pixels (latent_resized); A1111 fills there."""
    if image.size == size:
        return image
    if mode == "Just resize":
        return image.resize(size, Image.Resampling.LANCZOS)
    from diffusers.image_processor import VaeImageProcessor

    fitted = VaeImageProcessor(resample="lanczos").resize(image, size[1], size[0],
                                                          resize_mode="crop" if mode == "Crop and resize" else "fill")
    return fitted.convert(image.mode) if fitted.mode != image.mode else fitted


@torch.no_grad()
def latent_resized(pipe, image: Image.Image, size: tuple[int, int], generators) -> torch.Tensor:
    """A1111's "Just resize (latent upscale)": the picture encoded at its own size (a multiple of 8, as diffusers
    encodes it: one sample per image, each from its own generator, so the generators advance as in diffusers'
    img2img), its latents stretched bilinearly to `size`; diffusers' img2img pipelines take them as the init."""
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_latents

    x = pipe.image_processor.preprocess(image).to(pipe.vae.device, pipe.vae.dtype)
    each = generators if isinstance(generators, list) else [generators]
    latents = torch.cat([retrieve_latents(pipe.vae.encode(x), generator=g) for g in each])
    cell = pipe.vae_scale_factor
    return F.interpolate(latents * pipe.vae.config.scaling_factor, size=(size[1] // cell, size[0] // cell),
                         mode="bilinear")


def default_size(path: str) -> tuple[int, int]:
    """The init image's size, rounded down to multiples of 8."""
    w, h = open_image(path, "init image").size
    return max(8, w // 8 * 8), max(8, h // 8 * 8)


def feather(mask: Image.Image, blur: int) -> Image.Image:
    """A1111's "Mask blur": the mask's edge feathered by OpenCV's Gaussian of sigma `blur` pixels, across and then
    down, each over 2 x int(2.5 x blur + 0.5) + 1 pixels (A1111's kernel, OpenCV's mirrored border)."""
    if not blur:
        return mask
    import cv2

    size = 2 * int(2.5 * blur + 0.5) + 1
    pixels = cv2.GaussianBlur(np.asarray(mask.convert("L")), (size, 1), blur)
    return Image.fromarray(cv2.GaussianBlur(pixels, (1, size), blur))


def load_mask(path: str, size: tuple[int, int], blur: int, invert: bool = False, resize_mode: str = "Just resize"
              ) -> Image.Image:
    """The inpainting mask at `size` as A1111 makes it ("L", white redrawn): a picture with transparency is its alpha
    channel, opaque (> 128) white (a mask painted over the photo), any other its grey levels; inverted for "Inpaint
    not masked"; feathered at its own size, then resized to `size` as the init image is (`resize_mode`)."""
    image = _read(path, "mask", None)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA") and image.getchannel("A").getextrema() != (255, 255):
        mask = image.getchannel("A").point(lambda v: 255 if v > 128 else 0)
    else:
        mask = image.convert("L")
    mask = feather(ImageOps.invert(mask) if invert else mask, blur)
    return a1111_resize(mask, size, resize_mode)


def overlay_mask(mask: Image.Image) -> Image.Image:
    """Where inpainting the whole picture keeps the original (A1111's mask_for_overlay): the feathered mask doubled,
    so the picture is kept up to the middle of the feathered edge and the redrawn part blends in from there."""
    return mask.point(lambda v: min(2 * v, 255))


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's "Masked content: fill": the part under `mask` painted with the colours around it, the kept pixels
    blurred outward at falling radii (256, 64, 16, 4, 2 pixels, then sharp) and laid over one another."""
    kept = Image.new("RGBa", image.size)
    kept.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    painted = Image.new("RGBA", image.size)
    for radius, times in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        layer = kept.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(times):
            painted.alpha_composite(layer)
    return painted.convert("RGB")


def noised_start(scheduler, content: str = "original", latent_mask: tuple[torch.Tensor, torch.Tensor] | None = None,
                 multiplier: float = 1.0, extra: float = 0.0) -> None:
    """img2img's start as A1111 makes it, set on `scheduler`, whose add_noise every img2img and inpainting pipeline
    starts from: "latent noise" / "latent nothing" replace the encoded picture's masked part (`latent_mask`: keep,
    redraw) by the image's starting noise (the seed's first draw, as A1111's) or by zeros; "Noise multiplier" scales
    the noise added to the picture; "Extra noise" adds that noise again, `extra` times over, to the start alone
    (A1111's xi += noise x extra, in the sampler's own scale: the picture plus extra x noise, then noised as usual).
    (Pipelines that noise the picture again at every step to keep the rest of it see the same but the extra noise:
    only the masked part changes.)"""
    latent = content in ("latent noise", "latent nothing")
    if not latent and multiplier == 1.0 and not extra:
        return
    add_noise = scheduler.add_noise
    calls = []

    def start(original_samples, noise, timesteps):
        if latent:
            keep, redraw = (m.to(original_samples.device, original_samples.dtype) for m in latent_mask)
            original_samples = original_samples * keep + (noise * redraw if content == "latent noise" else 0)
        noise = noise * multiplier if multiplier != 1.0 else noise
        if extra and not calls:
            original_samples = original_samples + noise * extra
        calls.append(timesteps)
        return add_noise(original_samples, noise, timesteps)

    set_timesteps = scheduler.set_timesteps

    def new_pass(*args, **kwargs):  # every pipeline call sets its timesteps first: its first add_noise is its start
        calls.clear()
        return set_timesteps(*args, **kwargs)

    scheduler.add_noise, scheduler.set_timesteps = start, new_pass


@torch.no_grad()
def vae_roundtrip(pipe, image: Image.Image, size: tuple[int, int] | None = None) -> Image.Image:
    """What strength 0 gives: the image encoded and decoded by the model's VAE (its latents stretched to `size`
    first: the latent resize mode)."""
    latents = mean_latents(pipe, image)
    cell = pipe.vae_scale_factor
    if size and latents.shape[-2:] != (size[1] // cell, size[0] // cell):
        latents = F.interpolate(latents, size=(size[1] // cell, size[0] // cell), mode="bilinear")
    return pipe.image_processor.postprocess(pipe.vae.decode(latents).sample, output_type="pil")[0]


def kept_by_sampler(session, mask: Image.Image | None, scheduler, soft=None, init: Image.Image | None = None
                    ) -> Image.Image | None:
    """A1111's inpainting, set on `scheduler` where it can run: with one of A1111's k-diffusion samplers the sampler
    keeps the picture outside `mask` in every denoised estimate (a1111_latent_mask; with Soft inpainting, `soft`, its
    blend), for an ordinary model and an inpainting model (9 channels) alike, as A1111's CFG denoiser does. Returns
    the mask the pipeline still needs: None for an ordinary model (the img2img pipeline draws), `mask` for an
    inpainting model (diffusers' inpainting pipeline gives it the masked picture; `init`, the picture, is encoded
    for the sampler, as that pipeline encodes none when it starts from noise alone) and for diffusers' samplers,
    whose pipeline keeps the picture its own way (the noisy latents blended each step; Soft inpainting refused)."""
    from personae.inference.ksampler import KDiffusionScheduler

    if mask is None or not isinstance(scheduler, KDiffusionScheduler):
        if soft is not None:  # soft_inpaint.soft_checked refused diffusers' samplers before the model loaded
            raise UserError("Soft inpainting runs in A1111's own inpainting, with a k-diffusion sampler.",
                            "Choose a k-diffusion sampler, or leave --soft-inpainting out.")
        return mask
    scheduler.inpaint = a1111_latent_mask(mask, session.pipe.vae_scale_factor, rounded=soft is None)
    scheduler.soft = soft  # A1111's Soft inpainting (inference/soft_inpaint.py): the mask's grey edge kept soft
    if session.pipe.unet.config.in_channels == 4:
        return None
    if init is not None:
        scheduler.picture_latents = encoded(session.pipe, init)
    return mask


@torch.no_grad()
def mean_latents(pipe, image: Image.Image) -> torch.Tensor:
    """The VAE's mean for `image` (unscaled, as the VAE decodes it)."""
    x = pipe.image_processor.preprocess(image).to(pipe.vae.device, pipe.vae.dtype)
    return pipe.vae.encode(x).latent_dist.mode()


def encoded(pipe, image: Image.Image) -> torch.Tensor:
    """`image`'s latents as the model reads them (the VAE's mean, scaled)."""
    return mean_latents(pipe, image) * pipe.vae.config.scaling_factor


def denoiser(session, init_image: Image.Image, mask: Image.Image | None, scheduler, soft=None):
    """The diffusers pipeline for this mode, built on the session's own modules (no copy) and `scheduler`: the
    img2img pipeline, or diffusers' inpainting pipeline where the pipeline still needs the mask (kept_by_sampler).
    An inpainting model under Soft inpainting gets A1111's soft conditioning: the mask unrounded and the picture
    faded by it (`mask_kwargs`)."""
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline
    from diffusers.image_processor import VaeImageProcessor

    mask = kept_by_sampler(session, mask, scheduler, soft, init_image)
    cls = StableDiffusionInpaintPipeline if mask is not None else StableDiffusionImg2ImgPipeline
    pipe = session.pipeline(cls, scheduler=scheduler)
    if mask is not None and soft is not None:  # A1111 1.7+: mask_round off reaches the model's conditioning too
        pipe.mask_processor = VaeImageProcessor(vae_scale_factor=pipe.vae_scale_factor, do_normalize=False,
                                                do_binarize=False, do_convert_grayscale=True)
        faded = pipe.image_processor.preprocess(init_image) * (1 - torch.from_numpy(
            np.asarray(mask.convert("L"), dtype=np.float32) / 255))
        pipe.soft_masked_image = faded  # the picture with its masked part faded to grey, by the mask's grey
    return pipe


def mask_kwargs(pipe, mask: Image.Image | None, width: int, height: int) -> dict:
    """The inpainting arguments of `pipe`'s call: the mask and the size for diffusers' inpainting pipeline, nothing
    for the img2img pipeline that A1111's inpainting runs in (the sampler holds the mask)."""
    import inspect

    if mask is None or "mask_image" not in inspect.signature(type(pipe).__call__).parameters:
        return {}
    faded = getattr(pipe, "soft_masked_image", None)  # Soft inpainting's conditioning (denoiser)
    return {"mask_image": mask, "height": height, "width": width,
            **({"masked_image_latents": faded} if faded is not None else {})}


def a1111_latent_mask(mask: Image.Image, scale: int, rounded: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """A1111's (mask, nmask) for inpainting in latent space: the (blurred) mask resized to the latents' size as an RGB
    picture (PIL's default filter), its first channel rounded to 0 or 1 (not with Soft inpainting: `rounded`
    False); nmask is that, mask 1 - it (what is kept)."""
    small = mask.convert("RGB").resize((mask.width // scale, mask.height // scale))
    latmask = np.asarray(small, dtype=np.float32)[..., 0] / 255
    latmask = np.around(latmask) if rounded else latmask
    latmask = torch.from_numpy(np.tile(latmask[None, None], (1, 4, 1, 1)))
    return 1.0 - latmask, latmask


def composite(original: Image.Image, generated: Image.Image, mask: Image.Image) -> Image.Image:
    """Keep the original where the mask is black, A1111's overlay (`mask`: its mask_for_overlay)."""
    alpha = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
    mixed = np.asarray(generated, dtype=np.float32) * alpha + np.asarray(original, dtype=np.float32) * (1 - alpha)
    return Image.fromarray(np.clip(mixed + 0.5, 0, 255).astype(np.uint8))


def crop_region(mask: Image.Image, padding: int) -> tuple[int, int, int, int] | None:
    """A1111's "Only masked" region: the box around the mask's non-black pixels, `padding` pixels wider on every
    side, inside the picture; None for a blank mask."""
    box = mask.convert("L").point(lambda v: 255 if v else 0).getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    return max(x1 - padding, 0), max(y1 - padding, 0), min(x2 + padding, mask.width), min(y2 + padding, mask.height)


def _widen(lo: int, hi: int, want: float, limit: int) -> tuple[int, int]:
    """[lo, hi) grown on both sides to `want` long, shifted back inside [0, limit)."""
    grow = int(want - (hi - lo))
    lo, hi = lo - grow // 2, hi + grow - grow // 2
    if hi >= limit:
        lo, hi = lo - (hi - limit), limit
    if lo < 0:
        hi, lo = hi - lo, 0
    return lo, min(hi, limit)


def fit_region(region: tuple[int, int, int, int], width: int, height: int, image_size: tuple[int, int]
               ) -> tuple[int, int, int, int]:
    """The region grown to the drawing size's aspect ratio (A1111's expand_crop_region), so the crop is drawn
    undistorted at width x height; kept inside the picture."""
    x1, y1, x2, y2 = region
    if (x2 - x1) / (y2 - y1) > width / height:
        y1, y2 = _widen(y1, y2, (x2 - x1) * height / width, image_size[1])
    else:
        x1, x2 = _widen(x1, x2, (y2 - y1) * width / height, image_size[0])
    return x1, y1, x2, y2


def cut_region(picture: Image.Image, region: tuple[int, int, int, int], size: tuple[int, int]) -> Image.Image:
    """A1111's "Only masked" crop at the drawing size: the region cut out and fitted by "Resize and fill" (the same
    as a stretch when fit_region reached the size's aspect ratio; at the picture's edge it may not)."""
    return a1111_resize(picture.crop(region), size, "Resize and fill")


def paste_back(original: Image.Image, drawn: Image.Image, region: tuple[int, int, int, int],
               mask: Image.Image, resize_mode: str = "Crop and resize") -> Image.Image:
    """The crop drawn at the drawing size, resized back to its region ("Crop and resize" as A1111's apply_overlay,
    undoing cut_region's fill) and pasted into the original; then the original kept wherever the (feathered,
    full-size) mask is black, A1111's overlay."""
    x1, y1, x2, y2 = region
    canvas = original.copy()
    canvas.paste(a1111_resize(drawn, (x2 - x1, y2 - y1), resize_mode), (x1, y1))
    return composite(original, canvas, mask)
