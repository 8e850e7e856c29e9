"""Checks on a training set's captions that need no model: run before training starts and in prepare's report.

- `require_token`: a learned token (textual inversion, pivotal) that no caption contains gets no gradient,
  so the run would "succeed" and export the init word unchanged: it is refused before the run starts.
- `caption_flags`: empty captions (nothing described the image), the same caption on several images, captions
  made from file names (counted in report.md and marked on the contact sheet).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from personae.errors import UserError


def require_token(token: str, captions: Sequence[str], where: str, setting: str) -> None:
    """A UserError unless some caption contains `token` (as the tokenizer sees it: a plain substring).

    `where` names the captions' place (a folder), `setting` the job key that asked for the token."""
    if not captions or any(token in caption for caption in captions):
        return
    example = next((c for c in captions if c.strip()), "")
    shown = f'"{example[:120]}"' if example else "an empty caption"
    raise UserError(
        f'{setting} "{token}" appears in none of the {len(captions)} training captions of {where} '
        f"({len(captions)} of {len(captions)} lack it; e.g. {shown}): it would get no gradient and the run would "
        "export its init word unchanged.",
        f"Put the token in the captions: `personae prepare SRC OUT --trigger {token}` (the default template puts "
        f"the trigger first), or a `--template` with {{trigger}} or {{token}} (e.g. \"{{trigger}} {{class}}, "
        f"{{caption}}\" with --trigger {token}), or `--append \", {token}\"`; or edit the .txt captions in images/ "
        "by hand, then train again.")


@dataclass
class CaptionFlags:
    """Captions worth a look before training, by image name (as the report names images)."""

    empty: set[str] = field(default_factory=set)  # nothing described the image: the template alone is left
    duplicates: dict[str, list[str]] = field(default_factory=dict)  # a caption shared by several images -> them
    from_filename: set[str] = field(default_factory=set)  # made from the file name by the filename captioner

    def of(self, name: str, caption: str) -> list[str]:
        """Short labels for one image: "empty", "duplicate", "from file name"."""
        return [label for label, hit in (("empty", name in self.empty), ("duplicate", caption in self.duplicates),
                                         ("from file name", name in self.from_filename)) if hit]

    @property
    def duplicated_images(self) -> int:
        return sum(len(names) for names in self.duplicates.values())

    def any(self) -> bool:
        return bool(self.empty or self.duplicates or self.from_filename)


def caption_flags(items: Sequence[tuple[str, str, str | None]]) -> CaptionFlags:
    """Flags over (name, caption, origin) triples; origin is where the description came from: "sidecar", a
    captioner's name ("filename", ...), "" when nothing gave one, None when not recorded."""
    flags = CaptionFlags()
    counts = Counter(caption for _, caption, _ in items)
    for name, caption, origin in items:
        if origin == "" or not caption.strip():
            flags.empty.add(name)
        if counts[caption] > 1:
            flags.duplicates.setdefault(caption, []).append(name)
        if origin == "filename":
            flags.from_filename.add(name)
    return flags
