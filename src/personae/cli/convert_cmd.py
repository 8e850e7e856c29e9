"""`personae convert FILE --to kohya|diffusers`: LoRA files between the two layouts."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """examples:
  personae convert runs/demo/lora.safetensors --to diffusers           # -> runs/demo/lora_diffusers/
  personae convert pytorch_lora_weights.safetensors --to kohya --out me.safetensors
  personae convert my_sd_scripts_lora.safetensors --to diffusers --out converted/
"""


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help="convert a LoRA between the kohya/A1111 and diffusers layouts", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Convert a LoRA file; every alpha and rank is kept, so both files give the same "
                                   "image when loaded with diffusers' load_lora_weights.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--to", required=True, choices=["kohya", "diffusers"])
    p.add_argument("--out", help="kohya: a .safetensors file; diffusers: a folder, or a .safetensors file "
                                 "(default: beside FILE)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="accept pickle (.pt/.ckpt/.bin) input; only its tensors are read, never code")
    p.set_defaults(run=run)


def run(args) -> int:
    import tempfile

    from safetensors.torch import save_file

    from personae.errors import UserError
    from personae.methods.lora_files import diffusers_to_kohya_file, kohya_to_diffusers_file
    from personae.models.model_files import PICKLE, check_model_file, read_state_dict

    src = Path(args.file)
    kind = check_model_file(src, "LoRA", args.allow_pickle)  # by content: damaged, foreign or unwanted pickles stop here
    with tempfile.TemporaryDirectory(prefix="personae-convert-") as tmp:
        readable = src
        if kind == PICKLE:  # its tensors (weights-only unpickler) into a safetensors file the converters read
            readable = Path(tmp) / (src.stem + ".safetensors")
            save_file({k: v.contiguous() for k, v in read_state_dict(src, kind)[0].items()}, str(readable))
        try:
            out = _convert(args, src, readable, kohya_to_diffusers_file, diffusers_to_kohya_file)
        except (ValueError, KeyError, IndexError, RuntimeError, TypeError) as exc:
            raise UserError(f"{src} could not be converted: {str(exc).rstrip('.')}.",
                            "Check that it is a LoRA for Stable Diffusion 1.x in the other layout.") from None
    if not out.is_file():
        raise UserError(f"Nothing was written to {out}.", "Check that --out names a folder or a .safetensors file you "
                                                          "can write to.")
    print(f"wrote {out}")
    return 0


def _convert(args, src: Path, readable: Path, to_diffusers, to_kohya) -> Path:
    if args.to == "diffusers":
        out = Path(args.out) if args.out else src.with_name(src.stem + "_diffusers")
        if out.suffix.lower() == ".safetensors":  # a file: its folder and name
            out.parent.mkdir(parents=True, exist_ok=True)
            return to_diffusers(readable, out.parent, weight_name=out.name)
        if out.exists() and not out.is_dir():
            from personae.errors import UserError

            raise UserError(f"--out {out} is a file, but --to diffusers writes a folder.",
                            "Give a folder, or a new file name ending in .safetensors.")
        return to_diffusers(readable, out)
    dst = Path(args.out) if args.out else src.with_name(src.stem.replace("pytorch_lora_weights", "lora") + "_kohya.safetensors")
    dst.parent.mkdir(parents=True, exist_ok=True)
    return to_kohya(readable, dst)
