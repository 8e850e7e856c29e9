"""Captions: sidecar files, folder conventions, templates, tag cleaning.

Folder conventions users bring from other tools:
- kohya's `10_sks man`: 10 repeats per epoch, and "sks man" as the caption's subject;
- `--folder-tokens close_up=<cu_trg>,...`: a subfolder's images get a learned token
  (the storyboard shot-token recipe).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from personae.data.images import CAPTION_SUFFIXES

_KOHYA = re.compile(r"^(\d+)_(.+)$")
_TOKEN = re.compile(r"(<[^<>\s]+>)")  # a learned token's name, e.g. <cu_trg>
DEFAULT_TEMPLATE = "{folder} {token} {trigger} {class}, {caption}"
# Booru tags that are faces drawn with an underscore: "^ ^" would be another tag, so theirs is kept.
KAOMOJI = frozenset({"0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9", ">_o",
                     "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||"})


def sidecar_suffixes(extension: str = "auto") -> tuple[str, ...]:
    """The caption files read beside an image: auto, x.txt then x.caption; or the one extension named (kohya)."""
    return CAPTION_SUFFIXES if extension == "auto" else (extension,)


def read_sidecar(image_path: Path, suffixes: tuple[str, ...] = CAPTION_SUFFIXES) -> str | None:
    """The caption next to an image (`x.txt` or `x.caption`, the first of `suffixes` there), if any and not empty."""
    for suffix in suffixes:
        side = image_path.with_suffix(suffix)
        if side.is_file():
            text = side.read_text(encoding="utf-8", errors="replace").strip()
            if text:
                return " ".join(text.split())
    return None


def sidecar_fingerprint(image_path: Path, suffixes: tuple[str, ...] = CAPTION_SUFFIXES) -> str:
    """A hash of the image's caption sidecars (what `read_sidecar` reads), "" when it has none: a changed caption
    file makes `prepare` caption the image again even when the image itself is unchanged."""
    parts = []
    for suffix in suffixes:
        side = image_path.with_suffix(suffix)
        if side.is_file():
            parts.append(suffix.encode() + b"\0" + side.read_bytes())
    return hashlib.sha256(b"\0\0".join(parts)).hexdigest()[:16] if parts else ""


def kohya_folder(name: str) -> tuple[int, str] | None:
    """`10_sks man` -> (10, "sks man"); None for other folder names."""
    match = _KOHYA.match(name)
    if not match or int(match.group(1)) < 1:
        return None
    return int(match.group(1)), match.group(2).strip()


def folder_meaning(relative: Path, folder_tokens: dict[str, str]) -> tuple[int, str, str]:
    """(repeats, kohya prefix, token) from the folders between SRC and the image (nearest folder wins)."""
    repeats, prefix, token = 1, "", ""
    for part in relative.parts[:-1]:
        kohya = kohya_folder(part)
        if kohya:
            repeats, prefix = kohya
        key = (kohya[1] if kohya else part).lower()
        for name, tok in folder_tokens.items():
            if name.lower() == key:
                token = tok
    return repeats, prefix, token


def clean_tags(caption: str, underscores_to_spaces: bool = True) -> str:
    """Tag lists (a, b_c, a) -> "a, b c": underscores to spaces (not in kaomoji such as ^_^ or learned tokens such
    as <cu_trg>, nor at all with `underscores_to_spaces=False`), duplicates and empties dropped. Plain sentences
    pass through unchanged apart from whitespace.
    """
    def spelled(tag: str) -> str:
        if not underscores_to_spaces or tag in KAOMOJI:
            return tag
        # a learned token in angle brackets (<cu_trg>, as textual inversion names them) is a name: kept as written
        return "".join(part if _TOKEN.fullmatch(part) else part.replace("_", " ") for part in _TOKEN.split(tag))

    caption = " ".join(caption.split())
    if "," not in caption:
        return spelled(caption) if " " not in caption and "_" in caption else caption
    seen, tags = set(), []
    for tag in caption.split(","):
        tag = " ".join(spelled(tag.strip()).split())
        if tag and tag.lower() not in seen:
            seen.add(tag.lower())
            tags.append(tag)
    return ", ".join(tags)


def fill_template(template: str, *, caption: str = "", trigger: str = "", class_word: str = "", token: str = "",
                  folder: str = "", append: str = "") -> str:
    """Fill {caption} {trigger} {class} {token} {folder}; empty parts leave no stray commas or spaces."""
    text = template.format(caption=caption, trigger=trigger, token=token, folder=folder, **{"class": class_word})
    pieces = [" ".join(piece.split()) for piece in text.split(",")]
    text = ", ".join(p for p in pieces if p)
    if append:
        text = (text + append) if append.startswith((",", " ", ";")) else f"{text} {append}"
        text = text.strip(" ,")
    return text


def keep_and_shuffle_split(caption: str, keep_tokens: int) -> tuple[list[str], list[str]]:
    """The first `keep_tokens` tags stay in place when the trainer shuffles the rest (kohya's --keep_tokens)."""
    tags = [t.strip() for t in caption.split(",") if t.strip()]
    return tags[:keep_tokens], tags[keep_tokens:]
