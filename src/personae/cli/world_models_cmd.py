"""`personae world controlnet OUT` / `control-eval`, `personae world img2img-eval`, `personae world zero-snr OUT`
and `personae world motion OUT` / `motion-eval`: the world model's ControlNet, img2img, zero-terminal-SNR fine-tune
and motion adapter, trained and measured."""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from pathlib import Path

CONTROLNET_EXAMPLES = """examples:
  personae world controlnet ./world-controlnet          # the shipped run (7 min of CPU, one thread)
  personae world controlnet ./cn --steps 200 --set eval.every=0 --set dataset_size=2048
  personae world control-eval --out placement            # the table of docs/world.md, for the shipped ControlNet
  # a control: any picture of a shape (here a ring somewhere on the canvas); generate draws its canny edges
  personae world render pic --shapes ring --colours red --backgrounds blue --shots "full shot" --count 1 --seed 3
  personae generate --model ./world --prompt "a green ring on a yellow background, full shot" \\
      --control canny:pic/0000-red-ring-on-blue-full.png --controlnet canny=./world-controlnet --pixel-perfect

"""


def _training_parser(kinds, name: str, help: str, settings_class, examples: str, description: str, writes: str,
                     run) -> None:
    """`personae world NAME OUT [--set k=v] [--steps N] [--overwrite] [--quiet]`: a training command whose settings
    are listed in its help (defaults: the run of docs/world.md)."""
    from personae.cli.options import settings_epilog

    p = kinds.add_parser(name, help=help, formatter_class=argparse.RawDescriptionHelpFormatter,
                         epilog=examples + "\n" + settings_epilog(settings_class, "settings (--set KEY=VALUE; defaults "
                                                                                  "are the run of docs/world.md)"),
                         description=description)
    p.add_argument("out", metavar="OUT", help=f"folder to write ({writes})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    p.add_argument("--steps", type=int, help="training steps (shortcut for --set steps=N)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if personae wrote it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def _add_controlnet(kinds) -> None:
    from personae.world.controlnet_settings import WorldControlNet

    _training_parser(kinds, "controlnet", "train the world model's ControlNet (shapes placed by a control map)",
                     WorldControlNet, CONTROLNET_EXAMPLES,
                     "Train a ControlNet for the world model (ControlNetModel.from_unet of its UNet, zero convolutions) "
                     "from rendered pairs: a control map (canny edges or a silhouette) and the picture, the shape at "
                     "any position and size. Writes OUT as a diffusers ControlNet folder with OUT/training/ (settings, "
                     "losses, measurements, sample sheets). Same settings and thread count, same weights.",
                     "a diffusers ControlNet folder", run_controlnet)
    e = kinds.add_parser("control-eval", help="measure how well a world ControlNet places shapes",
                         epilog=CONTROLNET_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Draw held-out controls (shapes and colour pairs the ControlNet never trained "
                                     "on, each size, positions anywhere) through `personae generate --control`, "
                                     "per control type and guidance window, with no control and at weight 0, and "
                                     "read every picture back with the exact checker. Writes table.md, "
                                     "results.json, controls/ and sheets/ to DIR and prints the table.")
    e.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    e.add_argument("--controlnet", default="world", help="`world` (the shipped ControlNet, default) or a folder")
    e.add_argument("--model", default="world", help="`world` (the shipped model, default) or a model folder")
    e.add_argument("--controls", type=int, default=64, help="held-out controls per row (default 64)")
    e.add_argument("--subject-lora", metavar="FILE", help="a LoRA that taught the star (examples/storyboard-world's "
                                                          "star.yaml): also measure white stars placed by the control")
    e.add_argument("--overwrite", action="store_true", help="replace DIR if this command wrote it")
    e.set_defaults(run=run_control_eval)


IMG2IMG_EXAMPLES = """examples:
  personae world img2img-eval --out img2img              # the tables of docs/world.md (11 min of CPU, one thread)
  personae world img2img-eval --out quick --cases 8 --cfg 1,7
  # the recipe by hand: a circle's picture, a square at the same place (generate draws its canny edges), a prompt
  # naming the square (a silhouette drawn over the picture works the same: --control raw:FILE --controlnet raw=DIR)
  personae world render circle --shapes circle --colours red --backgrounds blue --shots "medium shot" --count 1 --seed 3
  personae world render square --shapes square --colours red --backgrounds blue --shots "medium shot" --count 1 --seed 3
  personae generate --model ./world --prompt "a red square on a blue background, medium shot" \\
      --init-image circle/0000-red-circle-on-blue-medium.png --strength 0.75 \\
      --control canny:square/0000-red-square-on-blue-medium.png --controlnet canny=./world-controlnet --pixel-perfect

"""
MOTION_EXAMPLES = """examples:
  personae world motion ./world-motion                  # the run of docs/world.md, "World motion" (22 min)
  personae world motion ./wm --steps 200 --set dataset_size=256 --set eval.clips=6 --set eval.long_clips=0
  personae world motion ./wm --set lora.rank=0          # the motion modules and the condition, no LoRA
  personae world motion ./wm --set base=world --set condition.learning_rate=0 --set words.learning_rate=5e-3
  personae world motion-eval --out motion --motion-adapter ./world-motion   # its table again (LoRA, condition found)
  personae model world-zero-snr ./world-zero-snr && personae animate --model ./world-zero-snr \\
      --motion-adapter ./world-motion --lora ./world-motion/motion-lora.safetensors --sampler DDIM --cfg 4 \\
      --clip-skip 1 --prompt "a white square on a red background, full shot, moving up" --out clip.gif

captions: a world caption, then the motion: "moving left", "moving right", "moving up", "moving down", "growing"
(from a full shot to a close-up; say "medium shot") or "still".

"""


def _add_img2img(kinds) -> None:
    e = kinds.add_parser("img2img-eval", help="measure img2img on the world: the strength curve and a shape changed "
                                              "in place", epilog=IMG2IMG_EXAMPLES,
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Draw init pictures (any shape, size, colours and place) through `personae "
                                     "generate --init-image --strength` with a prompt naming other colours, at "
                                     "strength 0 to 1 in 0.1 steps and each --cfg, and count with the exact checker "
                                     "the outputs that keep the init's background, colour, shape and position and "
                                     "those that follow the prompt. Then the face-to-animal recipe in miniature: "
                                     "an init picture of one shape, the silhouette of another drawn at its place as "
                                     "a `raw` control (and once canny edges of a picture of it), a prompt naming the "
                                     "other shape, and the prompt alone for comparison; counted right when the "
                                     "other shape comes out at the init's place, size and background. Writes "
                                     "table.md, results.json, inits/ and sheets/ to DIR and prints the tables.")
    e.add_argument("--out", required=True, metavar="DIR", help="folder to write (new, or one this command wrote)")
    e.add_argument("--model", default="world", help="`world` (the shipped model, default) or a model folder")
    e.add_argument("--controlnet", default="world", help="`world` (the shipped ControlNet, default) or a folder")
    e.add_argument("--cases", type=int, default=64, help="init pictures per strength and in the recipe (default 64)")
    e.add_argument("--cfg", default="1,2,4,7", metavar="S1,S2", help="the curve's CFG scales (default 1,2,4,7; the "
                                                                     "recipe runs at generate's default, 7)")
    e.add_argument("--overwrite", action="store_true", help="replace DIR if this command wrote it")
    e.set_defaults(run=run_img2img_eval)


def run_img2img_eval(args) -> int:
    from personae.cli.progress import TerminalProgress
    from personae.errors import UserError
    from personae.outputs import staged_output
    from personae.world.img2img_eval import IMG2IMG_EVAL, measure_img2img
    from personae.world.model import WORLD_CONTROLNET_DIR, world_model_dir

    if args.cases < 1:
        raise UserError(f"--cases {args.cases} draws nothing.", "Give --cases 1 or more (default 64).")
    try:
        cfgs = tuple(float(v) for v in args.cfg.split(","))
    except ValueError:
        raise UserError(f"--cfg {args.cfg} is not a list of numbers.", "Write it as --cfg 1,7.") from None
    if any(not 1 <= c <= 30 for c in cfgs):
        raise UserError(f"--cfg {args.cfg} has a scale outside 1 to 30.", "Write it as --cfg 1,7.")
    controlnet = str(WORLD_CONTROLNET_DIR) if args.controlnet == "world" else args.controlnet
    if not (Path(controlnet) / "config.json").is_file():  # said now, not after the curves' 20 minutes
        raise UserError(f"--controlnet {controlnet} is not a ControlNet folder (no config.json in it).",
                        "Give `world` (the shipped one), or a folder `personae world controlnet` or `personae model "
                        "world-controlnet` wrote.")
    model = str(world_model_dir(args.model))
    progress = TerminalProgress(quiet=True)
    with staged_output(args.out, IMG2IMG_EVAL, replace=args.overwrite) as work:
        measure_img2img(model, controlnet, work, cases=args.cases, cfgs=cfgs, on_event=progress)
    print((Path(args.out) / "table.md").read_text(), end="")
    return 0


def _add_motion(kinds) -> None:
    from personae.world.motion_settings import WorldMotion

    _training_parser(kinds, "motion", "train the world model's motion adapter (shapes that move as the prompt says)",
                     WorldMotion, MOTION_EXAMPLES,
                     "Train an AnimateDiff motion adapter (diffusers MotionAdapter sized to the world UNet) on the "
                     "frozen world model from rendered 16-frame clips of one shape moving left, right, up, down, "
                     "growing or still, the motion named in the caption, and with them a LoRA on the image UNet's "
                     "cross-attention and one embedding per motion phrase, so the UNet reads the motion words. Writes "
                     "OUT as a diffusers MotionAdapter folder with the LoRA beside it (OUT/motion-lora.safetensors, "
                     "kohya layout: animate --lora), the words' A1111 embeddings (OUT/motion-words/, animate "
                     "--embedding) and OUT/training/ (settings, losses, measurements, a sheet and GIFs). Same settings "
                     "and thread count, same weights.",
                     "a diffusers MotionAdapter folder", run_motion)
    e = kinds.add_parser("motion-eval", help="measure how well a world motion adapter moves shapes",
                         epilog=MOTION_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Animate held-out clips (colour pairs the adapter never trained on) through "
                                     "`personae animate`'s code: 16 frames at motion scale 1 and 0, and 32 frames in "
                                     "context windows; read every frame back with the exact checker. Writes "
                                     "table.md, results.json, sheets/ and clips/ to DIR and prints the table.")
    e.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    e.add_argument("--motion-adapter", required=True, metavar="DIR",
                   help="the adapter to measure: a `personae world motion` folder")
    e.add_argument("--lora", metavar="FILE", help="a LoRA loaded with the adapter (as `personae animate --lora`); "
                                                  "default: the adapter folder's motion-lora.safetensors if it has "
                                                  "one; `none`: no LoRA (the folder's motion-words/ embeddings are "
                                                  "always loaded)")
    e.add_argument("--model", help="`world` (the shipped model) or a model folder (default: the model the adapter "
                                    "learnt on, as its training record says)")
    e.add_argument("--clips", type=int, default=32, help="held-out 16-frame clips per row (default 32)")
    e.add_argument("--long-clips", type=int, default=12, help="held-out 32-frame clips (default 12; 0: none)")
    e.add_argument("--overwrite", action="store_true", help="replace DIR if this command wrote it")
    e.set_defaults(run=run_motion_eval)


@contextmanager
def command_threads(count: int):
    """A training command owns its process: torch runs at the thread count its weights reproduce at, and is set
    back afterwards for a caller that runs the command in its own process (tests)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def trained(args, settings_class, train, steps_key: str = "steps"):
    """A world training command: its settings from --set (and --steps, as `steps_key`), then `train(settings,
    OUT, overwrite=..., on_event=...)` at the settings' thread count, with a progress bar. Returns both."""
    from personae.cli.progress import TerminalProgress
    from personae.config.base import apply_overrides, parse_settings

    overrides = list(args.set) + ([f"{steps_key}={args.steps}"] if args.steps is not None else [])
    settings = parse_settings(settings_class, apply_overrides({}, overrides), "--set")
    progress = TerminalProgress(quiet=args.quiet)
    try:
        with command_threads(settings.threads):
            result = train(settings, args.out, overwrite=args.overwrite, on_event=progress)
    finally:
        progress.close()
    return settings, result


def run_controlnet(args) -> int:
    from personae.world.controlnet_settings import WorldControlNet
    from personae.world.controlnet_train import train_controlnet

    settings, result = trained(args, WorldControlNet, train_controlnet)
    print(f"trained the world ControlNet in {result.seconds['total'] / 60:.1f} min ({result.steps} steps; training "
          f"{result.seconds['train'] / 60:.1f} min, measuring {result.seconds['measure'] / 60:.1f} min) into {result.out}")
    last = result.evals[-1]
    for kind in settings.control_types:
        print(f"{kind}: placed {last[kind]['placed']:.0%}, prompt {last[kind]['prompt']:.0%} of "
              f"{settings.eval.controls} held-out controls")
    return 0


def run_control_eval(args) -> int:
    from personae.cli.progress import TerminalProgress
    from personae.outputs import staged_output
    from personae.world.control_eval import CONTROL_EVAL, measure_controlnet
    from personae.world.model import WORLD_CONTROLNET_DIR, world_model_dir

    controlnet = str(WORLD_CONTROLNET_DIR) if args.controlnet == "world" else args.controlnet
    model = str(world_model_dir(args.model))
    progress = TerminalProgress(quiet=True)
    with staged_output(args.out, CONTROL_EVAL, replace=args.overwrite) as work:
        measure_controlnet(controlnet, model, work, count=args.controls, subject_lora=args.subject_lora,
                           on_event=progress)
    print((Path(args.out) / "table.md").read_text(), end="")
    return 0


def run_motion(args) -> int:
    from personae.world.motion_settings import WorldMotion
    from personae.world.motion_train import train_motion

    settings, result = trained(args, WorldMotion, train_motion)
    print(f"trained the world motion adapter in {result.seconds['total'] / 60:.1f} min ({result.steps} steps; "
          f"training {result.seconds['train'] / 60:.1f} min, measuring {result.seconds['measure'] / 60:.1f} min) "
          f"into {result.out}")
    for row in result.evals[-1]["rows"]:
        print(f"{row['run']}: identity {row['identity']:.0%}, direction {row['direction']:.0%} of {row['clips']} "
              "held-out clips")
    return 0


def run_motion_eval(args) -> int:
    from personae.cli.progress import TerminalProgress
    from personae.outputs import staged_output
    from personae.world.model import world_model_dir
    from personae.world.motion_eval import MOTION_EVAL, adapter_base, adapter_lora, adapter_words, measure_motion

    adapter = args.motion_adapter
    lora = adapter_lora(adapter) if args.lora is None else None if args.lora == "none" else args.lora
    model = adapter_base(adapter) if args.model is None else str(world_model_dir(args.model))
    progress = TerminalProgress(quiet=True)
    with staged_output(args.out, MOTION_EVAL, replace=args.overwrite) as work:
        measure_motion(model, adapter, work, clips=args.clips, long_clips=args.long_clips, on_event=progress,
                       lora=lora, embeddings=adapter_words(adapter))
    print((Path(args.out) / "table.md").read_text(), end="")
    return 0


ZERO_SNR_EXAMPLES = """examples:
  personae world zero-snr ./world-zero-snr               # the run of docs/world.md (about 10 min on 2 threads)
  personae world zero-snr ./zs --steps 200 --set dataset_size=1024
  personae generate --model ./world-zero-snr --prompt "a red circle on a blue background, medium shot" --cfg 4
"""


def _add_zero_snr(kinds) -> None:
    from personae.world.zero_snr_settings import WorldZeroSnr

    _training_parser(kinds, "zero-snr", "fine-tune the world model to v-prediction at zero terminal SNR (a base for "
                                        "motion adapters)", WorldZeroSnr, ZERO_SNR_EXAMPLES,
                     "Fine-tune the world model's UNet to predict the velocity on its noise schedule rescaled to zero "
                     "terminal SNR and sampled from the last timestep (Lin et al. 2023), so the starting noise no "
                     "longer decides where the shape is. Writes OUT as a diffusers model folder (the new scheduler "
                     "config in it) with OUT/training/ (settings, losses, the checker's scores, a sheet). Same settings "
                     "and thread count, same weights.", "a diffusers model folder", run_zero_snr)


def run_zero_snr(args) -> int:
    from personae.world.zero_snr import fine_tune_zero_snr
    from personae.world.zero_snr_settings import WorldZeroSnr

    settings, result = trained(args, WorldZeroSnr, fine_tune_zero_snr)
    print(f"fine-tuned the world model to zero terminal SNR in {result.seconds['total'] / 60:.1f} min "
          f"({result.steps} steps) into {result.out}")
    print(f"{settings.eval.samples} pictures of the fixed prompts, right: " +
          ", ".join(f"{k} {v:.0%}" for k, v in result.scores.items()))
    return 0
