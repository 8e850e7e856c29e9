"""`personae model tiny|world OUT_DIR`: write the tiny random model or the pretrained shapes-world model."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """examples:
  personae model tiny ./tiny
  personae model tiny ./tiny --single-file ./tiny.safetensors --seed 3
"""
WORLD_EXAMPLES = """examples:
  personae model world ./world
  personae generate --model ./world --prompt "a green square on a yellow background, close-up" --sampler DDIM --cfg 4
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
    world = kinds.add_parser("world", help="the small shapes-world model, pretrained (32x32)", epilog=WORLD_EXAMPLES,
                             formatter_class=argparse.RawDescriptionHelpFormatter,
                             description="Write the shapes-world model that ships with personae (SD-1.5 "
                                         "architecture, pretrained by `personae world pretrain`) as a diffusers folder.")
    world.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (diffusers layout)")
    world.set_defaults(run=run_world)
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


def run_world(args) -> int:
    from personae.models.world_model import write_world_model

    out = write_world_model(args.out_dir)
    print(f"wrote the shapes-world model to {out}")
    return 0
