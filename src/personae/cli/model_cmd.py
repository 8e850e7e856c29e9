"""`personae model tiny|tiny-motion|tiny-controlnet|tiny-ip-adapter|world|world-controlnet|world-zero-snr|world-motion
DIR`: the tiny test models, or the pretrained shapes-world model, its ControlNet, its zero-terminal-SNR fine-tune and the motion
adapter trained on that."""

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
IP_ADAPTER_EXAMPLES = """examples:
  personae model tiny ./tiny && personae model tiny-ip-adapter ./tiny-ip-adapter --base ./tiny
  personae generate --model ./tiny --prompt "a cat" --ip-adapter photo.png:0.7 \\
      --ip-adapter-model ./tiny-ip-adapter/ip-adapter-plus_sd15.safetensors \\
      --image-encoder ./tiny-ip-adapter/image_encoder
"""
WORLD_EXAMPLES = """examples:
  personae model world ./world
  personae generate --model ./world --prompt "a green square on a yellow background, close-up" --sampler DDIM --cfg 4
"""
WORLD_CONTROLNET_EXAMPLES = """examples:
  personae model world ./world && personae model world-controlnet ./world-controlnet
  personae generate --model ./world --prompt "a red ring on a blue background, full shot" \\
      --control canny:picture.png --controlnet canny=./world-controlnet --pixel-perfect
  personae generate --model ./world --prompt "a red ring on a blue background, full shot" \\
      --control raw:silhouette.png --controlnet raw=./world-controlnet
"""
WORLD_ZERO_SNR_EXAMPLES = """examples:
  personae model world-zero-snr ./world-zero-snr
  personae generate --model ./world-zero-snr --prompt "a red ring on a blue background, full shot" --sampler DDIM
"""
WORLD_MOTION_EXAMPLES = """examples:
  personae model world-zero-snr ./world-zero-snr && personae model world-motion ./world-motion
  personae animate --model ./world-zero-snr --motion-adapter ./world-motion \\
      --lora ./world-motion/motion-lora.safetensors --sampler DDIM --cfg 4 --clip-skip 1 \\
      --prompt "a white square on a red background, medium shot, moving left" --out clip.gif
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
    _overwrite(tiny)
    tiny.set_defaults(run=run_tiny)
    motion = kinds.add_parser("tiny-motion", help="a tiny random AnimateDiff motion adapter that fits the tiny model",
                              epilog=MOTION_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
                              description="Write a tiny AnimateDiff MotionAdapter (real class, random seeded weights) "
                                          "matching the tiny model's UNet, as a diffusers folder.")
    motion.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (diffusers layout)")
    motion.add_argument("--single-file", metavar="FILE.safetensors", help="also write it as one .safetensors file")
    motion.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    _overwrite(motion)
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
    _overwrite(control)
    control.set_defaults(run=run_tiny_controlnet)
    ip = kinds.add_parser("tiny-ip-adapter", help="tiny IP-Adapters (plain, plus, full-face) and their image encoder",
                          epilog=IP_ADAPTER_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
                          description="Write a folder laid out as h94/IP-Adapter's models/: a tiny plain, plus and "
                                      "full-face IP-Adapter for the tiny model (random seeded weights, in the files' "
                                      "own layout) and the tiny CLIP image encoder they read (image_encoder/).")
    ip.add_argument("out_dir", metavar="DIR", help="folder to write")
    ip.add_argument("--base", metavar="TINY_MODEL_DIR", help="the tiny model whose UNet they fit (default: seed 0)")
    ip.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    _overwrite(ip)
    ip.set_defaults(run=run_tiny_ip_adapter)
    _shipped(kinds, "world", "the small shapes-world model, pretrained (32x32)", WORLD_EXAMPLES, run_world,
             "Write the shapes-world model that ships with personae (SD-1.5 architecture, pretrained by `personae "
             "world pretrain`) as a diffusers folder.")
    _shipped(kinds, "world-controlnet", "the shapes-world model's ControlNet, trained (canny, silhouette)",
             WORLD_CONTROLNET_EXAMPLES, run_world_controlnet,
             "Write the world model's ControlNet that ships with personae (trained by `personae world controlnet`: it "
             "puts the prompt's shape where a canny map or a silhouette says) as a diffusers folder, with its training "
             "record.")
    _shipped(kinds, "world-zero-snr", "the shapes-world model fine-tuned to zero terminal SNR (v-prediction): the "
                                      "world motion adapter's base", WORLD_ZERO_SNR_EXAMPLES, run_world_zero_snr,
             "Write the zero-terminal-SNR fine-tune of the world model that ships with personae (trained by `personae "
             "world zero-snr`: v-prediction on a schedule whose last step is pure noise, so a clip's layout comes from "
             "the prompt and not from the noise) as a diffusers folder, with its training record. Sample it with DDIM "
             "or Euler (docs/world.md).")
    _shipped(kinds, "world-motion", "the shapes-world motion adapter (AnimateDiff), trained on world-zero-snr",
             WORLD_MOTION_EXAMPLES, run_world_motion,
             "Write the world model's motion adapter that ships with personae (trained by `personae world motion`: one "
             "shape moving smoothly through 16 frames) as a diffusers MotionAdapter folder, with the LoRA "
             "(motion-lora.safetensors) and the motion condition (motion-condition.safetensors, read by personae "
             "animate) it was trained with, and its training record. On the model it learnt on (`personae model "
             "world-zero-snr`) it keeps the shape and moves it the way the prompt says (docs/world.md, \"World "
             "motion\").")
    p.set_defaults(run=lambda args: p.print_help() or 2)


def _shipped(kinds, name: str, help: str, epilog: str, run, description: str) -> None:
    """`personae model NAME OUT_DIR [--overwrite]` for a model that ships inside the package."""
    kind = kinds.add_parser(name, help=help, epilog=epilog, description=description,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    kind.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (diffusers layout)")
    _overwrite(kind)
    kind.set_defaults(run=run)


def _overwrite(p) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace a model personae wrote there before (never a folder or file of your own)")


def _checked_out(args) -> Path:
    """--single-file must be a .safetensors name; the folder itself is checked by the writer (outputs.py)."""
    from personae.errors import UserError

    out = Path(args.out_dir)
    if getattr(args, "single_file", None) and not str(args.single_file).endswith(".safetensors"):
        raise UserError(f"--single-file {args.single_file}: the name must end in .safetensors.")
    return out


def _wrote(what: str, out: Path, single_file) -> int:
    print(f"wrote {what} to {out}" + (f" and {single_file}" if single_file else ""))
    return 0


def run_tiny(args) -> int:
    from personae.models.tiny import write_tiny_model

    out = _checked_out(args)
    write_tiny_model(out, seed=args.seed, single_file=args.single_file, overwrite=args.overwrite)
    return _wrote("tiny model", out, args.single_file)


def run_tiny_controlnet(args) -> int:
    from personae.models.controlnet import write_tiny_controlnet

    out = _checked_out(args)
    write_tiny_controlnet(out, base=args.base, seed=args.seed, single_file=args.single_file, overwrite=args.overwrite)
    return _wrote("tiny ControlNet", out, args.single_file)


def run_tiny_ip_adapter(args) -> int:
    from personae.models.ip_adapter import write_tiny_ip_adapter

    out = _checked_out(args)
    write_tiny_ip_adapter(out, base=args.base, seed=args.seed, overwrite=args.overwrite)
    return _wrote("tiny IP-Adapters", out, None)


def run_tiny_motion(args) -> int:
    from personae.models.tiny_motion import write_tiny_motion_adapter

    out = _checked_out(args)
    write_tiny_motion_adapter(out, seed=args.seed, single_file=args.single_file, overwrite=args.overwrite)
    return _wrote("tiny motion adapter", out, args.single_file)


def run_world(args) -> int:
    from personae.world.model import write_world_model

    out = write_world_model(_checked_out(args), overwrite=args.overwrite)
    return _wrote("the shapes-world model", out, None)


def run_world_motion(args) -> int:
    from personae.world.model import write_world_motion

    out = write_world_motion(_checked_out(args), overwrite=args.overwrite)
    return _wrote("the shapes-world motion adapter", out, None)


def run_world_zero_snr(args) -> int:
    from personae.world.model import write_world_zero_snr

    out = write_world_zero_snr(_checked_out(args), overwrite=args.overwrite)
    return _wrote("the zero-terminal-SNR shapes-world model", out, None)


def run_world_controlnet(args) -> int:
    from personae.world.model import write_world_controlnet

    out = write_world_controlnet(_checked_out(args), overwrite=args.overwrite)
    return _wrote("the shapes-world ControlNet", out, None)
