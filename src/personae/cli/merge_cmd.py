"""`personae merge A [B [C]] --out OUT`: A1111's Checkpoint Merger, and LoRAs baked into a model."""

from __future__ import annotations

import argparse

from personae.cli.options import add_settings_options, settings_values
from personae.config.merge import MergeSettings

EXAMPLES = """examples:
  # 70 % of A and 30 % of B, as one checkpoint file for A1111 / ComfyUI
  personae merge majicmix.safetensors dreamshaper.safetensors --multiplier 0.3 --out mix.safetensors
  # add B's difference from C to A (an inpainting A stays an inpainting model)
  personae merge sd15-inpainting.safetensors mymodel.safetensors sd15.safetensors --method add-difference \\
      --multiplier 1 --out mymodel-inpainting.safetensors
  # a trained LoRA baked into its base model at 0.8, and a VAE baked in, as a diffusers folder
  personae merge ./base --method none --lora runs/me/lora.safetensors:0.8 --vae vae-ft-mse.safetensors --out ./me-model

outputs: OUT.safetensors, one file in the original SD-1.x layout; or OUT/, a diffusers folder with merge.json.
"""


def add_parser(sub) -> None:
    p = sub.add_parser("merge", help="merge models (A1111's Checkpoint Merger) and bake in LoRAs and a VAE",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Merge two or three SD-1.x models as A1111's Checkpoint Merger does (weighted sum, "
                                   "add difference), then bake in a VAE and LoRAs at their strengths (kohya's "
                                   "merge_lora). The models are only read.")
    p.add_argument("models", nargs="+", metavar="MODEL", help="A, then B, then C: diffusers folders, single files or "
                                                               "downloaded hub ids")
    p.add_argument("--out", required=True, metavar="OUT", help="a .safetensors file, or a folder for a diffusers model")
    add_settings_options(p, MergeSettings)  # every setting, with its help, from config/merge.py
    p.add_argument("--overwrite", action="store_true", help="replace OUT: a file, or a folder personae wrote")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(run=run)


def run(args) -> int:
    from personae.cli.progress import TerminalProgress
    from personae.config.base import parse_settings
    from personae.jobs.merge import run_merge

    settings = parse_settings(MergeSettings, settings_values(args, MergeSettings), "the merge options")
    progress = TerminalProgress(quiet=args.quiet)
    try:
        out = run_merge(args.models, args.out, settings, overwrite=args.overwrite, on_event=progress)
    finally:
        progress.close()
    print(f"wrote {out}")
    return 0
