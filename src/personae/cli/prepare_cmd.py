"""`personae prepare SRC OUT`: photos or drawings -> a captioned training set."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  # 15 phone photos of a person, cropped around the face, captioned "a photo of sks man"
  personae prepare ~/photos/me ./prepared --crop face --resolution 512 --trigger sks --class-word man \\
      --template "a photo of {trigger} {class}, {caption}"
  # thousands of drawings, whole images in aspect-ratio buckets, a style phrase appended
  personae prepare ~/drawings ./style-set --crop none --resolution 768 --append ", drawn by KSH style"
  # storyboard frames sorted into close_up/ medium/ full/ folders, one learned token per shot
  personae prepare ~/frames ./shots --folder-tokens close_up=<cu_trg>,medium=<ms_trg>,full=<fs_trg>
  # kohya folders (10_sks man/) keep their repeats and caption prefix

outputs: OUT/images/*.png + *.txt, OUT/manifest.jsonl, OUT/report.md, OUT/contact_sheet.png
"""


def _tokens(text: str) -> dict[str, str]:
    pairs = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in item:
            raise argparse.ArgumentTypeError(f'"{item}" is not folder=token')
        folder, token = item.split("=", 1)
        pairs[folder.strip()] = token.strip()
    return pairs


def _colour(text: str) -> tuple[int, int, int]:
    from PIL import ImageColor

    try:
        return ImageColor.getrgb(text)[:3]
    except ValueError:
        raise argparse.ArgumentTypeError(f'"{text}" is not a colour (try white, black, #808080)') from None


def add_parser(sub) -> None:
    p = sub.add_parser("prepare", help="photos or drawings -> a captioned training set", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Read every image under SRC (never modified), skip unusable ones with a reason, "
                                   "frame, caption and write a training set to OUT. Re-runs only process what changed.")
    p.add_argument("src", metavar="SRC")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--crop", choices=["center", "face", "none"], help="framing (default center; none = buckets)")
    p.add_argument("--resolution", type=int, help="output side, or bucket budget N x N with --crop none (default 512)")
    p.add_argument("--bucket-step", type=int, help="bucket side step in px (default 64)")
    p.add_argument("--face-margin", type=float, help="context around a face, in face sizes per side (default 1.0)")
    p.add_argument("--min-side", type=int, help="reject images whose shorter side is smaller (default 64)")
    p.add_argument("--max-aspect", type=float, help="reject images longer than this ratio (default 4)")
    p.add_argument("--background", type=_colour, help="colour behind transparent pixels (default white)")
    p.add_argument("--trigger", help='the subject\'s rare word, e.g. "sks"')
    p.add_argument("--class-word", help='what the subject is, e.g. "man", "dog"')
    p.add_argument("--template", help='caption template (default "{folder} {token} {trigger} {class}, {caption}")')
    p.add_argument("--append", help='text added to every caption, e.g. ", drawn by KSH style"')
    p.add_argument("--folder-tokens", type=_tokens, metavar="DIR=TOKEN,...", help="subfolder -> learned token")
    p.add_argument("--keep-tokens", type=int, help="first N tags fixed when the trainer shuffles tags (default 0)")
    p.add_argument("--captioner", help="filename (default), none, or a BLIP-style model folder / hub id")
    p.add_argument("--recaption", action="store_true", default=None, help="caption even where a sidecar .txt exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


_FIELDS = ["crop", "resolution", "bucket_step", "face_margin", "min_side", "max_aspect", "background", "trigger",
           "class_word", "template", "append", "folder_tokens", "keep_tokens", "captioner", "recaption"]


def run(args) -> int:
    from personae.cli.progress import TerminalProgress
    from personae.config.base import parse_settings
    from personae.config.prepare import PrepareSettings
    from personae.data.prepare import prepare_dataset
    from personae.models.captioners import load_captioner

    data = {f: getattr(args, f) for f in _FIELDS if getattr(args, f) is not None}
    settings = parse_settings(PrepareSettings, data, "the prepare options")
    progress = TerminalProgress(quiet=args.quiet)
    try:
        result = prepare_dataset(args.src, args.out, settings, on_event=progress, load_captioner=load_captioner)
    finally:
        progress.close()
    print(f"{len(result.entries)} images in {args.out} ({len(result.rejected)} rejected; see report.md)")
    return 0
