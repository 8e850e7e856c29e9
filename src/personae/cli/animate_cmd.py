"""`personae animate`: an AnimateDiff clip as a looping GIF and/or an H.264 MP4."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  personae model tiny ./tiny && personae model tiny-motion ./tiny-motion
  personae animate --model ./tiny --motion-adapter ./tiny-motion --prompt "a cat" --steps 4 --width 64 --height 64 \\
      --out clip.gif --out clip.mp4
  personae animate --model stable-diffusion-v1-5/stable-diffusion-v1-5 --motion-adapter guoyww/animatediff-motion-adapter-v1-5-3 \\
      --lora me.safetensors:0.8 --prompt "photo of sks man smiling, wind in hair" --negative "lowres" \\
      --frames 16 --fps 8 --steps 30 --seed 7 --out me.gif
  personae animate --model ./model.safetensors --motion-adapter ./mm_sd_v15_v2.safetensors --prompt "waves" \\
      --frames 32 --out waves.mp4 --frames-dir waves-frames/       # 32 frames: overlapping 16-frame windows

defaults that work: DDIM, clip skip 2, 25 steps (25-45 is the useful range), CFG 7.5, 16 frames at 8 fps.
Clips longer than --context frames (16) are drawn in overlapping windows (FreeNoise), so they stay one
continuous motion. Settings are stored in the GIF comment, the MP4 comment tag and each frame PNG.

samplers: {samplers}
"""

ANIMATE_DEFAULTS = {"steps": "sampling steps (default 25; 25-45 works well)", "cfg": "CFG scale (default 7.5)",
                    "sampler": 'A1111 sampler name (default "DDIM"); see the list below',
                    "clip_skip": "1 = last CLIP layer, 2 = the one before (default 2)"}
_FIELDS = {"motion_adapter": "motion_adapter", "frames": "frames", "fps": "fps", "motion_scale": "motion_scale",
           "context": "context", "context_stride": "context_stride"}


def add_parser(sub) -> None:
    from personae.cli.generate_cmd import add_generate_options
    from personae.inference.samplers import SAMPLERS

    p = sub.add_parser("animate", help="AnimateDiff clip -> .gif / .mp4",
                       description="Animate a prompt with an AnimateDiff motion adapter on a Stable Diffusion 1.x model "
                                   "(with its LoRAs and embeddings) and write a looping GIF and/or an MP4.",
                       epilog=EXAMPLES.format(samplers=", ".join(SAMPLERS)),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_generate_options(p)
    for action in p._actions:  # the shared options' help states generate's defaults; animate's differ
        if action.dest in ANIMATE_DEFAULTS:
            action.help = ANIMATE_DEFAULTS[action.dest]
    p.add_argument("--motion-adapter", metavar="PATH_OR_ID",
                   help="motion adapter: diffusers folder, one .safetensors motion module, or hub id")
    p.add_argument("--frames", type=int, help="number of frames (default 16)")
    p.add_argument("--fps", type=float, help="frames per second of the GIF / MP4 (default 8)")
    p.add_argument("--motion-scale", type=float,
                   help="strength of the motion module: 0 = no motion modelling, 1 = as trained (default 1)")
    p.add_argument("--context", type=int, help="frames the motion module sees at once (default 16)")
    p.add_argument("--context-stride", type=int, help="window step for clips longer than --context (default 4)")
    p.add_argument("--out", action="append", default=[], metavar="CLIP.gif|CLIP.mp4",
                   help="output clip; the suffix picks the format; repeat for both")
    p.add_argument("--frames-dir", metavar="DIR", help="also write every frame as a PNG (with its settings) to DIR")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing --out files and an earlier clip's --frames-dir")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--yes", action="store_true", help="do not ask before a big job (asked only at a terminal)")
    p.set_defaults(run=run)


def settings_from_args(args):
    """The animate settings from the options given (the generate options mean the same as for generate)."""
    from personae.cli.generate_cmd import _FIELDS as GENERATE_FIELDS
    from personae.config.animate import AnimateSettings
    from personae.config.base import parse_settings
    from personae.errors import UserError

    data = {}
    for arg, field in {**GENERATE_FIELDS, **_FIELDS}.items():
        value = getattr(args, arg, None)
        if value is not None:
            data[field] = value
    for needed, flag in (("model", "--model"), ("prompt", "--prompt"), ("motion_adapter", "--motion-adapter")):
        if not data.get(needed):
            raise UserError(f"{flag} is required.", "See `personae animate --help` for examples.")
    return parse_settings(AnimateSettings, data, "the animate options")


def run(args) -> int:
    from personae.cli.big_jobs import confirm_big_job, estimate_seconds
    from personae.cli.progress import TerminalProgress
    from personae.jobs.animate import check_outputs, run_animate

    settings = settings_from_args(args)
    check_outputs(args.out, args.frames_dir, args.overwrite)  # a bad --out fails before the model loads
    confirm_big_job("This clip", settings.frames, estimate_seconds(
        settings.model, 1, settings.steps, settings.width, settings.height, settings.cfg, settings.device,
        frames=settings.frames), args.yes)
    progress = TerminalProgress(quiet=args.quiet)
    try:
        run_animate(settings, args.out, args.frames_dir, on_event=progress, overwrite=args.overwrite)
    finally:
        progress.close()
    return 0
