"""Output folders: personae writes only into folders it made, and knows which files it wrote.

Every output folder carries a marker, `.personae.json`: the kind of output (which command made
it) and every file personae wrote there. Every command follows the same rules:

1. A folder that exists and holds anything personae did not write is refused, naming the path,
   with or without --overwrite: --overwrite only ever replaces personae's own output. A new or
   empty folder is fine.
2. A folder another command made (a prepared set given as a training output) is refused.
3. Files a user added to a personae folder are never touched: a re-run removes and replaces only
   the files the marker lists, and stops if one of the user's files is where a new one goes.
4. A folder is locked while a process writes it: `fcntl.flock` on `.NAME.personae-lock` beside
   it. A second process is refused with the holder's pid; the OS drops the lock when the holder
   dies, so even kill -9 leaves nothing locked.
5. `staged_output` builds the whole output in NAME.partial and swaps it in at the end (an error
   leaves the previous output as it was); `open_output` writes in place (training runs, generate's
   numbered images, the demo) and records its files when it closes. If a writer was killed first,
   the files matching its kind's layout count as personae's.

Folders written before markers existed are recognised by their kind's layout: the signature files
are there and every file is a name that command writes (a run folder holding config.yaml,
versions.json, checkpoints/... and nothing else). They get a marker the next time personae writes
them. Kinds whose names a user's folder could share (a model folder, a demo's index.html) have no
such rule: without a marker they are the user's.

    with staged_output("compare", COMPARISON) as work:   # work is compare.partial, empty
        ...                                              # write everything into work
    with open_output(run, TRAINING_RUN, clear=overwrite):  # locked; personae's old files gone when clear
        ...
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from itertools import islice
from pathlib import Path

from personae.errors import UserError
from personae.staging import atomic_file, disk_full, explain_disk_full, is_disk_full

MARKER = ".personae.json"
# names personae's own machinery leaves inside a folder it writes: temporary files and folders, nested locks
RESERVED = ("*.partial", "*.partial/*", "*.personae-lock")


@dataclass(frozen=True)
class Kind:
    """What an output folder holds and which command writes it."""

    id: str  # stored in the marker, e.g. "train"
    name: str  # for messages, e.g. "a training run"
    command: str  # e.g. "personae train"
    layout: tuple[str, ...] = ()  # fnmatch patterns ("*" spans folders) of every file the command writes
    # files every such folder holds, to recognise folders from before markers (with every file in the layout);
    # (): any folder whose every file is in the layout; None: folders without a marker are never personae's
    signature: tuple[str, ...] | None = None
    hint: str = "Pass --overwrite to replace it, or choose another folder."  # when replacing needs asking

    def writes(self, rel: str) -> bool:
        return any(fnmatchcase(rel.rstrip("/"), p) for p in self.layout + RESERVED)


@dataclass
class Survey:
    """What a folder holds, seen by one kind of output."""

    path: Path
    state: str  # new | file | empty | ours | other (another kind's) | foreign
    marker: dict | None = None
    ours: list[str] = field(default_factory=list)  # files personae wrote (folders as "name/")
    foreign: list[str] = field(default_factory=list)  # everything else


def absolute(path: str | Path) -> Path:
    """The absolute path, symlinks kept (a linked output folder stays a link)."""
    return Path(os.path.abspath(os.path.expanduser(str(path))))


def _entries(folder: Path) -> Iterator[str]:
    """Files and links under `folder` (relative, "/"), empty folders as "name/"; the marker left out."""
    for root, dirs, files in os.walk(folder):
        rel = Path(root).relative_to(folder)
        links = [d for d in dirs if os.path.islink(os.path.join(root, d))]
        dirs[:] = [d for d in dirs if d not in links]
        for name in files + links:
            if (rel / name).as_posix() != MARKER:
                yield (rel / name).as_posix()
        if not files and not dirs and not links and root != str(folder):
            yield rel.as_posix() + "/"


def _walk(folder: Path) -> list[str]:
    return sorted(_entries(folder))


def read_marker(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("personae") == 1 and isinstance(data.get("files"), list) else None


def _write_marker(folder: Path, kind: Kind, files: list[str], writing: bool) -> None:
    data = {"personae": 1, "kind": kind.id, "name": kind.name, "made_by": kind.command, "writing": writing,
            "files": sorted(set(files))}
    with atomic_file(folder / MARKER) as tmp:
        tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")


def survey(out: str | Path, kind: Kind) -> Survey:
    out = absolute(out)
    blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:  # under a file: it cannot become a folder (exists() says False here)
        return Survey(blocking, "file")
    if not out.exists() and not out.is_symlink():
        return Survey(out, "new")
    if not out.is_dir():
        return Survey(out, "file")
    marker = read_marker(out)
    if marker is None:
        if not any(out.iterdir()):
            return Survey(out, "empty")
        # a folder without a marker is looked at only as far as needed (it may be someone's home folder)
        if kind.signature is not None and all((out / f).is_file() for f in kind.signature):
            strangers = list(islice((e for e in _entries(out) if not kind.writes(e)), 5))
            if not strangers:
                return Survey(out, "ours", None, _walk(out))
        else:
            strangers = list(islice(_entries(out), 5))
        return Survey(out, "foreign", None, [], strangers or [MARKER])
    entries = _walk(out)
    if marker.get("kind") != kind.id:
        return Survey(out, "other", marker, [], entries)
    recorded = set(marker["files"])
    # a writer that never closed (killed) could not record its last files: its layout tells them
    crashed = bool(marker.get("writing"))
    ours = [e for e in entries if e in recorded or any(fnmatchcase(e, p) for p in RESERVED)
            or (crashed and kind.writes(e))]
    return Survey(out, "ours", marker, ours, [e for e in entries if e not in set(ours)])


def _listing(names: list[str], limit: int = 4) -> str:
    return ", ".join(names[:limit]) + (" and more" if len(names) > limit else "")


def check_output(out: str | Path, kind: Kind, replace: bool = True) -> Survey:
    """Refuse what personae may not write to; `replace`: may personae's earlier output of this kind be replaced?"""
    s = survey(out, kind)
    if s.state == "file":
        raise UserError(f"{s.path} is a file; the output of `{kind.command}` is a folder.", "Choose a folder name.")
    if s.state == "foreign":
        raise UserError(f"{s.path} already holds files personae did not write ({_listing(s.foreign)}). personae "
                        "writes only into a new or empty folder, or one it made itself, and never deletes or "
                        "overwrites anything else, with or without --overwrite.",
                        "Choose a new output folder, or move those files out of this one.")
    if s.state == "other":
        raise UserError(f"{s.path} holds {s.marker.get('name', 'another output')} made by "
                        f"`{s.marker.get('made_by', 'personae')}`, not {kind.name}.",
                        "Choose another output folder: personae does not replace one kind of output with another.")
    if s.state == "ours" and s.ours and not replace:
        raise UserError(f"{s.path} already holds {kind.name} from an earlier run.", kind.hint)
    return s


