"""`personae world pretrain OUT`, `personae world bench --out DIR`, `personae world render OUT`, `personae world shots`,
`personae world style` and the commands of world_models_cmd.py (controlnet, control-eval, img2img-eval,
zero-snr, motion, motion-eval): the shapes world."""

from __future__ import annotations

import argparse
from pathlib import Path

from personae.cli.world_models_cmd import _add_controlnet, _add_img2img, _add_motion, _add_zero_snr, trained

EXAMPLES = """examples:
  personae world pretrain ./world                       # the full run: about 52 minutes (one thread)
  personae world pretrain ./world --steps 300 --set vae.steps=100 --set dataset_size=2048
  personae world pretrain ./world --set seed=1 --set threads=2 --overwrite
  personae generate --model ./world --prompt "a green square on a yellow background, close-up" --sampler DDIM --cfg 4

"""

BENCH_EXAMPLES = """examples:
  personae world bench --out bench                      # the committed table (docs/world.md)
  personae world bench --out bench --methods pivotal --concepts star --seeds 1
  personae world bench --out bench --set jobs.lora.train.steps=900 --set eval.seeds_per_prompt=16
  personae world bench --out bench --methods lora:variant=dora,rank=8,pivotal --concepts star
  personae world bench --out sweep --methods lora --sweep lora.rank=4,8,16 --sweep lora.variant=lora,dora

recipes: METHOD:KEY=VALUE,KEY=VALUE,... is METHOD's bench recipe (jobs.METHOD) with those settings of its
`personae train` job changed. KEY is a dotted path (lora.rank, train.learning_rate, data.masked_loss) or a
setting name only one job section has (rank, variant, steps, masked_loss); VALUE is read as YAML, lists in
brackets (lora.target_modules=[to_q,to_v]). In --methods an item with "=" belongs to the recipe before it.
--sweep KEY=V1,V2,... (repeatable) runs every combination over every method and writes sweep.md and
sweep.json: the table sorted by subject fidelity, printed at the end.

"""

RENDER_EXAMPLES = """examples:
  personae world render pictures                        # every shape, colour, background and shot once (360)
  personae world render stars --shapes star --colours white --backgrounds blue,green --shots close-up,medium
  # a drawing style the world model never saw: shapes filled in bands, a training set for a style LoRA
  personae world render ksh --style banded --count 200 --shapes circle,square,triangle,cross --shots close-up,medium
  # pictures sorted by shot, captions that never say the shot: a training set for shot tokens
  personae world render shots --count 48 --by shot --caption "a {colour} {shape} on a {background} background"
  personae prepare shots prepared-shots --resolution 32 --min-side 32 --template "{caption}, {token}" \\
      --folder-tokens "close_up=<cu_trg>,medium=<ms_trg>,full=<fs_trg>"

outputs: OUT/*.png + *.txt (or OUT/close_up/, medium/, full/ with --by shot), OUT/render.json (every file with
its shape, colour, background, shot and position)

"""


