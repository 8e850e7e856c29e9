"""The tiny AnimateDiff motion adapter that fits the tiny model (tests, demo, benchmarks).

A real diffusers `MotionAdapter` at small size: one motion module per UNet layer, levels
with the tiny UNet's channels (32, 32, 64, 64) and its one layer per block, a mid-block
module, a 32-position table like AnimateDiff v2/v3. Random seeded weights.

AnimateDiff trains its motion modules from a zero output projection, so an untrained
module would pass frames through unchanged; diffusers' `nn.Linear` default init is not
zero, but the projection is still made clearly non-zero here (seeded), so that tests can
see the motion module act.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import MotionAdapter

from personae.models.folders import readable_by_others
from personae.models.motion import save_motion_single_file
from personae.models.tiny import TINY_UNET

TINY_MOTION = dict(
    block_out_channels=TINY_UNET["block_out_channels"], motion_layers_per_block=TINY_UNET["layers_per_block"],
    motion_transformer_layers_per_block=1, motion_mid_block_layers_per_block=1, motion_num_attention_heads=4,
    motion_norm_num_groups=TINY_UNET["norm_num_groups"], motion_max_seq_length=32, use_motion_mid_block=True,
)
PROJ_OUT_STD = 0.2  # output projection scale: large enough that motion visibly mixes frames in a random model


@torch.no_grad()
def build_tiny_motion_adapter(seed: int = 0) -> MotionAdapter:
    with torch.random.fork_rng(devices=[]):  # seeded here; the caller's random state is left as it was
        torch.manual_seed(seed)
        adapter = MotionAdapter(**TINY_MOTION)
    generator = torch.Generator().manual_seed(seed + 1)
    for name, param in adapter.named_parameters():
        if ".proj_out." in name:
            param.copy_(torch.randn(param.shape, generator=generator) * PROJ_OUT_STD)
    return adapter


def write_tiny_motion_adapter(out_dir: str | Path, seed: int = 0, single_file: str | Path | None = None,
                              overwrite: bool = False) -> Path:
    """Write the tiny adapter as a diffusers folder (and optionally as one .safetensors file)."""
    from personae.outputs import MODEL_FOLDER, check_file_output, staged_output
    from personae.staging import explain_disk_full

    out_dir = Path(out_dir)
    if single_file is not None:
        check_file_output(single_file, overwrite)
    with staged_output(out_dir, MODEL_FOLDER, replace=overwrite) as work:
        adapter = build_tiny_motion_adapter(seed)
        adapter.save_pretrained(str(work), safe_serialization=True)
        readable_by_others(work)
    if single_file is not None:
        with explain_disk_full(single_file):
            save_motion_single_file(adapter, single_file)
    return out_dir