# ---------------------------------------------------------------- locks

_held = threading.local()


def lock_path(out: str | Path) -> Path:
    out = absolute(out)
    return out.parent / f".{out.name}.personae-lock"


def _acquire(path: Path, out: Path) -> int:
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:
            raise UserError(f"Cannot write in {out.parent}: permission denied.",
                            "Choose an output folder in a place you can write to.") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"{out} is being written by another personae process (pid {holder}), so it is locked.",
                            "Wait for that process to finish, or stop it; a stopped or killed process releases "
                            "the folder at once.") from None
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:  # else the holder removed the file between our open and flock: take the new one
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)


@contextmanager
def locked(out: str | Path) -> Iterator[None]:
    """Hold `out`'s lock (re-entrant within one thread)."""
    out = absolute(out)
    path = lock_path(out)
    depth = getattr(_held, "depth", None)
    if depth is None:
        depth = _held.depth = {}
    key = str(path)
    if key in depth:
        depth[key] += 1
        try:
            yield
        finally:
            depth[key] -= 1
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path, out)
    depth[key] = 1
    try:
        yield
    finally:
        del depth[key]
        path.unlink(missing_ok=True)  # still holding the lock, so nobody else is using this file
        os.close(fd)


# ---------------------------------------------------------------- writing

def _remove(out: Path, names: list[str]) -> None:
    """Remove personae's files `names` from `out`, then the folders that became empty because of it."""
    parents = set()
    for name in names:
        path = out / name.rstrip("/")
        if name.endswith("/"):
            if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
                path.rmdir()
        elif path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():  # a temporary folder of a killed writer
            shutil.rmtree(path)
        parents.update(p for p in path.parents if out in p.parents)
    for folder in sorted(parents, key=lambda p: len(p.parts), reverse=True):
        if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
            folder.rmdir()


def _clashes(foreign: list[str], new: list[str]) -> list[str]:
    """The user's files that sit where a new file (or a folder of new files) goes."""
    files = {n for n in new if not n.endswith("/")}
    folders = {str(p) for n in files for p in Path(n).parents if str(p) != "."}
    out = []
    for f in foreign:
        name = f.rstrip("/")
        if name in files or (not f.endswith("/") and name in folders) or any(name.startswith(n + "/") for n in files):
            out.append(name)
    return out


