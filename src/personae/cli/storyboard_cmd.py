"""`personae storyboard SCENES.yaml`: scenes and shots -> panels, a printable sheet (PNG, PDF)."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  personae storyboard scenes.yaml --out board/
  personae storyboard scenes.yaml --out board/ --only 2,5        # redraw panels 2 and 5, re-lay the sheet
  personae storyboard scenes.csv --model ./tiny --out board/     # CSV: number,description,dialogue,shot,angle,characters
  personae storyboard scenes.yaml --steps 30 --cfg 6 --out board/ # the sampling options override the file's
  personae storyboard scenes.csv --model ./sd15 --lora sketch.safetensors:0.8 --style-trigger "storyboard sketch" \\
      --embedding "cu.safetensors:<cu_trg>" --embedding "ms.safetensors:<ms_trg>" --set layout.title="Act 1" --out board/

a CSV file takes any setting of a scenes file in "# key: value" lines above its header row:
  # model: ./tiny
  # style_lora: sketch.safetensors:0.8
  # shot_embeddings: [cu.safetensors, ms.safetensors]
  number,description,dialogue,shot,angle,characters
  1,a cat on a roof,야옹,ECU,low angle,

a scenes file:
  version: 1
  model: ./tiny
  steps: 4
  width: 64
  height: 64
  seed: 0
  scenes:
    - {number: 1, description: "a girl waits at a bus stop", dialogue: "버스가 왜 안 오지?", shot: close-up, angle: eye level}
    - {number: 2, description: "the bus arrives in the rain", dialogue: "", shot: full, angle: high angle}
"""


def _numbers(text: str) -> set[int]:
    try:
        return {int(x) for x in text.replace(" ", "").split(",") if x}
    except ValueError:
        raise argparse.ArgumentTypeError(f'"{text}" is not a list of panel numbers like 3,7') from None


SHARED = ("sampling", "runtime")  # the concepts a storyboard shares with generate: overridable per run
STYLE = ("style_lora", "style_trigger", "shot_embeddings")  # the look of every panel: for CSV files above all


def add_parser(sub) -> None:
    from personae.cli.options import add_set_option, add_settings_options
    from personae.config.storyboard import StoryboardSettings

    p = sub.add_parser("storyboard", help="scenes and shots -> panels and a printable sheet", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Draw one panel per scene and lay them out as sheet.png and sheet.pdf, with number, "
                                   "shot, angle, dialogue and description; storyboard.json records everything.")
    p.add_argument("scenes", metavar="SCENES.yaml|SCENES.csv")
    p.add_argument("--out", default="storyboard", help="output folder (default ./storyboard)")
    p.add_argument("--only", type=_numbers, metavar="N,M", help="redraw only these panels")
    p.add_argument("--model", help="model (overrides the file; required for a CSV without a `# model:` line)")
    p.add_argument("--font", help="a .ttf/.otf/.ttc font covering the dialogue's scripts")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--yes", action="store_true", help="do not ask before a big job (asked only at a terminal)")
    add_set_option(p, "a setting of the scenes file")
    add_settings_options(p, StoryboardSettings, groups=SHARED, names=STYLE)  # override the file's, for every panel
    p.set_defaults(run=run)


def run(args) -> int:
    from personae.cli.big_jobs import confirm_big_job, estimate_seconds
    from personae.cli.options import settings_values
    from personae.cli.progress import TerminalProgress
    from personae.config.storyboard import StoryboardSettings
    from personae.jobs.storyboard import load_scenes, run_storyboard

    overrides = {"model": args.model, "font": args.font,
                 **settings_values(args, StoryboardSettings, groups=SHARED, names=STYLE)}
    settings = load_scenes(args.scenes, overrides, args.set)
    panels = len(args.only) if args.only else len(settings.scenes)
    confirm_big_job("This storyboard", panels, estimate_seconds(settings.model, panels, settings.steps, settings.width,
                                                                settings.height, settings.cfg, settings.device), args.yes)
    progress = TerminalProgress(quiet=args.quiet)
    try:
        summary = run_storyboard(settings, args.out, args.only, on_event=progress)
    finally:
        progress.close()
    print(f"{len(summary['panels'])} panels; sheets: {', '.join(summary['sheets'])}, sheet.pdf in {args.out}")
    return 0
