"""Checks on a training set's captions that need no model: run before training starts and in prepare's report.

- `require_token`: a learned token (textual inversion, pivotal) that no caption contains gets no gradient,
  so the run would "succeed" and export the init word unchanged: it is refused before the run starts.
- `caption_flags`: empty captions, the same caption on several images, captions made from file names
  (counted in report.md and marked on the contact sheet).
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
    """Captions worth a look before training, by image (the source path as the report names it)."""

    empty: list[str] = field(default_factory=list)
    duplicates: dict[str, list[str]] = field(default_factory=dict)  # caption -> the images sharing it
    from_filename: list[str] = field(default_factory=list)

    def of(self, name: str, caption: str) -> list[str]:
        """Short labels for one image ("empty", "duplicate", "from file name")."""
        labels = []
        if name in self.empty:
            labels.append("empty")
        if caption in self.duplicates:
            labels.append("duplicate")
        if name in self.from_filename:
            labels.append("from file name")
        return labels

    @property
    def duplicated_images(self) -> int:
        return sum(len(names) for names in self.duplicates.values())


def caption_flags(items: Sequence[tuple[str, str, str]]) -> CaptionFlags:
    """Flags over (name, raw caption, final caption) triples: the raw caption is what the sidecar or captioner
    gave before the template; `final` is what trains. Raw "" counts as empty (the template alone remains)."""
    flags = CaptionFlags()
    counts = Counter(final for _, _, final in items)
    for name, raw, final in items:
        if not raw.strip():
            flags.empty.append(name)
        if counts[final] > 1:
            flags.duplicates.setdefault(final, []).append(name)
    return flags