def _commit(work: Path, out: Path, kind: Kind) -> None:
    """Put the finished `work` where `out` is: whole when nothing of the user's is in the way, else file by file."""
    new = _walk(work)
    _write_marker(work, kind, new, writing=False)
    if not out.exists() and not out.is_symlink():
        os.rename(work, out)
        return
    s = check_output(out, kind)
    if s.state == "empty" or (not s.foreign and not out.is_symlink()):
        shutil.rmtree(out)
        os.rename(work, out)
        return
    clash = _clashes(s.foreign, new)
    if clash:
        raise UserError(f"{out} holds files of yours where personae's new output goes ({_listing(clash)}); "
                        "nothing in the folder was changed.", "Move those files elsewhere and run the command again.")
    _remove(out, s.ours)
    for name in new:
        target = out / name.rstrip("/")
        if name.endswith("/"):
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(work / name, target)
    _write_marker(out, kind, new, writing=False)
    shutil.rmtree(work)


def _clear_partial(work: Path, out: Path) -> None:
    """Remove a staging folder a killed run left behind; anything else by that name is the user's."""
    if not work.exists() and not work.is_symlink():
        return
    marker = read_marker(work) if work.is_dir() and not work.is_symlink() else None
    if marker is not None and marker.get("writing"):
        shutil.rmtree(work)
        return
    if work.is_dir() and not work.is_symlink() and not any(work.iterdir()):
        work.rmdir()
        return
    raise UserError(f"{work} exists and is not personae's: personae builds {out.name} there before moving it into "
                    "place.", f"Rename or move {work} away, or choose another output folder.")


@contextmanager
def staged_output(out: str | Path, kind: Kind, replace: bool = True, keep_previous: bool = False) -> Iterator[Path]:
    """Yield the empty folder OUT.partial; on success it becomes OUT, on any error it is removed and OUT is untouched.

    `keep_previous` starts OUT.partial with copies of personae's files in OUT (for outputs that are edited, such as
    a storyboard with --only).
    """
    out = absolute(out)
    check_output(out, kind, replace)
    work = out.with_name(out.name + ".partial")
    with locked(out):
        previous = check_output(out, kind, replace)  # again: nobody else can change it now
        _clear_partial(work, out)
        work.mkdir(parents=True)
        try:
            _write_marker(work, kind, [], writing=True)
            if keep_previous and previous.state == "ours":
                for name in previous.ours:
                    if not any(fnmatchcase(name, p) for p in RESERVED):
                        _copy(out / name.rstrip("/"), work / name.rstrip("/"), name.endswith("/"))
            yield work
            _commit(work, out, kind)
        except BaseException as exc:
            shutil.rmtree(work, ignore_errors=True)
            if is_disk_full(exc):
                raise disk_full(out, f"{out} is as it was before") from None
            raise


def _copy(src: Path, dst: Path, folder: bool) -> None:
    if folder:
        dst.mkdir(parents=True, exist_ok=True)
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    else:
        shutil.copy2(src, dst)


@contextmanager
def open_output(out: str | Path, kind: Kind, clear: bool = False) -> Iterator[Path]:
    """Yield OUT, made if new and locked while the block runs; `clear` first removes personae's earlier files there."""
    out = absolute(out)
    check_output(out, kind)
    with locked(out):
        s = check_output(out, kind)
        out.mkdir(parents=True, exist_ok=True)
        if clear:
            _remove(out, s.ours)
        users = set(s.foreign)
        _write_marker(out, kind, [] if clear else s.ours, writing=True)
        try:
            with explain_disk_full(out):
                yield out
        finally:
            try:  # everything that appeared while the folder was locked is personae's
                _write_marker(out, kind, [e for e in _walk(out) if e not in users], writing=False)
            except OSError:
                pass  # a full disk: the marker still says "writing", and the layout names personae's files


# a diffusers folder personae wrote (`personae model ...`, `personae world pretrain`, with its training/ record)
MODEL_FOLDER = Kind("model", "a model folder", "personae model / personae world pretrain",
                    layout=("model_index.json", "*config.json", "*.safetensors", "*.txt", "*.json", "training/*"))


def check_file_output(path: str | Path, overwrite: bool = False, flag: str = "--overwrite") -> Path:
    """A single output file: an existing file is replaced only when the user says `flag`, and never a folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{path} is a folder; this output is a file.", "Give a file name.")
    if path.parent.exists() and not path.parent.is_dir():
        raise UserError(f"Cannot write {path}: {path.parent} is a file, not a folder.")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise UserError(f"{path} already exists.", f"Choose another name, or pass {flag} to replace it.")
    return path
