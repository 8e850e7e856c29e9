"""`personae convert FILE --to kohya|diffusers`: LoRA files (any layout generate reads) to either layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from personae.outputs import Kind

CONVERTED_LORA = Kind("convert", "a converted LoRA", "personae convert", layout=("pytorch_lora_weights.safetensors",))
EXAMPLES = """examples:
  personae convert downloads/style.safetensors --to diffusers          # -> downloads/style_diffusers/
  personae convert pytorch_lora_weights.safetensors --to kohya --out me.safetensors
  personae convert my_sd_scripts_lora.safetensors --to diffusers --out converted/
  personae convert old_pytorch_lora_weights.bin --allow-pickle --to kohya   # the 2023 attention-processor layout
  # a rank-128 LoRA cut to rank 32 (kohya's resize_lora), or each layer to 90 % of its Frobenius norm, at most 64
  personae convert big.safetensors --to kohya --rank 32 --out small.safetensors
  personae convert big.safetensors --to kohya --rank 64 --dynamic-method sv_fro --dynamic-param 0.9 \\
      --out fro.safetensors
  # a character at 0.8 and a style at 0.5 as one rank-32 LoRA (kohya's svd_merge_lora)
  personae convert me.safetensors:0.8 watercolor.safetensors:0.5 --to kohya --rank 32 --out me-watercolor.safetensors
