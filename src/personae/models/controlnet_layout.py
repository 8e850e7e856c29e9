"""A ControlNet as one file in diffusers' own layout: a folder's diffusion_pytorch_model.safetensors on its own
(`controlnet_cond_embedding.*`, `down_blocks.*`, `controlnet_down_blocks.*`), as users download it from a model hub
and drop it beside their original-layout files. A1111's ControlNet extension and ComfyUI both read it.

Its config is read from the weights' shapes where they say it (the blocks' widths, layers per block, which blocks
attend, the text width, the control image's channels and the conditioning embedding's widths, linear or
convolutional projections) and taken from SD-1.5's ControlNet where they cannot (heads, GroupNorm groups), as the
extension builds it (its default config, with the text width and hint channels from the weights). Every tensor must
then have its place in that ControlNet, with its shape: a key that has none (an SDXL ControlNet's `add_embedding`, a
ControlNet-LoRA's) stops the load, naming it, rather than being left out.
"""

from __future__ import annotations

import re
from pathlib import Path

from personae.errors import UserError

MARKER = "controlnet_cond_embedding.conv_in.weight"  # what the extension and ComfyUI recognise the layout by


def is_diffusers_layout(shapes: dict[str, tuple[int, ...]]) -> bool:
    return MARKER in shapes


def _count(shapes: dict, pattern: str) -> int:
    """How many consecutive indices i from 0 have a key matching pattern % i."""
    i = 0
    while any(re.match(pattern % i, k) for k in shapes):
        i += 1
    return i


def diffusers_layout_config(shapes: dict[str, tuple[int, ...]], sd15: dict) -> dict:
    """The ControlNet config of a diffusers-layout file, from its shapes over SD-1.5's (`sd15`)."""
    blocks = _count(shapes, r"down_blocks\.%d\.")
    if not blocks:
        raise UserError("the file has controlnet_cond_embedding weights but no down_blocks.",
                        "Pass the whole ControlNet: its folder, or its diffusion_pytorch_model.safetensors.")
    attends = [f"down_blocks.{i}.attentions.0.proj_in.weight" in shapes for i in range(blocks)]
    embedding = _count(shapes, r"controlnet_cond_embedding\.blocks\.%d\.weight") // 2
    config = {**sd15,
              "in_channels": shapes["conv_in.weight"][1] if "conv_in.weight" in shapes else sd15["in_channels"],
              "conditioning_channels": shapes[MARKER][1],
              "conditioning_embedding_out_channels": [shapes[MARKER][0]] + [
                  shapes[f"controlnet_cond_embedding.blocks.{2 * i + 1}.weight"][0] for i in range(embedding)],
              "block_out_channels": [shapes.get(f"down_blocks.{i}.resnets.0.conv1.weight", (0,))[0]
                                     for i in range(blocks)],
              "layers_per_block": _count(shapes, r"down_blocks\.0\.resnets\.%d\."),
              "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attends]}
    first = next((i for i, a in enumerate(attends) if a), None)
    if first is not None:
        config["cross_attention_dim"] = shapes[f"down_blocks.{first}.attentions.0.transformer_blocks.0.attn2.to_k"
                                               ".weight"][1]
        config["use_linear_projection"] = len(shapes[f"down_blocks.{first}.attentions.0.proj_in.weight"]) == 2
        depths = {_count(shapes, rf"down_blocks\.{i}\.attentions\.0\.transformer_blocks\.%d\.")
                  for i, a in enumerate(attends) if a}
        config["transformer_layers_per_block"] = depths.pop() if len(depths) == 1 else sd15.get(
            "transformer_layers_per_block", 1)
    if not any(k.startswith("mid_block.attentions.") for k in shapes):
        config["mid_block_type"] = "UNetMidBlock2D"
    return config


def check_keys(path: Path, shapes: dict[str, tuple[int, ...]], config: dict) -> None:
    """Every tensor of the file has its place, with its shape, in the ControlNet `config` builds, and every place
    is filled; otherwise a UserError naming the first few."""
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel

    try:
        with init_empty_weights():
            model = ControlNetModel.from_config(config)
    except (ValueError, TypeError, AssertionError, RuntimeError) as exc:
        raise UserError(f"{path}: its weights do not form a Stable Diffusion 1.x ControlNet ({exc}).",
                        "Pass its diffusers folder (with config.json), or a ControlNet for SD 1.x.") from None
    wanted = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    unplaced = sorted(k for k in shapes if k not in wanted)
    missing = sorted(k for k in wanted if k not in shapes)
    wrong = sorted(k for k in shapes if k in wanted and tuple(shapes[k]) != wanted[k])

    def few(keys: list[str]) -> str:
        return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")

    if unplaced or missing or wrong:
        said = [f"{len(unplaced)} tensors a ControlNet for SD 1.x has no place for ({few(unplaced)})" * bool(unplaced),
                f"{len(missing)} missing ({few(missing)})" * bool(missing),
                f"{len(wrong)} of another shape ({few(wrong)})" * bool(wrong)]
        raise UserError(f"{path} is a ControlNet in diffusers' layout, but not one personae can build from its "
                        f"weights alone: {'; '.join(s for s in said if s)}.",
                        "Pass its diffusers folder (the file with its config.json), or a ControlNet for SD 1.x; an "
                        "SDXL ControlNet needs an SDXL model, which personae does not run.")
