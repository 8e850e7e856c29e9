"""`personae upscale PICTURE... --upscaler FILE --out DIR`: A1111's Extras tab, upscaling through a model upscaler."""

from __future__ import annotations

import argparse

from personae.cli.options import add_settings_options, settings_values
from personae.config.upscale import UpscaleSettings

EXAMPLES = """examples:
  personae upscale out/00000-7.png --upscaler ~/webui/models/ESRGAN/4x-UltraSharp.pth --allow-pickle --out big/
  personae upscale out/ --upscaler "R-ESRGAN 4x+" --upscaler-dir ~/stable-diffusion-webui --scale 2 --out big/
  personae upscale photo.jpg --upscaler realesr-general-x4v3.safetensors --tile 0 --out big/

upscalers: ESRGAN's own layout (ESRGAN_4x, 4x-UltraSharp, 4x_foolhardy_Remacri, ...), Real-ESRGAN's
  (RealESRGAN_x4plus, RealESRGAN_x4plus_anime_6B, RealESRGAN_x2plus), BSRGAN's, Real-ESRGAN Compact
  (realesr-general-x4v3, realesr-animevideov3); as .safetensors, or .pth with --allow-pickle (tensors only).
outputs: OUT/<name>.png per picture (-2, -3, ... when the name is taken); a PNG keeps its settings for --from-png
  and gains A1111's "extras" text ("Postprocess upscale by: 4, Postprocess upscaler: 4x-UltraSharp").
"""


def add_parser(sub) -> None:
    p = sub.add_parser("upscale", help="pictures through an ESRGAN / Real-ESRGAN upscaler (A1111's Extras)",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Upscale pictures with a model upscaler as A1111's Extras tab does: tiles through "
                                   "the network, repeated until large enough, then Lanczos to the size. The pictures "
                                   "are only read; OUT is a new folder or an earlier upscale's.")
    p.add_argument("pictures", nargs="+", metavar="PICTURE", help="picture files, or folders of pictures")
    p.add_argument("--out", required=True, metavar="DIR", help="where the upscaled pictures go")
    add_settings_options(p, UpscaleSettings)  # every setting, with its help, from config/upscale.py
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args) -> int:
    from personae.cli.progress import TerminalProgress
    from personae.config.base import parse_settings
    from personae.errors import UserError
    from personae.jobs.upscale import run_upscale

    if not args.upscaler:
        raise UserError("--upscaler is required.", "Pass the upscaler file (e.g. --upscaler 4x-UltraSharp.pth), or its "
                                                   "name with --upscaler-dir.")
    settings = parse_settings(UpscaleSettings, settings_values(args, UpscaleSettings), "the upscale options")
    progress = TerminalProgress(quiet=args.quiet)
    try:
        written = run_upscale(args.pictures, args.out, settings, on_event=progress)
    finally:
        progress.close()
    print(f"wrote {len(written)} picture{'s' * (len(written) != 1)} to {args.out}")
    return 0
