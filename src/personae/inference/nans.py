"""NaN checks during generation: a picture with NaNs in it stops the run with the likely cause, never a black PNG.

A1111 raises `NansException` ("A tensor with all NaNs was produced in Unet/VAE ...") for the same reason.
Where the NaN first appears says what to do about it:

  - prompt embeddings: the emphasis weights (`(word:5)`) or an embedding file with NaNs in it;
  - UNet output: a LoRA at too high a weight (or a broken LoRA / model file), or fp16 overflowing;
  - VAE decoder output from finite latents: an fp16 VAE (the SD-1.x VAE overflows in half precision).

    with nan_guard(pipe, loras=["style: 1.5"]):
        images = pipe(...).images          # raises UserError at the first NaN, in the module that made it

The guard is forward hooks on the UNet and the VAE decoder, removed when the block ends, so the
check is the same for every pipeline that shares these modules (txt2img, img2img, ControlNet).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from personae.errors import UserError


def _first_tensor(output) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    sample = getattr(output, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def _share(t: torch.Tensor) -> str:
    bad = int(torch.isnan(t).sum())
    return "all NaN" if bad == t.numel() else f"{100 * bad / t.numel():.3g}% NaN"


class NansError(UserError):
    """NaNs out of the model (A1111's NansException): a UserError that callers can tell apart, e.g. training,
    where a model that draws NaNs after some steps has diverged."""


def unet_nan_error(share: str, dtype: torch.dtype, loras: Sequence[str]) -> NansError:
    causes = []
    if loras:
        causes.append(f"a LoRA at too high a weight or with broken weights ({', '.join(loras)}): lower its weight or "
                      "leave it out to see")
    causes.append("strong prompt emphasis such as (word:3): keep weights between 0.5 and 1.6")
    if dtype in (torch.float16, torch.bfloat16):
        causes.append("half precision overflowing: run with --dtype fp32")
    causes.append("a damaged model file: try another copy")
    return NansError(f"The UNet produced NaNs ({share}) while denoising, so the picture would be black; nothing was "
                     "saved (A1111 calls this a NansException).", "Likely causes, most likely first: "
                     + "; ".join(causes) + ".")


def vae_nan_error(share: str, dtype: torch.dtype) -> NansError:
    fix = ("The SD-1.x VAE overflows in half precision: run with --dtype fp32 (A1111's --no-half-vae), or pass a "
           "VAE made for fp16 with --vae."
           if dtype in (torch.float16, torch.bfloat16) else
           "The VAE's weights hold NaNs or overflow: pass another VAE with --vae, or check the model file.")
    return NansError(f"The VAE produced NaNs ({share}) when decoding finite latents, so the picture would be black; "
                     "nothing was saved (A1111 calls this a NansException).", fix)


def check_embeddings(embeds: torch.Tensor, what: str = "prompt") -> None:
    """Prompt embeddings with NaN / inf in them: the emphasis weights or an embedding file."""
    if not bool(torch.isfinite(embeds).all()):
        raise NansError(f"The {what} encodes to NaN / infinite values, so the picture would be black.",
                        "Lower the emphasis weights such as (word:3) to between 0.5 and 1.6, and check the "
                        "textual-inversion embeddings the prompt uses (a damaged file holds NaNs).")


@contextmanager
def nan_guard(pipe, loras: Sequence[str] = ()) -> Iterator[None]:
    """Within the block, the first NaN out of `pipe`'s UNet or VAE decoder raises a UserError naming the cause."""
    dtype = pipe.unet.dtype

    def on_unet(module, inputs, output):
        out = _first_tensor(output)
        if out is not None and bool(torch.isnan(out).any()):
            raise unet_nan_error(_share(out), dtype, loras)

    def on_decoder(module, inputs, output):
        out = _first_tensor(output)
        if out is not None and bool(torch.isnan(out).any()):
            latents = inputs[0] if inputs else None
            if isinstance(latents, torch.Tensor) and bool(torch.isnan(latents).any()):
                raise unet_nan_error(_share(latents), dtype, loras)  # NaNs came in from the denoising
            if getattr(pipe.vae, "_personae_upcast", False) and out.dtype in (torch.float16, torch.bfloat16):
                return  # speedups.upcast_on_nan decodes again in fp32 (and this hook sees that decode too)
            raise vae_nan_error(_share(out), pipe.vae.dtype)

    handles = [pipe.unet.register_forward_hook(on_unet), pipe.vae.decoder.register_forward_hook(on_decoder)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
