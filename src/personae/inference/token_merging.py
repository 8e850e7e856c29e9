"""A1111's "Token merging ratio": ToMe for Stable Diffusion (Bolya and Hoffman, the tomesd package), applied as A1111
applies it (sd_models.apply_token_merging).

tomesd wraps each transformer block of the UNet: before its self-attention, `ratio` of the tokens of the
full-resolution blocks (max_downsample 1) are merged into their most similar neighbours on a 2 x 2 grid of
destinations (sx = sy = 2, bipartite soft matching), and split back afterwards; cross-attention and the MLP see every
token. A1111 turns tomesd's random destinations off (use_rand=False), so the merge is deterministic and a picture
reproduces. The ratio is set for each sampling pass: the hires fix's redraw may take its own ("Token merging ratio
hr"), and the face fix takes the picture's (A1111's img2img ratio falls back to it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def token_merged(unet, ratio: float) -> Iterator[None]:
    """Within the block, `unet` (a diffusers UNet) merges tokens at `ratio`; nothing at 0. Unpatched after."""
    if not ratio:
        yield
        return
    import tomesd

    tomesd.apply_patch(unet, ratio=ratio, use_rand=False, merge_attn=True, merge_crossattn=False, merge_mlp=False)
    try:
        yield
    finally:
        tomesd.remove_patch(unet)