def add_parser(sub) -> None:
    from personae.cli.options import settings_epilog
    from personae.world.bench_settings import WorldBench
    from personae.world.pretrain_settings import WorldPretrain

    p = sub.add_parser("world", help="pretrain the small shapes-world model",
                       description="The shapes world: a small SD-1.5-architecture model pretrained by us on "
                                   "procedural images whose every property can be checked exactly.")
    kinds = p.add_subparsers(dest="kind", metavar="ACTION")
    pre = kinds.add_parser("pretrain", help="train the VAE, text encoder and UNet from scratch",
                           epilog=EXAMPLES + "\n" + settings_epilog(WorldPretrain, "settings (--set KEY=VALUE; "
                                                                     "defaults are the full run)"),
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           description="Pretrain the world model from scratch and write it to OUT as a diffusers "
                                       "folder (with OUT/training/: settings, losses, evaluations, sample sheets). "
                                       "Same settings and thread count, same weights.")
    pre.add_argument("out", metavar="OUT", help="folder to write (diffusers layout)")
    pre.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    pre.add_argument("--steps", type=int, help="UNet steps (shortcut for --set unet.steps=N)")
    pre.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    pre.add_argument("--quiet", action="store_true", help="no progress bar")
    pre.set_defaults(run=run_pretrain)
    bench = kinds.add_parser("bench", help="teach held-out shapes with each method and measure exactly",
                             epilog=BENCH_EXAMPLES + "\n" + settings_epilog(WorldBench, "settings (--set KEY=VALUE "
                                                                                    "or --config YAML)"),
                             formatter_class=argparse.RawDescriptionHelpFormatter,
                             description="Teach the held-out shapes (star, heart) to the world model with each "
                                         "training method, then measure subject fidelity, prompt fidelity on "
                                         "unseen backgrounds and sizes, prior preservation, diversity and time "
                                         "with the exact checker. Writes table.md, table.csv, results.json, "
                                         "grids/, runs/ and report.html to DIR.")
    bench.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    bench.add_argument("--methods", help="comma-separated: lora,dreambooth,textual_inversion,pivotal (default: all), "
                                         "or recipes such as lora:variant=dora,rank=8 (see recipes below)")
    bench.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                       help="a grid over a setting (repeatable): every combination runs, sorted by subject fidelity")
    bench.add_argument("--concepts", help="comma-separated held-out shapes: star,heart (default: both)")
    bench.add_argument("--seeds", type=int, help="training seeds per method and concept (default 3)")
    bench.add_argument("--model", help="`world` (the shipped model, default) or a `personae world pretrain` folder")
    bench.add_argument("--config", metavar="YAML", help="bench settings file (same keys as --set)")
    bench.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    bench.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    bench.add_argument("--quiet", action="store_true", help="no progress bar")
    bench.set_defaults(run=run_bench_cmd)
    _add_render(kinds)
    _add_shots(kinds)
    _add_controlnet(kinds)
    _add_img2img(kinds)
    _add_zero_snr(kinds)
    _add_motion(kinds)
    _add_style(kinds)
    p.set_defaults(run=lambda args: p.print_help() or 2)


