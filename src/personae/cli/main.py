"""`personae` entry point: one subcommand per module, user errors as one paragraph.

What reaches the top: a UserError prints its paragraph (exit 2); an OSError the user can
act on (disk full, no permission, a missing or misplaced path) prints one paragraph naming
the path (exit 1); anything else is a bug in personae: the traceback goes into a report file
under the personae cache folder and the screen shows only where it is (exit 1).
"""

from __future__ import annotations

import argparse
import errno
import os
import platform
import sys
import tempfile
import textwrap
import time
import traceback
from pathlib import Path

from personae.errors import UserError
from personae.quiet import quiet_libraries

COMMANDS = ["demo", "model", "detect", "generate", "prepare", "captions", "train", "convert", "merge", "extract", "upscale", "storyboard", "compare", "animate", "world", "doctor", "ui"]  # each is personae.cli.<name>_cmd with add_parser() and run()


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
    print("\n".join(textwrap.wrap("error: " + message, width=width, break_on_hyphens=False, break_long_words=False)),
          file=sys.stderr)


# errno -> (what happened, what to do); {path} is the file or folder the system named
_OS_ERRORS = {
    errno.ENOSPC: ("There is no space left on the disk that holds {path}.", "Free some space (or choose another output "
                                                                            "folder) and run the command again."),
    errno.EDQUOT: ("Your disk quota is used up on the disk that holds {path}.", "Free some space and run again."),
    errno.EACCES: ("Permission denied for {path}.", "Check that you may read (or write) it, or choose another path."),
    errno.EPERM: ("The system does not allow this operation on {path}.", "Check its permissions, or choose another path."),
    errno.EROFS: ("{path} is on a read-only file system.", "Choose an output folder you can write to."),
    errno.ENOENT: ("{path} does not exist.", "Check the path."),
    errno.ENOTDIR: ("A part of {path} is a file, not a folder.", "Check the path."),
    errno.EISDIR: ("{path} is a folder where a file was expected.", "Check the path."),
    errno.EEXIST: ("{path} already exists.", "Choose another name, or move it away."),
    errno.ENAMETOOLONG: ("The name {path} is too long for the file system.", "Choose a shorter path."),
    errno.EMFILE: ("Too many files are open at once (while using {path}).", "Raise the limit (ulimit -n) or run again."),
    errno.EIO: ("The disk reported an input/output error on {path}.", "Check the disk, or use another one."),
}


def describe_os_error(exc: OSError) -> str | None:
    """One paragraph for an OSError the user can act on, or None (then it is a bug)."""
    if exc.errno not in _OS_ERRORS:
        return None
    package = Path(__file__).resolve().parents[1]
    if exc.filename is not None and package in Path(str(exc.filename)).resolve().parents:
        return None  # a file of personae's own is missing or unreadable: not the user's to fix
    path = exc.filename if exc.filename is not None else "a file personae was using"
    what, fix = _OS_ERRORS[exc.errno]
    what = what.format(path=path)
    if exc.filename2 is not None:
        what = what[:-1] + f" (with {exc.filename2})."
    return f"{what} {fix}"


def crash_report(exc: BaseException, argv: list[str] | None) -> Path | None:
    """Write the traceback and versions to a report file; its path, or None if nothing could be written."""
    from personae import __version__

    lines = [f"personae {__version__} crashed at {time.strftime('%Y-%m-%d %H:%M:%S')}",
             f"command: personae {' '.join(argv if argv is not None else sys.argv[1:])}",
             f"python {platform.python_version()} on {platform.platform()}"]
    for name in ("torch", "diffusers", "transformers", "peft", "safetensors", "PIL"):
        module = sys.modules.get(name)
        if module is not None:
            lines.append(f"{name} {getattr(module, '__version__', '?')}")
    text = "\n".join(lines) + "\n\n" + "".join(traceback.format_exception(exc))
    name = f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    cache = Path(os.environ.get("PERSONAE_CACHE", Path.home() / ".cache" / "personae"))
    for folder in (cache / "crash-reports", Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text, encoding="utf-8")
            return folder / name
        except OSError:
            continue
    return None


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()  # imports every command's module: Ctrl-C can land here
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        quiet_libraries(downloads=not getattr(args, "quiet", False))  # --quiet: no download bars either
        return int(args.run(args) or 0)
    except UserError as exc:
        report_error(str(exc))
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        message = describe_os_error(exc)
        if message is None:
            return _bug(exc, argv)
        report_error(message)
        return 1
    except Exception as exc:  # noqa: BLE001 - the last line of defence: a bug, reported to a file
        return _bug(exc, argv)


def _bug(exc: BaseException, argv: list[str] | None) -> int:
    report = crash_report(exc, argv)
    if report is None:  # nowhere to write it: the screen is the only place left
        traceback.print_exception(exc)
        report_error(f"this is a bug in personae ({type(exc).__name__}); the details are above; please attach them "
                     "to a report.")
    else:
        report_error(f"this is a bug in personae ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}): the "
                     f"details are in {report}; please attach it to a report.")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
