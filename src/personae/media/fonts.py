"""Find a font that draws every character of a text (Hangul, Cyrillic, Latin...), or say which are missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

from personae.errors import UserError

CANDIDATES = [  # common locations on Debian/Ubuntu, macOS and Windows
    "/usr/share/fonts/truetype/nanum/NanumGothic.ttf",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/System/Library/Fonts/AppleSDGothicNeo.ttc",
    "/Library/Fonts/Arial Unicode.ttf",
    "C:/Windows/Fonts/malgun.ttf",
]


@lru_cache(maxsize=64)
def _cmap(path: str, index: int = 0) -> frozenset[int]:
    from fontTools.ttLib import TTCollection, TTFont

    if path.lower().endswith(".ttc"):
        return frozenset(TTCollection(path).fonts[index].getBestCmap())
    return frozenset(TTFont(path, fontNumber=index).getBestCmap())


def _system_fonts() -> list[str]:
    found = [p for p in CANDIDATES if Path(p).is_file()]
    if shutil.which("fc-list"):
        try:
            out = subprocess.run(["fc-list", ":", "file"], capture_output=True, text=True, timeout=20).stdout
            found += sorted({line.split(":")[0].strip() for line in out.splitlines() if line.strip()})
        except (OSError, subprocess.SubprocessError):
            pass
    return [p for p in dict.fromkeys(found) if p.lower().endswith((".ttf", ".otf", ".ttc"))]


def missing_characters(path: str, text: str) -> set[str]:
    cmap = _cmap(path)
    return {c for c in text if not c.isspace() and ord(c) not in cmap}


def font_for(text: str, preferred: str | None = None) -> str:
    """The path of a font that covers `text`; the preferred one (or PERSONAE_FONT) must cover it."""
    preferred = preferred or os.environ.get("PERSONAE_FONT")
    if preferred:
        if not Path(preferred).is_file():
            raise UserError(f"The font {preferred} does not exist.")
        try:
            missing = missing_characters(preferred, text)
        except Exception as exc:  # noqa: BLE001 - fontTools raises many kinds of errors on a file that is not a font
            raise UserError(f"The font {preferred} could not be read as a TrueType / OpenType font "
                            f"({type(exc).__name__}: {str(exc)[:200]}).",
                            "Pass a .ttf, .otf or .ttc font file.") from None
        if missing:
            raise UserError(f"The font {preferred} has no glyphs for: {''.join(sorted(missing))}.",
                            "Choose a font that covers every script in the dialogue, e.g. Noto Sans CJK or NanumGothic.")
        return preferred
    fonts = _system_fonts()
    for path in fonts:
        try:
            if not missing_characters(path, text):
                return path
        except Exception:  # noqa: BLE001 - an unreadable font file is skipped
            continue
    sample = "".join(sorted({c for c in text if ord(c) > 127}))[:20]
    raise UserError(f"No installed font covers every character of the storyboard text (e.g. {sample!r}); "
                    f"looked at {len(fonts)} fonts.",
                    "Install one (Debian/Ubuntu: apt install fonts-nanum or fonts-noto-cjk) or pass --font FILE.ttf.")
