"""`personae animate`: an AnimateDiff clip as a GIF, an animated WebP, an H.264 MP4 and/or a VP9 WebM."""

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
  personae animate --model ./model.safetensors --motion-adapter ./mm_sd_v15_v2.safetensors \\
      --prompt $'photo of sks man, wind in hair\\n0: eyes closed\\n6: smiling\\n15: laughing' --out travel.gif
                                                                    # prompt travel: keyframes 0, 6 and 15
  personae animate --model ./model.safetensors --motion-adapter ./mm_sd_v15_v2.safetensors --prompt "a dancer" \\
      --frames 16 --control pose:dance-frames/ --out dancer.gif    # ControlNet: a map per frame (folder / GIF / MP4)
  personae animate --model ./model.safetensors --motion-adapter ./mm_sd_v15_v2.safetensors --prompt "oil painting" \\
      --frames 16 --init-image walk.mp4 --strength 0.6 --out painted.gif     # start from a clip (or one picture)
  personae animate --from-png waves-frames/frame-0000.png --seed 8 --out waves-8.gif   # the clip again, seed 8
  personae animate --from-png a1111.gif --model ./model.safetensors --motion-adapter ./mm_sd_v15_v2.safetensors \\
      --out again.gif                                           # the settings of an A1111 AnimateDiff clip
  personae animate --model ./model.safetensors --motion-adapter ./mm_sd_v15_v2.safetensors --prompt "rain" \\
      --out rain.webp --webp-quality 90 --out rain.webm --loop-number 3        # WebP (plays 3 times) and WebM

defaults that work: DDIM, clip skip 2, 25 steps (25-45 is the useful range), CFG 7.5, 16 frames at 8 fps.
Clips longer than --context frames (16) are drawn in overlapping windows (FreeNoise), so they stay one
continuous motion. Settings are stored in every clip as A1111's AnimateDiff puts them (the GIF comment, the
WebP's EXIF comment, the MP4 / WebM comment tag) and in each frame PNG.

samplers: {samplers}
"""

def _quality(text: str) -> int:
    if not text.strip().isdigit() or int(text) > 100:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to 100, got {text!r}")
    return int(text)


def add_parser(sub) -> None:
    from personae.cli.generate_cmd import add_control_choices
    from personae.cli.options import add_settings_options
    from personae.config.animate import AnimateSettings
    from personae.inference.sampler_names import SAMPLER_NAMES

    p = sub.add_parser("animate", help="AnimateDiff clip -> .gif / .webp / .mp4 / .webm",
                       description="Animate a prompt with an AnimateDiff motion adapter on a Stable Diffusion 1.x "
                                   "model (with its LoRAs and embeddings) and write it as a GIF, WebP, MP4 and/or "
                                   "WebM.",
                       epilog=EXAMPLES.format(samplers=", ".join(SAMPLER_NAMES)),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    sections = add_settings_options(p, AnimateSettings)  # the shared options, with animate's own defaults
    add_control_choices(sections["ControlNet"], hires=False)
    p.add_argument("--from-png", metavar="FILE", help="start from the settings a clip or frame stores (personae's "
                                                      "or A1111's AnimateDiff: a frame PNG, GIF, WebP, MP4 or WebM); "
                                                      "other options override")
    p.add_argument("--out", action="append", default=[], metavar="CLIP.gif|.webp|.mp4|.webm",
                   help="output clip; the suffix picks the format (GIF, animated WebP, H.264 MP4, VP9 WebM); repeat "
                        "for several")
    p.add_argument("--webp-quality", type=_quality, default=80, metavar="0-100",
                   help="a WebP's quality, as A1111's AnimateDiff setting (default 80)")
    p.add_argument("--webp-lossless", action="store_true", help="write a WebP without loss (larger)")
    p.add_argument("--frames-dir", metavar="DIR", help="also write every frame as a PNG (with its settings) to DIR")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing --out files and an earlier clip's --frames-dir")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--yes", action="store_true", help="do not ask before a big job (asked only at a terminal)")
    p.set_defaults(run=run)


def settings_from_args(args, reading=None):
    """The animate settings from the options given (the shared options mean the same as for generate), over those
    `reading` (jobs/animate_png.ClipReading) found in a --from-png file."""
    from personae.cli.generate_cmd import apply_control_choices, control_choices
    from personae.cli.options import missing_required, settings_values
    from personae.config.animate import AnimateSettings
    from personae.config.base import parse_settings
    from personae.errors import UserError

    data = {**(reading.settings if reading else {}), **settings_values(args, AnimateSettings)}
    apply_control_choices(data, *control_choices(args))
    flag = missing_required(AnimateSettings, data)
    if flag:
        what = {"--model": ("model", "model"), "--motion-adapter": ("motion", "motion module")}.get(flag)
        name = getattr(reading, what[0], None) if reading and what else None
        if name:
            raise UserError(f'{flag} is required: {args.from_png} names its {what[1]} "{name}", not where it is.',
                            f"Pass {flag} with that {what[1]} (a folder, a file or a hub id).")
        raise UserError(f"{flag} is required.", "See `personae animate --help` for examples.")
    source = f"the settings of {args.from_png} and the animate options" if reading else "the animate options"
    return parse_settings(AnimateSettings, data, source)


def clip_seconds(settings) -> float:
    """A rough time for the clip: its frames' steps, FreeInit's passes and ControlNet units counted."""
    from personae.cli.big_jobs import estimate_seconds

    passes = settings.freeinit_iters if settings.freeinit else 1  # FreeInit draws the clip that many times
    return estimate_seconds(settings.model, 1, settings.steps * passes, settings.width, settings.height, settings.cfg,
                            settings.device, frames=settings.frames, controls=len(settings.controls))


def run(args) -> int:
    from personae.cli.big_jobs import confirm_big_job
    from personae.cli.progress import TerminalProgress
    from personae.events import Message
    from personae.inference.sampler_names import check_sampler_names

    reading = None
    if args.from_png:
        from personae.jobs.animate_png import read_clip_settings

        reading = read_clip_settings(args.from_png)
    settings = settings_from_args(args, reading)  # wrong options, --out and models are said before the libraries load
    check_sampler_names(settings.sampler)
    from personae.jobs.animate import check_outputs, run_animate  # (torch, diffusers: seconds)
    from personae.models.motion import resolve_motion_adapter
    from personae.models.resolve import resolve_model

    check_outputs(args.out, args.frames_dir, args.overwrite)
    resolve_model(settings.model, settings.allow_pickle)
    resolve_motion_adapter(settings.motion_adapter, settings.allow_pickle)
    confirm_big_job("This clip", settings.frames, clip_seconds(settings), args.yes)
    progress = TerminalProgress(quiet=args.quiet)
    if reading is not None and reading.notes:  # what the file asks for and this run does not do, said once
        progress(Message(f"from {args.from_png}: not applied (personae does not do these, or they need your files): "
                         f"{'; '.join(reading.notes)}", "warning"))
    try:
        run_animate(settings, args.out, args.frames_dir, on_event=progress, overwrite=args.overwrite,
                    webp_quality=args.webp_quality, webp_lossless=args.webp_lossless)
    finally:
        progress.close()
    return 0
