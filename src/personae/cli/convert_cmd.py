"""`personae convert FILE --to kohya|diffusers`: LoRA files (any layout generate reads) to either layout."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """examples:
  personae convert runs/demo/lora.safetensors --to diffusers           # -> runs/demo/lora_diffusers/
  personae convert pytorch_lora_weights.safetensors --to kohya --out me.safetensors
  personae convert my_sd_scripts_lora.safetensors --to diffusers --out converted/
  personae convert old_pytorch_lora_weights.bin --allow-pickle --to kohya   # the 2023 attention-processor layout
"""


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help="convert a LoRA between the kohya/A1111 and diffusers layouts", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Convert a LoRA file (kohya/A1111 in either UNet spelling, diffusers/peft, the old "
                                   "attention-processor layout, LyCORIS as its exact low-rank form); every alpha and rank is "
                                   "kept, so both files give the same image when loaded with diffusers' load_lora_weights.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--to", required=True, choices=["kohya", "diffusers"])
    p.add_argument("--out", help="kohya: a .safetensors file; diffusers: a folder (default: beside FILE)")
    p.add_argument("--allow-pickle", action="store_true", help="accept .pt/.ckpt/.bin input")
    p.set_defaults(run=run)


def run(args) -> int:
    from personae.errors import UserError
    from personae.methods.lora_files import diffusers_to_kohya_file, kohya_to_diffusers_file
    from personae.models.resolve import refuse_pickle

    src = Path(args.file)
    if not src.is_file():
        raise UserError(f"{src} does not exist.")
    refuse_pickle(src, args.allow_pickle)
    try:
        if args.to == "diffusers":
            out = kohya_to_diffusers_file(src, Path(args.out) if args.out else src.with_name(src.stem + "_diffusers"),
                                          allow_pickle=args.allow_pickle)
        else:
            dst = Path(args.out) if args.out else src.with_name(src.stem.replace("pytorch_lora_weights", "lora") + "_kohya.safetensors")
            out = diffusers_to_kohya_file(src, dst, allow_pickle=args.allow_pickle)
    except ValueError as exc:
        raise UserError(f"{src} could not be converted: {exc}.",
                        "Check that it is a LoRA for Stable Diffusion 1.x in the other layout.") from None
    print(f"wrote {out}")
    return 0
