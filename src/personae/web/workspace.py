"""The web UI's workspace: the one folder it reads and writes, and the checks that keep it there.

    ws = Workspace("~/personae-work")
    ws.path("datasets/me")                   # a path the page named, inside the workspace (else UserError)
    ws.take_upload(tmp_file, "me 01.jpg", ws.root / "uploads" / "me")
    ws.new_folder("outputs/generate")       # outputs/generate/0003: a fresh folder for one job's files
    ws.runs()                                # every training run in it, newest first

Paths typed in the page are relative to the workspace; an absolute path, a `..` part or a symlink that
leads out is refused. Uploaded files keep their own names only when the name is a plain file name.
Folders the UI makes for its jobs are new ones, so nothing a user put in the workspace is written over.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from personae.errors import UserError
from personae.runs import RunRecord, is_run, read_run

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
LAYOUT = ("uploads", "datasets", "runs", "outputs", "models")  # made on first use; the README names them
MAX_UPLOAD_MB = 64


@dataclass(frozen=True)
class RunEntry:
    path: Path
    record: RunRecord | None  # None: its record could not be read (the reason in `problem`)
    problem: str = ""


class Workspace:
    def __init__(self, root: str | Path):
        root = Path(root).expanduser()
        if root.exists() and not root.is_dir():
            raise UserError(f"The workspace {root} is a file.", "Pass --workspace a folder (it is made if missing).")
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()

    # -- paths the page names
    def path(self, text: str | Path, *, what: str = "path", must_exist: bool = False) -> Path:
        """`text` (relative to the workspace) as an absolute path inside it; refused when it leads out."""
        raw = str(text).strip()
        if not raw:
            raise UserError(f"The {what} is empty.", "Type a path inside the workspace, e.g. datasets/me.")
        if PurePosixPath(raw).is_absolute() or PureWindowsPath(raw).is_absolute() or raw.startswith("~"):
            raise UserError(f"The {what} {raw!r} is absolute.",
                            f"Give a path inside the workspace ({self.root}), relative to it, e.g. datasets/me.")
        parts = re.split(r"[\\/]+", raw)
        if ".." in parts:
            raise UserError(f"The {what} {raw!r} goes up out of the workspace (`..`).",
                            f"Give a path inside the workspace ({self.root}).")
        full = self.root.joinpath(*[p for p in parts if p not in ("", ".")])
        if not self.contains(full):
            raise UserError(f"The {what} {raw!r} leads out of the workspace (a symbolic link).",
                            f"Only files inside {self.root} can be used from the web UI.")
        if must_exist and not full.exists():
            raise UserError(f"The {what} {raw!r} does not exist in the workspace.",
                            f"Check the name; the workspace is {self.root}.")
        return full

    def contains(self, path: Path) -> bool:
        """Whether `path`, with every symlink followed, is the workspace or inside it."""
        real = Path(path).resolve()
        return real == self.root or self.root in real.parents

    def relative(self, path: Path) -> str:
        return Path(path).resolve().relative_to(self.root).as_posix()

    # -- files coming in
    def take_upload(self, source: str | Path, name: str, folder: Path, limit_mb: float = MAX_UPLOAD_MB) -> Path:
        """Copy an uploaded file (a temporary file Gradio wrote) into `folder` under its own plain name."""
        if name != Path(name).name or "/" in name or "\\" in name or name in ("", ".", "..") or ".." in name.split("/"):
            raise UserError(f"The upload {name!r} names a path, not a file.",
                            "Upload files by their plain names (no folders, no `..`).")
        if name.startswith("."):
            raise UserError(f"The upload {name!r} is a hidden file.", "Rename it without the leading dot.")
        size = Path(source).stat().st_size
        if size > limit_mb * 1024 * 1024:
            raise UserError(f"The upload {name} is {size / 2**20:.0f} MB, over the {limit_mb:g} MB limit.",
                            "Put large files in the workspace folder directly.")
        if not self.contains(folder):
            raise UserError(f"The folder {folder} is outside the workspace.", "Choose a folder inside it.")
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / name
        if target.exists():
            raise UserError(f"{self.relative(target)} already exists in the workspace.",
                            "Upload into a new folder, or rename the file.")
        shutil.copyfile(source, target)
        return target

    def new_folder(self, under: str) -> Path:
        """A new, empty, numbered folder under `under` (e.g. outputs/generate/0003) for one job's files."""
        base = self.path(under, what="folder")
        base.mkdir(parents=True, exist_ok=True)
        numbers = [int(p.name) for p in base.iterdir() if p.name.isdigit()]
        n = max(numbers, default=0) + 1
        while True:
            folder = base / f"{n:04d}"
            try:
                folder.mkdir()
                return folder
            except FileExistsError:
                n += 1

    # -- what is in it
    def runs(self) -> list[RunEntry]:
        """Every training run under runs/ (and any run folder one level deeper), newest first."""
        found: list[RunEntry] = []
        base = self.root / "runs"
        if not base.is_dir():
            return found
        for folder in sorted(base.iterdir()):
            if not folder.is_dir() or not self.contains(folder) or not is_run(folder):
                continue
            try:
                found.append(RunEntry(folder, read_run(folder)))
            except UserError as exc:
                found.append(RunEntry(folder, None, str(exc)))
        return sorted(found, key=lambda r: r.path.stat().st_mtime, reverse=True)

    def files(self, suffixes: tuple[str, ...], under: tuple[str, ...] = ("runs", "models")) -> list[str]:
        """Workspace-relative paths of files with these suffixes (LoRAs, embeddings, images), sorted."""
        out: list[str] = []
        for name in under:
            base = self.root / name
            if base.is_dir():
                out += [self.relative(p) for p in base.rglob("*") if p.suffix.lower() in suffixes and p.is_file()
                        and self.contains(p) and not any(part.startswith(".") for part in p.parts)]
        return sorted(out)

    def outputs(self, kind: str, needs: tuple[str, ...]) -> list[str]:
        """Workspace-relative outputs/KIND/NNNN folders that hold every file in `needs`, newest first: a tab lists
        its earlier results from disk, so they are still there after the UI restarts."""
        base = self.root / "outputs" / kind
        if not base.is_dir():
            return []
        found = [p for p in base.iterdir() if p.name.isdigit() and p.is_dir() and self.contains(p)
                 and all((p / name).is_file() for name in needs)]
        return [self.relative(p) for p in sorted(found, key=lambda p: int(p.name), reverse=True)]

    def folders(self, under: str) -> list[str]:
        base = self.root / under
        if not base.is_dir():
            return []
        return sorted(self.relative(p) for p in base.iterdir() if p.is_dir() and self.contains(p)
                      and not p.name.startswith("."))
