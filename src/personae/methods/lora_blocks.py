"""Rank and alpha per UNet block, by the names A1111's LoRA block-weight extension and kohya's block_dims use.

    shapes = layer_shapes(unet, targets, rank=4, alpha=4, block_ranks={"IN": 4, "MID": 8, "OUT": 8})
    LoraConfig(r=4, lora_alpha=4, rank_pattern=..., alpha_pattern=...)  # from patterns(shapes, 4, 4)

The names are those of the original (LDM) UNet, which A1111 converts diffusers' names into: IN00 is
`conv_in`; a down block's layers come next, `layers_per_block` of them, then its downsampler (SD-1.5:
IN01, IN02 the first level's two resnet + attention pairs, IN03 its downsampler, ... IN11); M00 is the
middle block; OUT00... are the up blocks' `layers_per_block + 1` layers each, the last one holding the
upsampler. The groups are IN (every down block and conv_in), MID, and OUT (every up block). Layers outside
the blocks (time embedding, conv_out) keep the run's rank. A single block's number wins over its group's.
"""

from __future__ import annotations

import re

from personae.errors import UserError

_DOWN = re.compile(r"^down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)(\.|$)")
_UP = re.compile(r"^up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)(\.|$)")


def a1111_block(module: str, layers_per_block: int) -> str | None:
    """"IN04", "M00", "OUT07" for a UNet module name (diffusers' layout), or None outside the blocks."""
    slots = layers_per_block + 1  # an LDM level: its layers, then its down- (or, going up, its up-) sampler
    if module == "conv_in" or module.startswith("conv_in."):
        return "IN00"
    if module.startswith("mid_block."):
        return "M00"
    if match := _DOWN.match(module):
        level, kind, j = int(match[1]), match[2], int(match[3])
        return f"IN{(level + 1) * slots if kind == 'downsamplers' else 1 + level * slots + j:02d}"
    if match := _UP.match(module):
        level, kind, j = int(match[1]), match[2], int(match[3])
        return f"OUT{level * slots + (layers_per_block if kind == 'upsamplers' else j):02d}"
    return None


def _group(block: str) -> str:
    return {"I": "IN", "M": "MID", "O": "OUT"}[block[0]]


def _pick(values: dict, block: str | None, default):
    if block is None:
        return default
    fine = values.get("MID" if block == "M00" and "M00" not in values else block)
    return fine if fine is not None else values.get(_group(block), default)


def layer_shapes(unet, modules: list[str], rank: int, alpha: float, block_ranks: dict[str, int],
                 block_alphas: dict[str, float], convs: dict[str, tuple[int | None, float | None]] | None = None
                 ) -> dict[str, tuple[int, float]]:
    """{module: (rank, alpha)} for the adapted `modules` of `unet`. `convs` holds locon's conv_rank / conv_alpha
    for its 3x3 convolutions ({module: (rank or None, alpha or None)}), which win over the blocks' numbers.
    A single block the UNet does not have is a UserError (its blocks are listed)."""
    per_block = unet.config.layers_per_block
    layers = per_block if isinstance(per_block, int) else per_block[0]
    found = {b for b in (a1111_block(m, layers) for m, _ in unet.named_modules()) if b}
    for name in {**block_ranks, **block_alphas}:
        if name not in ("IN", "MID", "OUT") and (name if name != "MID" else "M00") not in found:
            ins, outs = sorted(b for b in found if b[0] == "I"), sorted(b for b in found if b[0] == "O")
            raise UserError(f"lora.block_ranks / block_alphas name {name}, which this UNet does not have: its "
                            f"blocks are {ins[0]}-{ins[-1]}, M00, {outs[0]}-{outs[-1]} ({layers} layer(s) per "
                            "block; SD-1.5 has IN00-IN11, M00, OUT00-OUT11).",
                            "Use one of those names, or the groups IN, MID, OUT.")
    shapes = {}
    for module in modules:
        block = a1111_block(module, layers)
        r, a = _pick(block_ranks, block, rank), _pick(block_alphas, block, alpha)
        conv_r, conv_a = (convs or {}).get(module, (None, None))
        shapes[module] = (conv_r or r, conv_a or a)
    return shapes


def patterns(shapes: dict[str, tuple[int, float]], rank: int, alpha: float) -> tuple[dict[str, int], dict[str, float]]:
    """peft's rank_pattern and alpha_pattern for `shapes`: the modules that differ from (rank, alpha), each by its
    whole name (escaped: peft matches the keys as regular expressions, the first match winning)."""
    ranks = {re.escape(m): r for m, (r, _) in shapes.items() if r != rank}
    alphas = {re.escape(m): a for m, (_, a) in shapes.items() if a != alpha}
    return ranks, alphas
