"""`personae demo`: the whole flow, offline, on the bundled tiny model."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="run the whole flow offline on the tiny model",
                       description="Run everything personae does, offline, on the bundled tiny model, "
                                   "and write an index of what it made.",
                       epilog="example:\n  personae demo --out demo-out")
    p.add_argument("--out", default="demo-out", help="output folder (default ./demo-out)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def run(args) -> int:
    from personae.cli.progress import TerminalProgress
    from personae.demo.flow import run_demo

    progress = TerminalProgress(quiet=args.quiet)
    try:
        index = run_demo(args.out, on_event=progress)
    finally:
        progress.close()
    print(f"demo finished: open {index}")
    return 0
