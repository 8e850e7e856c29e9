"""`personae compare SUITE.yaml --out DIR`: variants x prompts x seeds -> grids, metrics, report.html."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  personae compare suite.yaml --out compare/
  personae compare suite.yaml --out compare/ --set steps=30 --set "seeds=[0,1,2,3]"
  personae compare suite.yaml --out compare/ --steps 30 --cfg 6   # the sampling options override the suite's

a suite file:
  version: 1
  base_model: ./tiny
  variants:
    - {label: base}
    - {label: lora-0.5, lora: ./runs/demo/lora.safetensors, weight: 0.5}
    - {label: lora-1.0, lora: ./runs/demo/lora.safetensors, weight: 1.0}
    - {label: db, model: ./runs/db/model}               # another checkpoint (DreamBooth)
    - {label: ti, embedding: ./runs/ti/sks.safetensors} # {token} becomes the embedding's token
    - {label: run, run: ./runs/demo}                    # every kept checkpoint of a run, plus its final export
    - {label: canny-0.5, controls: [{type: canny, image: me.jpg, weight: 0.5, model: ./canny-controlnet}]}
    - {label: depth, controls: [{type: raw, image: depth.png, model: ./depth-cn}], control_end: 0.8}
  sweep: {cfg: [5, 7]}                                  # A1111's X/Y plot: weight, cfg, steps, sampler
  prompts: ["a photo of {token} {class}", "{token} {class} on the beach"]   # leave out for the built-in set
  prompt_set: live                                      # object (default) or live: DreamBooth-style prompts
  token: sks
  class: dog
  seeds: [0, 1]
  steps: 4
  references: ./prepared                                # the training images
  # controls: [...]                                     # ControlNet units for every variant (generate's spelling)
  metrics: {clip: openai/clip-vit-base-patch32, dino: facebook/dino-vits16, face: false}
  # on a shapes-world model: metrics: {world: {subject: star}}   ({token} stands for a star)
"""


SHARED = ("sampling", "runtime")  # the concepts a suite shares with generate: overridable per run


def add_parser(sub) -> None:
    from personae.cli.options import add_set_option, add_settings_options
    from personae.config.compare import CompareSuite

    p = sub.add_parser("compare", help="variants x prompts x seeds -> grids, metrics, report.html", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Generate every variant on a fixed prompt suite with fixed seeds, then write labelled "
                                   "grids, metrics.csv / metrics.json (pixel, SSIM, diversity; DINO, CLIP-I, CLIP-T and "
                                   "face identity when their models are available; on shapes-world models the exact "
                                   "checker's subject fidelity, prompt fidelity and prior, and a ranking) and a "
                                   "sortable report.html.")
    p.add_argument("suite", metavar="SUITE.yaml")
    p.add_argument("--out", default="compare", help="output folder (default ./compare); a previous comparison there is replaced")
    add_set_option(p, "a suite setting")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--yes", action="store_true", help="do not ask before a big job (asked only at a terminal)")
    add_settings_options(p, CompareSuite, groups=SHARED)  # override the suite's (as --set does)
    p.set_defaults(run=run)


def run(args) -> int:
    from personae.cli.big_jobs import confirm_big_job, estimate_seconds
    from personae.cli.options import settings_values
    from personae.cli.progress import TerminalProgress
    from personae.config.base import apply_overrides
    from personae.config.compare import CompareSuite
    from personae.evaluation.suites import PROMPT_SETS
    from personae.jobs.compare_plan import expand, load_suite
    from personae.models.resolve import resolve_model

    overrides = {**apply_overrides({}, args.set), **settings_values(args, CompareSuite, groups=SHARED)}
    suite = load_suite(args.suite, overrides)
    rows, per_row = expand(suite), len(suite.prompts or PROMPT_SETS[suite.prompt_set]) * len(suite.seeds)
    for model in dict.fromkeys(r.model for r in rows):  # a suite's mistakes and a model not found are said at once,
        resolve_model(model)  # before the libraries' seconds of importing
    from personae.jobs.compare import run_compare

    seconds = sum(estimate_seconds(r.model, per_row, r.steps or suite.steps, suite.width, suite.height,
                                   suite.cfg if r.cfg is None else r.cfg, suite.device, controls=len(r.controls))
                  for r in rows)
    confirm_big_job("This comparison", len(rows) * per_row, seconds, args.yes)
    progress = TerminalProgress(quiet=args.quiet)
    try:
        result = run_compare(suite, args.out, on_event=progress)
    finally:
        progress.close()
    print(f"{len(result['images'])} images, {len(result['variants'])} variants: {args.out}/report.html")
    if result["ranking"]:
        from personae.evaluation.world_metric import ranking_text

        print("ranking (world checker: subject fidelity, then prompt fidelity, then prior):")
        print("\n".join("  " + line for line in ranking_text(result["ranking"])))
    return 0