"""


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help="convert a LoRA between the kohya/A1111 and diffusers layouts, or resize it",
                       epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Convert a LoRA file (kohya/A1111 in either UNet spelling, diffusers/peft, the old "
                                   "attention-processor layout, LyCORIS as its exact low-rank form); every alpha and rank is "
                                   "kept, so both files give the same image when loaded with diffusers' load_lora_weights.")
    p.add_argument("file", metavar="FILE[:WEIGHT]", nargs="+",
                   help="the LoRA; several (each at its weight, default 1) are merged into one with --rank (kohya's "
                        "svd_merge_lora)")
    p.add_argument("--to", required=True, choices=["kohya", "diffusers"])
    p.add_argument("--out", help="kohya: a .safetensors file; diffusers: a folder (default: beside FILE)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="accept pickle (.pt/.ckpt/.bin) input; only its tensors are read, never code")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output file, or a folder an earlier convert wrote")
    p.add_argument("--save-precision", choices=["fp32", "fp16", "bf16"], default="fp32",
                   help="the written tensors' type (kohya --save_precision; fp16 halves the file; default: fp32)")
    size = p.add_argument_group("resize options (kohya's resize_lora)")
    size.add_argument("--rank", type=int, help="cut every layer to this rank (by SVD; alpha / rank stays); with a "
                                               "dynamic method, the largest rank kept")
    size.add_argument("--conv-rank", type=int, help="the rank of convolution layers (default: --rank)")
    size.add_argument("--dynamic-method", choices=["sv_ratio", "sv_fro", "sv_cumulative"],
                      help="pick each layer's rank from its singular values: those above the largest / PARAM "
                           "(sv_ratio), the fewest reaching PARAM of the Frobenius norm (sv_fro) or of their sum "
                           "(sv_cumulative)")
    size.add_argument("--dynamic-param", type=float, metavar="PARAM", help="the dynamic method's target")
    size.add_argument("--clamp-quantile", type=float, default=0.99,
                      help="merging: each layer's factors are clamped at this quantile of their values, as kohya's "
                           "svd_merge_lora does (1: no clamping; default: 0.99)")
    p.set_defaults(run=run)


def run(args) -> int:
    import torch

    from personae.errors import UserError
    from personae.methods.lora_files import diffusers_to_kohya_file, kohya_to_diffusers_file, merge_lora_files
    from personae.models.addons import check_lora_path
    from personae.outputs import check_file_output, staged_output
    from personae.staging import explain_disk_full

    sources = [_source(text) for text in args.file]
    merging = len(sources) > 1 or sources[0][1] != 1.0
    src = Path(sources[0][0])
    resize = None
    if args.rank is not None or args.conv_rank is not None or args.dynamic_method or args.dynamic_param is not None:
        from personae.methods.lora_resize import Resize

        if args.rank is None:
            raise UserError("Resizing needs --rank: the rank every layer is cut to, or with a dynamic method the "
                            "largest one kept (kohya's --new_rank).", "Add --rank, e.g. --rank 32.")
        resize = Resize(args.rank, args.conv_rank, args.dynamic_method, args.dynamic_param)
        resize.check()
    if merging and (resize is None or resize.dynamic_method):
        raise UserError("Merging LoRAs (several files, or one at a weight) needs a fixed --rank for the merged "
                        "layers (kohya's svd_merge_lora --new_rank); dynamic ranks are for resizing one file.",
                        "Add --rank, e.g. --rank 32, without --dynamic-method.")
    if not 0 < args.clamp_quantile <= 1:
        raise UserError(f"--clamp-quantile {args.clamp_quantile} is not a quantile.", "Give one in (0, 1], e.g. 0.99.")
    notes: list[str] = []
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.save_precision]
    # the default output's name says what was done
    tag = f"_merged_rank{args.rank}" if merging else f"_rank{args.rank}" if resize else ""
    for path, _ in sources:  # by content (damaged, foreign or unwanted pickles stop here); or a peft folder
        check_lora_path(Path(path), args.allow_pickle)
        if args.out and Path(path).expanduser().resolve() == Path(args.out).expanduser().resolve():
            raise UserError(f"--out {args.out} is the input {path}; personae never writes its inputs.",
                            "Choose another output name.")
    try:
        if args.to == "diffusers":
            dst = Path(args.out) if args.out else src.with_name(src.stem + tag + "_diffusers")
            if dst.suffix == ".safetensors":
                raise UserError(f"--out {dst}: --to diffusers writes a folder (holding pytorch_lora_weights.safetensors).",
                                "Give a folder name, e.g. --out lora_diffusers.")
            with staged_output(dst, CONVERTED_LORA, replace=args.overwrite) as work:  # a full disk: explained there
                if merging:
                    notes.append(merge_lora_files(sources, work, "diffusers", resize, args.clamp_quantile,
                                                  args.allow_pickle, dtype)[1])
                else:
                    kohya_to_diffusers_file(src, work, allow_pickle=args.allow_pickle, resize=resize, notes=notes,
                                            dtype=dtype)
            out = dst / "pytorch_lora_weights.safetensors"
        else:
            dst = Path(args.out) if args.out else src.with_name(
                src.stem.replace("pytorch_lora_weights", "lora") + (tag or "_kohya") + ".safetensors")
            if dst.suffix != ".safetensors":
                raise UserError(f"--out {dst}: --to kohya writes one .safetensors file.", "Give a name ending in .safetensors.")
            with explain_disk_full(dst):
                if merging:
                    out, said = merge_lora_files(sources, check_file_output(dst, args.overwrite), "kohya", resize,
                                                 args.clamp_quantile, args.allow_pickle, dtype)
                    notes.append(said)
                else:
                    out = diffusers_to_kohya_file(src, check_file_output(dst, args.overwrite),
                                                  allow_pickle=args.allow_pickle, resize=resize, notes=notes,
                                                  dtype=dtype)
    except (ValueError, KeyError, IndexError, RuntimeError, TypeError) as exc:
        raise UserError(f"{src} could not be converted: {str(exc).rstrip('.')}.",
                        "Check that it is a LoRA for Stable Diffusion 1.x in the other layout.") from None
    for note in notes:
        print(note)
    print(f"wrote {out}")
    return 0



def _source(text: str) -> tuple[str, float]:
    """FILE or FILE:WEIGHT (a path that exists as written is a path, colons and all)."""
    from personae.errors import UserError

    head, colon, tail = text.rpartition(":")
    if Path(text).exists() or not colon or not head:
        return text, 1.0
    try:
        return head, float(tail)
    except ValueError:
        raise UserError(f"{text}: the weight after the colon, {tail!r}, is not a number.",
                        "Write FILE or FILE:WEIGHT, e.g. style.safetensors:0.5.") from None
