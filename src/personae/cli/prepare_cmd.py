"""`personae prepare SRC OUT`: photos or drawings -> a captioned training set."""

from __future__ import annotations

import argparse

from personae.cli.options import add_settings_options, settings_values
from personae.config.prepare import PrepareSettings

EXAMPLES = """examples:
  # 15 phone photos of a person, cropped around the face, captioned "a photo of sks man"
  personae prepare ~/photos/me ./prepared --crop face --resolution 512 --trigger sks --class-word man \\
      --template "a photo of {trigger} {class}, {caption}"
  # thousands of drawings, whole images in aspect-ratio buckets, a style phrase appended
  personae prepare ~/drawings ./style-set --crop none --resolution 768 --append ", drawn by KSH style"
  # storyboard frames sorted into close_up/ medium/ full/ folders, one learned token per shot
  personae prepare ~/frames ./shots --folder-tokens "close_up=<cu_trg>,medium=<ms_trg>,full=<fs_trg>"
  # kohya folders (10_sks man/) keep their repeats and caption prefix
  # anime drawings tagged by a WD14 tagger folder (model.onnx + selected_tags.csv), booru-style
  personae prepare ~/drawings ./tagged --crop none --captioner wd14:./wd-vit-tagger-v3 --tag-threshold 0.35 \\
      --undesired-tags "simple background"

outputs: OUT/images/*.png + *.txt, OUT/manifest.jsonl, OUT/report.md, OUT/contact_sheet.png
"""


def add_parser(sub) -> None:
    p = sub.add_parser("prepare", help="photos or drawings -> a captioned training set", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Read every image under SRC (never modified), skip unusable ones with a reason, "
                                   "frame, caption and write a training set to OUT. Re-runs only process what changed.")
    p.add_argument("src", metavar="SRC")
    p.add_argument("out", metavar="OUT")
    add_settings_options(p, PrepareSettings)  # every setting, with its help, from config/prepare.py
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args) -> int:
    from personae.cli.progress import TerminalProgress
    from personae.config.base import parse_settings
    from personae.data.prepare import prepare_dataset
    from personae.models.captioners import load_captioner

    data = settings_values(args, PrepareSettings)
    settings = parse_settings(PrepareSettings, data, "the prepare options")
    progress = TerminalProgress(quiet=args.quiet)
    try:
        result = prepare_dataset(args.src, args.out, settings, on_event=progress,
                                 load_captioner=lambda spec: load_captioner(spec, settings=settings))
    finally:
        progress.close()
    print(f"{len(result.entries)} images in {args.out} ({len(result.rejected)} rejected; see report.md)")
    return 0
