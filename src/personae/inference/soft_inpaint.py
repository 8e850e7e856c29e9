"""A1111's "Soft inpainting" (its built-in soft-inpainting extension): a feathered mask's grey edge keeps part of
the picture instead of being rounded to kept or redrawn, and the finished picture keeps the original wherever the
drawing barely changed it.

Two places, as in the extension:
- At every model call of a k-diffusion sampler (inference/ksampler.py, `KDiffusionScheduler.soft`), the denoised
  estimate is mixed with the encoded picture by the unrounded latent mask raised to sigma^bias x preservation
  (`SoftInpainting.blend`): early, noisy steps follow the drawing, later ones keep more of the picture where the mask
  is grey. The mix interpolates each latent pixel's vector and, separately, its length (lengths to the power
  "Transition contrast boost", so a half-kept pixel does not fade). The sampler's result is not blended again.
- After sampling (`overlay_masks`), how far each latent pixel moved from the encoded picture, filtered twice by a
  weighted percentile window (the top 10 %, then the middle half), decides the pixel mask the original is laid over
  with: "Difference threshold" is the distance kept at half opacity, "Difference contrast" how sharp the step is,
  "Mask influence" how much the drawn mask shifts that threshold.

The arithmetic follows the extension's scripts/soft_inpainting.py (A1111 1.7+): `latent_blend`,
`get_modified_nmask`, `apply_adaptive_masks`, `weighted_histogram_filter` (here one vectorised pass over every
pixel instead of a Python loop per pixel), `get_gaussian_kernel`, `smootherstep`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFilter

from personae.inference.img2img import a1111_resize


@dataclass(frozen=True)
class SoftInpainting:
    """The extension's six settings (A1111's labels: Schedule bias, Preservation strength, Transition contrast boost,
    Mask influence, Difference threshold, Difference contrast), at its defaults."""

    schedule_bias: float = 1.0
    preservation: float = 0.5
    contrast_boost: float = 4.0
    mask_influence: float = 0.0
    difference_threshold: float = 0.5
    difference_contrast: float = 2.0

    @classmethod
    def of(cls, settings) -> SoftInpainting | None:
        """The soft inpainting `settings` ask for (GenerateSettings' soft_* fields), or None when it is off."""
        if not getattr(settings, "soft_inpainting", False):
            return None
        return cls(settings.soft_schedule_bias, settings.soft_preservation, settings.soft_contrast_boost,
                   settings.soft_mask_influence, settings.soft_difference_threshold,
                   settings.soft_difference_contrast)

    def blend(self, original: torch.Tensor, denoised: torch.Tensor, redraw: torch.Tensor, sigma) -> torch.Tensor:
        """The denoised estimate of a model call at `sigma`, mixed with the encoded picture `original`: `redraw` (the
        unrounded latent mask, 1 redrawn) raised to sigma^schedule_bias x preservation is the drawing's share."""
        share = torch.pow(redraw, float(sigma) ** self.schedule_bias * self.preservation)
        return latent_blend(original, denoised, share, self.contrast_boost)


SOFT_FIELDS = ("soft_schedule_bias", "soft_preservation", "soft_contrast_boost", "soft_mask_influence",
               "soft_difference_threshold", "soft_difference_contrast")


def soft_checked(settings, k_diffusion: bool) -> SoftInpainting | None:
    """The soft inpainting `settings` ask for, refused where it cannot run (before any model loads): without --mask,
    its settings without --soft-inpainting, with diffusers' samplers (they blend the picture their own way)."""
    from personae.errors import UserError

    if settings.soft_inpainting and not settings.mask:
        raise UserError("--soft-inpainting softens the edge of --mask; no --mask is given.",
                        "Add --mask (with --init-image), or leave --soft-inpainting out.")
    tuned = [name for name in SOFT_FIELDS if getattr(settings, name) != type(settings).model_fields[name].default]
    if tuned and not settings.soft_inpainting:
        raise UserError(f"--{tuned[0].replace('_', '-')} tunes Soft inpainting, which is off.",
                        "Add --soft-inpainting, or leave the --soft-* settings out.")
    if settings.soft_inpainting and not k_diffusion:
        raise UserError(f"Soft inpainting runs with A1111's k-diffusion samplers; {settings.sampler} is one of "
                        "diffusers' samplers here, which keep the picture their own way.",
                        "Choose a k-diffusion sampler (Euler, Euler a, DPM++ 2M, ...), or leave --soft-inpainting out.")
    return SoftInpainting.of(settings)


def latent_blend(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor, boost: float) -> torch.Tensor:
    """a and b mixed by t (B or 1, C, H, W; its first channel weighs the lengths): the vectors linearly, then each
    pixel's vector scaled to the length ((1 - t) |a|^boost + t |b|^boost)^(1 / boost), in float64 as the extension
    computes it (large powers)."""
    mixed = a * (1 - t) + b * t
    current = torch.linalg.vector_norm(mixed, dim=1, keepdim=True).double() + 0.00001
    t1 = t[:, :1].double()
    wanted = (torch.linalg.vector_norm(a, dim=1, keepdim=True).double().pow(boost) * (1 - t1)
              + torch.linalg.vector_norm(b, dim=1, keepdim=True).double().pow(boost) * t1).pow(1 / boost)
    return mixed * (wanted / current).to(mixed.dtype)


def gaussian_kernel(stddev: float = 1.5, radius: int = 2) -> np.ndarray:
    """A (2 radius + 1)^2 Gaussian of peak 1 that falls to 0 one pixel beyond `radius` (shifted and rescaled)."""
    zero = math.exp(-(radius + 1.0) ** 2 / (stddev * stddev))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    squared = offsets[:, None] ** 2 + offsets[None, :] ** 2
    return np.maximum(0.0, (np.exp(-squared / (stddev * stddev)) - zero) * (1 / (1 - zero)))


def histogram_filter(image: np.ndarray, kernel: np.ndarray, low: float, high: float,
                     min_width: float = 1.0) -> np.ndarray:
    """Each pixel of the 2-D `image` replaced by the mean of its neighbours between the `low` and `high` fractions of
    their kernel-weighted, value-sorted stack (the window widened to `min_width` of weight, inside the stack); the
    kernel is cut at the image's edges. low 0.25 / high 0.75 is a weighted median band, 0.9 / 1 a soft maximum."""
    height, width = image.shape
    radius = kernel.shape[0] // 2
    padded = np.pad(image.astype(np.float64), radius)
    inside = np.pad(np.ones_like(image, dtype=np.float64), radius)
    values, weights = [], []
    for dy in range(kernel.shape[0]):  # the window in the extension's order: rows, then columns
        for dx in range(kernel.shape[1]):
            values.append(padded[dy:dy + height, dx:dx + width])
            weights.append(inside[dy:dy + height, dx:dx + width] * kernel[dy, dx])
    values, weights = np.stack(values, -1), np.stack(weights, -1)
    order = np.argsort(values, axis=-1, kind="stable")
    values, weights = np.take_along_axis(values, order, -1), np.take_along_axis(weights, order, -1)
    tops = np.cumsum(weights, -1)
    bottoms = tops - weights
    total = tops[..., -1:]
    start, end = total * low, total * high
    narrow = end - start < min_width
    centre = (start + end) / 2
    start = np.where(narrow, centre - min_width / 2, start)
    end = np.where(narrow, centre + min_width / 2, end)
    over = narrow & (end > total)
    start, end = np.where(over, total - min_width, start), np.where(over, total, end)
    under = narrow & (start < 0)
    start, end = np.where(under, 0.0, start), np.where(under, min_width, end)
    overlap = np.clip(np.minimum(end, tops) - np.maximum(start, bottoms), 0, None)
    weight = overlap.sum(-1)
    mean = np.divide((values * overlap).sum(-1), weight, out=np.zeros_like(weight), where=weight != 0)
    return mean.astype(image.dtype)


def smootherstep(x):
    return x * x * x * (x * (6 * x - 15) + 10)


def overlay_masks(soft: SoftInpainting, redraw: torch.Tensor, original: torch.Tensor, drawn: torch.Tensor,
                  size: tuple[int, int]) -> list[Image.Image]:
    """Per picture, the mask ("L" at `size`, white: the drawing shown) the original is laid over with: from how far
    the sampler's result `drawn` moved from the encoded picture `original` (B, C, h, w), thresholded around
    "Difference threshold" (shifted by the latent mask `redraw` as far as "Mask influence" says), resized and
    blurred as the extension does."""
    latent_mask = redraw[0, 0].float()
    scalar = 1 - torch.clamp(latent_mask, 0, 1) ** (soft.preservation / 2)
    scalar = 0.5 * (1 - soft.mask_influence) + scalar * soft.mask_influence
    scalar = (scalar / (1.00001 - scalar)).cpu().numpy()
    distances = torch.linalg.vector_norm(drawn.float() - original.float(), dim=1).cpu().numpy()
    kernel = gaussian_kernel()
    masks = []
    for distance in distances:
        spread = histogram_filter(distance, kernel, 0.9, 1.0)
        spread = histogram_filter(spread, kernel, 0.25, 0.75)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            ratio = spread / (soft.difference_threshold * scalar)
            kept = smootherstep(1 / (1 + ratio ** soft.difference_contrast))
            shown = (255.0 * (1 - kept)).astype(np.float32)
        small = Image.fromarray(np.nan_to_num(shown, nan=0.0).astype(np.uint8))
        mask = small.resize(size, Image.Resampling.LANCZOS)  # the latents' aspect: A1111's "Resize and fill" is this
        masks.append(mask.filter(ImageFilter.GaussianBlur(radius=4)))
    return masks


def uncropped(mask: Image.Image, full_size: tuple[int, int], region: tuple[int, int, int, int]) -> Image.Image:
    """An "Only masked" region's overlay mask placed in a black mask of the whole picture (A1111's uncrop: the mask
    fitted to the region by "Crop and resize")."""
    x1, y1, x2, y2 = region
    whole = Image.new("L", full_size, 0)
    whole.paste(a1111_resize(mask, (x2 - x1, y2 - y1), "Crop and resize"), (x1, y1))
    return whole