def _add_render(kinds) -> None:
    from personae.cli.options import add_settings_options
    from personae.world.render_settings import WorldRender

    p = kinds.add_parser("render", help="world pictures with caption files (training sets for the world model)",
                         epilog=RENDER_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Draw world pictures (32x32: one shape in one colour on a plain background, at "
                                     "a shot size) with a caption .txt beside each, into a new folder OUT. Seeded: "
                                     "the same options give the same files.")
    p.add_argument("out", metavar="OUT", help="folder to write (new, or one this command wrote)")
    add_settings_options(p, WorldRender)
    p.add_argument("--overwrite", action="store_true", help="replace OUT if this command wrote it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_render)


SHOTS_EXAMPLES = """examples:
  personae world shots --words                          # the plain size words: "..., close-up"
  personae world shots --model ./world --embedding "runs/shots/embeddings/cu_trg.safetensors:<cu_trg>" \\
      --embedding "runs/shots/embeddings/ms_trg.safetensors:<ms_trg>" \\
      --embedding "runs/shots/embeddings/fs_trg.safetensors:<fs_trg>"

"""


def _add_shots(kinds) -> None:
    from personae.config.addons import EmbeddingRef

    p = kinds.add_parser("shots", help="measure how well shot tokens (or the size words) set the size",
                         epilog=SHOTS_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Draw 96 world pictures (3 shots x 8 shape / colour / background combinations, "
                                     "half of them shapes a shot-token training set of circles, squares, triangles "
                                     "and crosses lacks, x 4 seeds) with the shot tokens <cu_trg> <ms_trg> <fs_trg> "
                                     "(or with --words the plain size words) and count, with the exact checker, "
                                     "those at the size their shot asks for.")
    p.add_argument("--model", default="world", help="`world` (the shipped model, default) or a model folder")
    p.add_argument("--embedding", action="append", default=[], type=EmbeddingRef.from_cli, metavar="FILE[:TOKEN]",
                   help="a shot token's embedding and its token (repeatable: the three that `personae train` wrote)")
    p.add_argument("--words", action="store_true", help="prompt with the size words instead of the tokens")
    p.set_defaults(run=run_shots)


def run_shots(args) -> int:
    import torch

    from personae.errors import UserError
    from personae.inference.session import open_session
    from personae.world.model import WORLD_DIR
    from personae.world.shots import SHOT_TOKENS, SHOT_WORDS, score_shots

    model = str(WORLD_DIR) if args.model == "world" else args.model
    embeddings = [(e["path"], e["token"]) for e in args.embedding]
    if not args.words and not embeddings:
        raise UserError("Nothing to measure: no shot-token embeddings were given.",
                        "Pass the three with --embedding FILE (repeatable), or --words to measure the size words.")
    session = open_session(model, device="cpu", embeddings=embeddings)
    missing = [t for t in SHOT_TOKENS.values() if not args.words and t not in {e.token for e in session.embeddings}]
    if missing:
        raise UserError(f"The embeddings given do not define {', '.join(missing)}.",
                        "Pass each shot token's embedding with its token: --embedding \"FILE:<cu_trg>\" (a file "
                        "is otherwise called by its name, as A1111 does).")
    with torch.no_grad():
        scores = score_shots(session.pipe, SHOT_WORDS if args.words else SHOT_TOKENS)
    print("shot | right")
    words = SHOT_WORDS if args.words else SHOT_TOKENS
    for size, right in scores["by_shot"].items():
        print(f"{size} ({words[size]}) | {right} of {scores['per_shot_total']}")
    print(f"held-out shapes | {scores['held_out_right']} of {scores['held_out_total']}")
    print(f"all | {scores['right']} of {scores['total']} ({scores['share']:.0%})")
    return 0


STYLE_EXAMPLES = """examples:
  personae world style --model ./world --lora runs/ksh/lora.safetensors --out style-check
  personae world style --model ./world --lora runs/ksh/lora.safetensors:0.8 --seeds 8
  personae world style --model ./world --lora runs/ksh/lora.safetensors --combinations new

"""


def _add_style(kinds) -> None:
    from personae.config.addons import LoraRef
    from personae.world.style import TRIGGER

    p = kinds.add_parser("style", help="measure a taught drawing style: with its trigger, without, content kept",
                         epilog=STYLE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
                         description="Draw 8 shape / colour / background combinations a banded-style training set "
                                     "never shows, at close-up and medium shot, over seeds, each once with the "
                                     "style's trigger phrase and once without, and read every picture back with the "
                                     "exact checker: the style present with the trigger, its leakage without, and "
                                     "the shape, colour, background and size still right (docs/world.md, \"A "
                                     "drawing style\").")
    p.add_argument("--model", default="world", help="`world` (the shipped model, default) or a model folder")
    p.add_argument("--lora", action="append", default=[], type=LoraRef.from_cli, metavar="FILE[:WEIGHT[:UNET]]",
                   help="the style's LoRA (repeatable); none measures the model as it is")
    p.add_argument("--trigger", default=TRIGGER, help=f'the text after each caption (default "{TRIGGER}", what '
                                                      '`personae prepare --append` wrote)')
    p.add_argument("--combinations", choices=("held-out", "new"), default="held-out",
                   help="held-out (default): circles, squares, triangles and crosses in red, green, blue and black, "
                        "in the 8 combinations examples/style-world leaves out of its training pictures with "
                        "`personae world render --exclude`; new: rings and diamonds, and those shapes in yellow and "
                        "white, which that training set never draws in the style at all")
    p.add_argument("--seeds", type=int, default=4, help="seeds per combination and shot (default 4: 64 pictures "
                                                        "with the trigger, 64 without)")
    p.add_argument("--out", metavar="DIR", help="also write every picture, sheet.png and style.json to DIR (new, or "
                                                "one this command wrote)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_style)


def run_style(args) -> int:
    import torch

    from personae.cli.progress import TerminalProgress
    from personae.errors import UserError
    from personae.inference.session import open_session
    from personae.outputs import check_output
    from personae.world.model import WORLD_DIR
    from personae.world.style import STYLE_CHECK, score_style, write_style_record

    if args.seeds < 1:
        raise UserError(f"--seeds {args.seeds} draws nothing.", "Give --seeds 1 or more (default 4).")
    if args.out:  # a folder that cannot take the record is said now, not after 128 pictures
        check_output(args.out, STYLE_CHECK)
    model = str(WORLD_DIR) if args.model == "world" else args.model
    loras = [(r["path"], r["weight"], r.get("unet_weight")) for r in args.lora]
    session = open_session(model, device="cpu", loras=loras)
    progress = TerminalProgress(quiet=args.quiet)
    try:
        with torch.no_grad():
            scores = score_style(session.pipe, args.trigger, args.seeds, combinations=args.combinations,
                                 on_event=progress)
    finally:
        progress.close()
    if args.out:
        write_style_record(scores, args.out, {"model": args.model, "lora": args.lora, "trigger": args.trigger,
                                              "seeds": args.seeds})
    n = scores["per_arm"]
    print(f"combinations | {args.combinations}: 8 at close-up and medium shot, {args.seeds} seeds each")
    print(f"style present with the trigger | {round(scores['present'] * n)} of {n} ({scores['present']:.0%})")
    print(f"style without the trigger (leakage) | {round(scores['leak'] * n)} of {n} ({scores['leak']:.0%})")
    print(f"content right with the trigger | {round(scores['content'] * n)} of {n} ({scores['content']:.0%})")
    print(f"content right without the trigger | {round(scores['content_plain'] * n)} of {n} "
          f"({scores['content_plain']:.0%})")
    if args.out:
        print(f"pictures, sheet.png and style.json in {args.out}")
    return 0


def run_render(args) -> int:
    from collections import Counter

    from personae.cli.options import settings_values
    from personae.cli.progress import TerminalProgress
    from personae.config.base import parse_settings
    from personae.world.render import render_world
    from personae.world.render_settings import WorldRender

    settings = parse_settings(WorldRender, settings_values(args, WorldRender), "the render options")
    progress = TerminalProgress(quiet=args.quiet)
    try:
        result = render_world(settings, args.out, overwrite=args.overwrite, on_event=progress)
    finally:
        progress.close()
    shots = Counter(p.shot for p in result.pictures)
    print(f"{len(result.pictures)} pictures with captions in {args.out} ("
          + ", ".join(f"{n} {shot}" for shot, n in shots.items()) + ")")
    return 0


def run_pretrain(args) -> int:
    from personae.world.pretrain import pretrain
    from personae.world.pretrain_settings import WorldPretrain

    _, result = trained(args, WorldPretrain, pretrain, steps_key="unet.steps")
    last = result.evals[-1] if result.evals else {}
    print(f"pretrained the world model in {sum(result.seconds.values()) / 60:.1f} min "
          f"({len(result.vae_losses)} VAE steps, {result.unet_steps} UNet steps) into {result.out}")
    if last:
        print("right on the 16 evaluation prompts: " +
              ", ".join(f"{k} {v:.0%}" for k, v in last.items() if k not in ("step", "probe_loss")))
    return 0


def run_bench_cmd(args) -> int:
    import shlex
    import sys

    from personae.cli.progress import TerminalProgress
    from personae.world.bench import run_bench

    settings = bench_settings(args.config, args.methods, args.concepts, args.seeds, args.model, list(args.set),
                              sweep=args.sweep)
    command = "personae " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    progress = TerminalProgress(quiet=args.quiet)
    try:
        result = run_bench(settings, args.out, command=command, overwrite=args.overwrite, on_event=progress)
    finally:
        progress.close()
    print((Path(args.out) / ("sweep.md" if settings.sweep else "table.md")).read_text(), end="")
    print(f"finished in {result['seconds'] / 60:.1f} min; report: {Path(args.out) / 'report.html'}")
    return 0


def bench_settings(config: str | None = None, methods: str | None = None, concepts: str | None = None,
                   seeds: int | None = None, model: str | None = None, assignments: list[str] = (),
                   sweep: list[str] = ()):
    """The bench's settings as `personae world bench` reads its options (the web UI's World tab calls this too):
    the defaults, the --config file over them, then --methods (names or recipes) / --concepts / --sweep /
    --seeds / --model, then --set."""
    from personae.config.base import apply_overrides, load_yaml, parse_settings
    from personae.errors import UserError
    from personae.world.bench_recipes import parse_sweep, split_methods
    from personae.world.bench_settings import WorldBench

    data = _merged(WorldBench().model_dump(), load_yaml(config) if config else {})  # keep unnamed recipes
    if methods:
        data["methods"] = split_methods(methods)
    if concepts:
        data["concepts"] = [v.strip() for v in concepts.split(",") if v.strip()]
    if sweep:
        try:
            data["sweep"] = parse_sweep(list(sweep))
        except ValueError as exc:
            raise UserError(str(exc), "Write it as --sweep KEY=V1,V2,..., e.g. --sweep lora.rank=4,8,16.") from None
    if seeds is not None:
        data["seeds"] = seeds
    if model:
        data["model"] = model
    return parse_settings(WorldBench, apply_overrides(data, list(assignments)), config or "--set")


def _merged(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
