"""FreeU (Si et al., "FreeU: Free Lunch in Diffusion U-Net"), as ComfyUI's FreeU and FreeU_V2 nodes apply it.

Before each decoder block (ComfyUI's output block: one of the up blocks' resnets in diffusers) joins the
backbone features h with the skip features from the encoder, ComfyUI's output_block_patch changes both where h
has 4x the first block's channels (B1, S1) or 2x (B2, S2):

    h[:, : C/2] *= B                        FreeU
    h[:, : C/2] *= 1 + (B - 1) x m          FreeU_V2, m: h's channel mean, normalised to 0-1 per picture
    skip = its Fourier transform with the 2 x 2 lowest frequencies scaled by S (diffusers' fourier_filter,
           threshold 1: ComfyUI's Fourier_filter, computed in float32 as ComfyUI computes it)

diffusers' own enable_freeu picks the blocks by index instead (up blocks 0 and 1), which on SD-1.5 scales the
second 1280-channel block by B2 and leaves the 640-channel ones alone; so personae applies ComfyUI's rule with
hooks: a hook on each up block notes its skip tensors' channels, and one on each resnet changes its input,
cat(h, skip), before the resnet runs (a ControlNet's residuals are already in the skips, as in ComfyUI).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from diffusers.utils.torch_utils import fourier_filter  # FreeU's filter, in float32 as ComfyUI's


def freeu_input(joined: torch.Tensor, hidden: int, backbone: float, skip: float, v2: bool) -> torch.Tensor:
    """A decoder block's input cat(h, skip), h its first `hidden` channels, with FreeU's two changes."""
    h, s = joined[:, :hidden], joined[:, hidden:]
    half = hidden // 2
    if v2:
        mean = h.mean(1, keepdim=True)
        flat = mean.flatten(1)
        low, high = flat.min(1).values[:, None, None, None], flat.max(1).values[:, None, None, None]
        spread = torch.where(high > low, high - low, torch.ones_like(high))  # a flat map (1 x 1 at a small size):
        factor = (backbone - 1) * ((mean - low) / spread) + 1  # 0 there, no scaling, where ComfyUI divides 0 by 0
    else:
        factor = backbone
    h = torch.cat([h[:, :half] * factor, h[:, half:]], dim=1)
    return torch.cat([h, fourier_filter(s, 1, skip)], dim=1)


def parse_freeu(text: str) -> tuple[float, float, float, float] | None:
    """(b1, b2, s1, s2) of the setting's "B1,B2,S1,S2", or None when off."""
    if not text:
        return None
    b1, b2, s1, s2 = (float(part) for part in text.split(","))
    return b1, b2, s1, s2


@contextmanager
def freeu_applied(unet, text: str, v2: bool = False) -> Iterator[None]:
    """Within the block, `unet` runs with FreeU at "B1,B2,S1,S2" (nothing when `text` is empty)."""
    values = parse_freeu(text)
    if values is None:
        yield
        return
    b1, b2, s1, s2 = values
    first = unet.config.block_out_channels[0]
    scales = {first * 4: (b1, s1), first * 2: (b2, s2)}  # ComfyUI: model_channels x 4 and x 2
    handles = []
    for block in unet.up_blocks:
        skips: list[int] = []

        def note(module, args, kwargs, _skips=skips):
            tuple_ = kwargs.get("res_hidden_states_tuple", args[1] if len(args) > 1 else None)
            _skips[:] = [t.shape[1] for t in reversed(tuple_)]  # resnet j takes the j-th from the end

        handles.append(block.register_forward_pre_hook(note, with_kwargs=True))
        for j, resnet in enumerate(block.resnets):
            def change(module, args, kwargs, _skips=skips, _j=j):
                joined = args[0] if args else kwargs["input_tensor"]
                hidden = joined.shape[1] - _skips[_j]
                if hidden not in scales:
                    return None
                changed = freeu_input(joined, hidden, *scales[hidden], v2)
                return ((changed, *args[1:]), kwargs) if args else (args, {**kwargs, "input_tensor": changed})

            handles.append(resnet.register_forward_pre_hook(change, with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
