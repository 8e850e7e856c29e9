"""Files and folders that appear whole or not at all, and a full disk said plainly.

    with atomic_file(path) as tmp:         # tmp: a new, uniquely named file beside path
        image.save(tmp, format="PNG")     # success: tmp replaces path; any error: tmp is gone, path untouched
    with atomic_folder(folder) as tmp:     # a folder a library writes (save_pretrained, save_lora_weights)
        pipe.save_pretrained(tmp)

The temporary name is `.NAME.XXXXXXXX.partial`, made with O_EXCL, so it never replaces
anything that was there. A disk that fills up while writing (ENOSPC; torch and safetensors
report it in their own words) is the user's to fix, not a bug: `disk_full` says so.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from personae.errors import UserError

_FULL = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")


def _umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux 4.7+): setting it to 0
    for an instant, the only portable way, would race with other threads creating files."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _readable(path: Path, mode: int) -> None:
    """mkstemp / mkdtemp make 0600 / 0700; give the result the mode a plain open() would."""
    os.chmod(path, mode & ~_umask())


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` when the block succeeds, else it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _readable(tmp, 0o666)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; it replaces the folder `path` (which must be personae's) on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
        _readable(tmp, 0o777)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def is_disk_full(exc: BaseException | None) -> bool:
    """True when `exc` (or what caused it) is a full disk or an exhausted quota."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(exc) for text in _FULL):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextmanager
def explain_disk_full(where: str | Path, kept: str = "") -> Iterator[None]:
    """Let a full disk while writing `where` end as a UserError (the writers inside leave nothing half-written)."""
    try:
        yield
    except Exception as exc:
        if is_disk_full(exc) and not isinstance(exc, UserError):
            raise disk_full(where, kept) from None
        raise


def disk_full(where: str | Path, kept: str = "", fix: str = "") -> UserError:
    """The message for a write that failed because the disk is full."""
    return UserError(f"The disk is full: writing {where} failed (no space left on device). Nothing half-written "
                     f"was left behind{'; ' + kept if kept else ''}.",
                     fix or "Free some space (or write to another disk) and run the command again.")
