"""`personae model tiny OUT_DIR` / `tiny-motion OUT_DIR` / `tiny-controlnet DIR`: write the tiny test models."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """examples:
  personae model tiny ./tiny
  personae model tiny ./tiny --single-file ./tiny.safetensors --seed 3
  personae model tiny-controlnet ./tiny-controlnet --base ./tiny --single-file ./tiny-controlnet.safetensors
"""
MOTION_EXAMPLES = """examples:
  personae model tiny-motion ./tiny-motion
  personae model tiny-motion ./tiny-motion --single-file ./tiny-motion.safetensors
  personae animate --model ./tiny --motion-adapter ./tiny-motion --prompt "a cat" --out clip.gif
"""


def add_parser(sub) -> None:
    p = sub.add_parser("model", help="write the bundled test models", description="Write the bundled test models.")
    kinds = p.add_subparsers(dest="kind", metavar="KIND")
    tiny = kinds.add_parser("tiny", help="the tiny random SD-1.5-architecture model (64x64)", epilog=EXAMPLES,
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            description="Write a tiny SD-1.5-architecture model (real classes, random seeded weights, "
                                        "SD-1.5 tokenizer) as a diffusers folder; same seed, same bytes.")
    tiny.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (diffusers layout)")
    tiny.add_argument("--single-file", metavar="FILE.safetensors",
                      help="also write the same weights as one file in the original SD checkpoint layout")
    tiny.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    tiny.set_defaults(run=run_tiny)
    motion = kinds.add_parser("tiny-motion", help="a tiny random AnimateDiff motion adapter that fits the tiny model",
                              epilog=MOTION_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
                              description="Write a tiny AnimateDiff MotionAdapter (real class, random seeded weights) "
                                          "matching the tiny model's UNet, as a diffusers folder.")
    motion.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (diffusers layout)")
    motion.add_argument("--single-file", metavar="FILE.safetensors", help="also write it as one .safetensors file")
    motion.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    motion.set_defaults(run=run_tiny_motion)
    control = kinds.add_parser("tiny-controlnet", help="a tiny ControlNet for the tiny model", epilog=EXAMPLES,
                               formatter_class=argparse.RawDescriptionHelpFormatter,
                               description="Write a tiny ControlNet (ControlNetModel.from_unet of the tiny UNet) as a "
                                           "diffusers folder. Its zero convolutions get small seeded random values, "
                                           "since an untrained ControlNet changes nothing; same seed, same bytes.")
    control.add_argument("out_dir", metavar="DIR", help="folder to write (diffusers layout)")
    control.add_argument("--base", metavar="TINY_MODEL_DIR", help="the tiny model whose UNet it copies (default: seed 0)")
    control.add_argument("--seed", type=int, default=0, help="seed of the perturbed weights (default 0)")
    control.add_argument("--single-file", metavar="FILE.safetensors",
                         help="also write it as one file in the original ControlNet layout (as A1111 users have them)")
    control.set_defaults(run=run_tiny_controlnet)
    p.set_defaults(run=lambda args: p.print_help() or 2)


def run_tiny(args) -> int:
    from personae.errors import UserError
    from personae.models.tiny import write_tiny_model

    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder.", "Choose another OUT_DIR.")
    if args.single_file and not str(args.single_file).endswith(".safetensors"):
        raise UserError(f"--single-file {args.single_file}: the name must end in .safetensors.")
    write_tiny_model(out, seed=args.seed, single_file=args.single_file)
    print(f"wrote tiny model to {out}" + (f" and {args.single_file}" if args.single_file else ""))
    return 0


def run_tiny_controlnet(args) -> int:
    from personae.errors import UserError
    from personae.models.controlnet import write_tiny_controlnet

    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder.", "Choose another DIR.")
    if args.single_file and not str(args.single_file).endswith(".safetensors"):
        raise UserError(f"--single-file {args.single_file}: the name must end in .safetensors.")
    write_tiny_controlnet(out, base=args.base, seed=args.seed, single_file=args.single_file)
    print(f"wrote tiny ControlNet to {out}" + (f" and {args.single_file}" if args.single_file else ""))
    return 0


def run_tiny_motion(args) -> int:
    from personae.errors import UserError
    from personae.models.tiny_motion import write_tiny_motion_adapter

    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder.", "Choose another OUT_DIR.")
    if args.single_file and not str(args.single_file).endswith(".safetensors"):
        raise UserError(f"--single-file {args.single_file}: the name must end in .safetensors.")
    write_tiny_motion_adapter(out, seed=args.seed, single_file=args.single_file)
    print(f"wrote tiny motion adapter to {out}" + (f" and {args.single_file}" if args.single_file else ""))
    return 0
