"""A1111's "Tiling": pictures that tile seamlessly (textures, patterns, backgrounds).

A1111 pads every convolution of the model circularly for the run (sd_hijack's apply_circular: each layer whose type is
exactly torch.nn.Conv2d, in the UNet and the VAE's encoder and decoder), so the left edge of every feature map sees
the right edge as its neighbour and the picture wraps around. personae does the same to the session's UNet and VAE,
LoRA layers included (their convolutions are Conv2d too, so a LoRA's share wraps as A1111's merged weights do);
ControlNets and upscaler models stay as they are, as in A1111.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def tiling_applied(modules, on: bool) -> Iterator[None]:
    """Within the block, every Conv2d of `modules` (the UNet, the VAE) pads circularly when `on`; restored after."""
    if not on:
        yield
        return
    convs = [layer for module in modules if module is not None for layer in module.modules()
             if type(layer) is torch.nn.Conv2d and layer.padding_mode == "zeros"]
    for layer in convs:
        layer.padding_mode = "circular"
    try:
        yield
    finally:
        for layer in convs:
            layer.padding_mode = "zeros"
