"""`personae` entry point: one subcommand per module, user errors as one paragraph."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap

from personae.errors import UserError

COMMANDS = ["demo", "model", "detect", "generate", "prepare", "train", "convert", "storyboard", "compare", "animate", "world", "doctor"]  # each is personae.cli.<name>_cmd with add_parser() and run()


def quiet_libraries() -> None:
    """Library chatter (load bars, deprecation notes) is not for our users' terminals."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    import logging

    logging.getLogger("fontTools").setLevel(logging.ERROR)  # fpdf2's font subsetting notes ("TSI0 NOT subset")
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="personae",
        description="Teach Stable Diffusion a person, a pet, a style or a camera framing from a few images, then use it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `personae COMMAND --help` for a command's options and examples.",
    )
    from personae import __version__

    parser.add_argument("--version", action="version", version=f"personae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"personae.cli.{name}_cmd")
        module.add_parser(sub)
    return parser


def report_error(message: str) -> None:
    width = 100
    print("\n".join(textwrap.wrap("error: " + message, width=width, break_on_hyphens=False)), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        quiet_libraries()
        return int(args.run(args) or 0)
    except UserError as exc:
        report_error(str(exc))
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
