"""`personae extract TUNED --base BASE --out OUT.safetensors`: a LoRA from a fine-tuned model (kohya's
extract_lora_from_models)."""

from __future__ import annotations

import argparse

from personae.cli.options import add_settings_options, settings_values
from personae.config.extract import ExtractSettings

EXAMPLES = """examples:
  # a DreamBooth run's model as a rank-32 LoRA on its base, to share or to use in A1111 / ComfyUI
  personae extract runs/db/model --base ./sd15 --rank 32 --save-precision fp16 --out db.safetensors
  # a fine-tuned checkpoint against SD-1.5, the resnets' convolutions too (a LoCon)
  personae extract mymodel.safetensors --base v1-5-pruned-emaonly.safetensors --rank 64 --conv-rank 16 \\
      --out mymodel-locon.safetensors

outputs: OUT.safetensors, a LoRA in kohya's layout, read back before it is kept; the log says how much of the
difference the rank keeps.
"""


def add_parser(sub) -> None:
    p = sub.add_parser("extract", help="a LoRA from a fine-tuned model's difference from its base (kohya's "
                                       "extract_lora_from_models)",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Extract a LoRA from TUNED - BASE by SVD, as kohya's extract_lora_from_models "
                                   "does: a DreamBooth or fine-tuned model as a small file. The models are only read.")
    p.add_argument("tuned", metavar="TUNED", help="the fine-tuned model: a diffusers folder, a single file or a "
                                                  "downloaded hub id")
    p.add_argument("--out", required=True, metavar="OUT.safetensors", help="the LoRA file to write")
    add_settings_options(p, ExtractSettings)  # every setting, with its help, from config/extract.py
    p.add_argument("--overwrite", action="store_true", help="replace OUT when it exists")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(run=run)


def run(args) -> int:
    from personae.cli.progress import TerminalProgress
    from personae.config.base import parse_settings
    from personae.jobs.extract import run_extract

    settings = parse_settings(ExtractSettings, settings_values(args, ExtractSettings), "the extract options")
    progress = TerminalProgress(quiet=args.quiet)
    try:
        out = run_extract(args.tuned, args.out, settings, overwrite=args.overwrite, on_event=progress)
    finally:
        progress.close()
    print(f"wrote {out}")
    return 0
