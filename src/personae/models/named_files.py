"""Files found by name in a folder the user points at, as A1111 finds LoRAs and upscalers by name: the folder
itself, or an A1111 webui folder whose models/<Kind> subfolders hold them (models/lora_dir.py, models/upscalers.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from personae.errors import UserError


def search_roots(folder: str | Path, subfolders: tuple[str, ...], flag: str, hint: str) -> list[Path]:
    """The folder, then those of its `subfolders` (paths under it) that exist; a UserError if it is no folder."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise UserError(f"{flag} {root} is not a folder.", hint)
    return [root] + [p for p in (root / sub for sub in subfolders) if p.is_dir()]


def files_by_name(roots: list[Path], suffixes: tuple[str, ...],
                  names: Callable[[Path, Path], Iterable[str]]) -> dict[str, Path]:
    """{name: file} of the files with `suffixes` under the roots (subfolders included), each under the `names(path,
    root)` gives it; the first one wins a name, .safetensors files before others and then in path order."""
    found: dict[str, Path] = {}
    for root in roots:
        for path in sorted(root.rglob("*"), key=lambda p: (p.suffix != ".safetensors", str(p))):
            if path.suffix.lower() in suffixes and path.is_file():
                for name in names(path, root):
                    found.setdefault(name, path.resolve())
    return found
