"""A1111's "inpaint_only" ControlNet preprocessor: what it does beyond its hint (data/control/inpaint.py).

The extension (scripts/hook.py and scripts/controlnet.py) restores the unit's picture outside its mask twice:

- at every model call, after the UNet: the prediction's clean picture x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)
  (abar at the call's timestep, rounded) keeps the unit picture's latents where the mask, max-pooled to the latent
  grid (a kernel of the VAE's factor + 2, its factor's stride, padding 1: the extension's 10 / 8 / 1), is 0; the
  noise that gives that x0 from x_t is mixed with the UNet's own by the unit's weight (clamped to 0..1). Every row of
  the batch (the negative prompt's too) is treated alike; several units in turn. The picture's latents are its VAE
  encoding (the distribution's mean, where A1111 draws a sample) at the pass's size.
- on the finished picture: the mask dilated by a 7 x 7 square and box-blurred 7 x 7 (the extension's
  control_net_inpaint_blur_sigma, 7 unless set) mixes the drawn pixels (inside) with the picture's (outside).

A v-prediction model's output is converted both ways (the extension reads every output as noise, which is right for
epsilon models only). Without a mask of its own a unit keeps its whole picture except a "Resize and Fill" margin:
outpainting, as A1111 users do it in txt2img.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from personae.inference.sigmas import ModelSigmas

BLUR = 7  # the extension's control_net_inpaint_blur_sigma (a kernel size, despite its name)


@dataclass(frozen=True)
class KeptUnit:
    picture: Image.Image  # the unit's picture fitted to the pass's size
    mask: Image.Image  # "L", white: redrawn (taken at 0.5, as the hint's)
    weight: float  # the unit's "Control Weight"


def latent_mask(mask: Image.Image, factor: int) -> torch.Tensor:
    """The pixel mask (white redrawn, taken at 0.5) on the latent grid, as (1, 1, h, w) of 0 / 1."""
    pixels = torch.from_numpy((np.asarray(mask.convert("L"), dtype=np.float32) / 255 > 0.5).astype(np.float32))
    return torch.nn.functional.max_pool2d(pixels[None, None], factor + 2, stride=factor, padding=1)


def kept_prediction(output: torch.Tensor, x_t: torch.Tensor, alphabar: torch.Tensor, kept: torch.Tensor,
                    mask: torch.Tensor, weight: float, v_prediction: bool = False) -> torch.Tensor:
    """The model `output` (noise, or v) whose clean picture keeps `kept` (latents) where `mask` is 0, mixed with the
    output by `weight`; `alphabar` broadcasts over the rows."""
    a, b = alphabar.sqrt(), (1 - alphabar).sqrt()
    if not v_prediction and bool((a == 0).any()):  # a zero-terminal-SNR start: noise alone tells no x0 (A1111: NaN)
        return output
    x0 = a * x_t - b * output if v_prediction else (x_t - b * output) / a
    x0 = x0 * mask + kept * (1 - mask)
    noise = (x_t - a * x0) / b
    new = a * noise - b * x0 if v_prediction else noise
    w = min(max(float(weight), 0.0), 1.0)
    return new * w + output * (1 - w)


def encoded(vae, picture: Image.Image) -> torch.Tensor:
    """The picture's latents: the VAE's mean, scaled as the UNet sees latents."""
    pixels = torch.from_numpy(np.asarray(picture.convert("RGB"), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        latents = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mean
    return latents.float() * vae.config.scaling_factor


@contextmanager
def kept_latents(unet, vae, config: dict, units: list[KeptUnit]) -> Iterator[None]:
    """Within the block, every UNet call's output keeps each unit's picture outside its mask (`config`: the model's
    scheduler config, for its noise schedule and prediction type). The inputs are read before any other hook changes
    them (AND's parts) and the output after the others have made it (composed): the call as the pipeline sees it."""
    if not units:
        yield
        return
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    prepared = [(encoded(vae, u.picture), latent_mask(u.mask, factor), u.weight) for u in units]
    model = ModelSigmas(dict(config))
    alphas, v_prediction = 1 / (1 + model.sigmas ** 2), model.v_prediction
    seen: list = []

    def before(module, args, kwargs):
        seen[:] = [args[0] if args else kwargs["sample"], args[1] if len(args) > 1 else kwargs["timestep"]]

    def after(module, args, kwargs, output):
        tupled = isinstance(output, tuple)
        out = output[0] if tupled else output.sample
        x_t, t = seen
        steps = torch.as_tensor(t, dtype=torch.float32).round().long().reshape(-1).cpu()
        alphabar = alphas[steps.clamp(0, len(alphas) - 1)].reshape(-1, 1, 1, 1).to(out.device)
        new = out.float()
        for kept, mask, weight in prepared:
            new = kept_prediction(new, x_t.float(), alphabar, kept.to(out.device), mask.to(out.device), weight,
                                  v_prediction)
        new = new.to(out.dtype)
        return (new, *output[1:]) if tupled else type(output)(sample=new)

    handles = [unet.register_forward_pre_hook(before, with_kwargs=True, prepend=True),
               unet.register_forward_hook(after, with_kwargs=True)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def kept_pixels(image: Image.Image, picture: Image.Image, mask: Image.Image) -> Image.Image:
    """The finished `image` inside the unit's mask (dilated and blurred, as the extension's post-processing) and the
    unit's `picture` outside it."""
    import cv2

    m = (np.asarray(mask.convert("L"), dtype=np.float32) / 255 > 0.5).astype(np.float32)
    m = cv2.blur(cv2.dilate(m, np.ones((BLUR, BLUR), np.uint8)), (BLUR, BLUR))[:, :, None]
    drawn = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    kept = np.asarray(picture.convert("RGB"), dtype=np.float32) / 255
    mixed = np.clip(m * drawn + (1 - m) * kept, 0, 1)
    return Image.fromarray(np.round(mixed * 255).astype(np.uint8))
