"""`personae captions DIR`: list, search and edit a training set's captions in bulk, as kohya users do with their
tag managers.

DIR is a `personae prepare` output (captions in images/*.txt, mirrored in manifest.jsonl, which is kept in step)
or any folder of images with caption sidecars beside them (`x.txt`, or `x.caption`). Edits are written only into
a prepared set (a folder personae made), each caption file atomically: an image without one is listed, never
given one; a caption file that is a link is left alone. Any other folder is the user's: it is listed, searched
and dry-run, and an edit there is refused with the way out (prepare it, edit the prepared set).

Edits use kohya's comma-separated tag semantics: a caption is a list of tags split at commas; tags compare
without case, with "_" as a space. Applied in this order to every caption (or every caption matching --search):
--replace OLD NEW (plain text), --remove-tag TAG, --prepend TAG (moved to the front if present), --append TAG
(moved to the end if present).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from personae.data.images import CAPTION_SUFFIXES, find_images
from personae.data.prepare import PREPARED_SET, load_manifest, read_caption_file, write_contact_sheet, write_manifest
from personae.errors import UserError
from personae.outputs import locked, survey
from personae.staging import write_text


@dataclass
class CaptionItem:
    name: str  # the image, relative to DIR (what is shown)
    text_file: Path | None  # the caption file edits go to (None: the image has none, so it is never edited)
    caption: str


@dataclass
class CaptionSet:
    folder: Path
    prepared: bool  # a `personae prepare` output: manifest.jsonl follows every edit
    items: list[CaptionItem]


@dataclass(frozen=True)
class CaptionEdit:
    replace: tuple[str, str] | None = None
    remove_tags: tuple[str, ...] = ()
    prepend: tuple[str, ...] = ()
    append: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.replace or self.remove_tags or self.prepend or self.append)


@dataclass
class Change:
    item: CaptionItem
    old: str
    new: str


@dataclass
class EditResult:
    changes: list[Change] = field(default_factory=list)
    matched: int = 0  # captions the search selected (all of them without a search)
    skipped: list[tuple[CaptionItem, str]] = field(default_factory=list)  # (item, why it was not written)


def load_captions(folder: str | Path) -> CaptionSet:
    """Every image of DIR with its caption (a prepared set's .txt files win over its manifest, as in training)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder.",
                        "Pass a `personae prepare` output or a folder of images with .txt captions beside them.")
    if (folder / "manifest.jsonl").is_file() and survey(folder, PREPARED_SET).state == "ours":
        items = []
        for e in load_manifest(folder):
            text_file = (folder / e.image).with_suffix(".txt")
            caption = read_caption_file(text_file) if text_file.is_file() else e.caption
            items.append(CaptionItem(e.image, text_file, caption))
        return CaptionSet(folder, True, sorted(items, key=lambda i: i.name))
    items = []
    for image in find_images(folder):
        text_file = next((image.with_suffix(s) for s in CAPTION_SUFFIXES if image.with_suffix(s).is_file()), None)
        caption = read_caption_file(text_file) if text_file else ""
        items.append(CaptionItem(image.relative_to(folder).as_posix(), text_file, caption))
    if not items:
        raise UserError(f"{folder} holds no images.",
                        "Pass a `personae prepare` output or a folder of images with .txt captions beside them.")
    return CaptionSet(folder, False, items)


def _norm(tag: str) -> str:
    return " ".join(tag.replace("_", " ").lower().split())


def _tags(caption: str) -> list[str]:
    return [t for t in (" ".join(part.split()) for part in caption.split(",")) if t]


def edit_caption(caption: str, edit: CaptionEdit) -> str:
    """One caption after `edit` (see the module's docstring for the order and the tag rules)."""
    if edit.replace:
        caption = caption.replace(*edit.replace)
    tags = _tags(caption)
    drop = {_norm(t) for t in (*edit.remove_tags, *edit.prepend, *edit.append)}
    tags = [t for t in tags if _norm(t) not in drop]
    tags = [*(" ".join(t.split()) for t in edit.prepend), *tags, *(" ".join(t.split()) for t in edit.append)]
    return ", ".join(t for t in tags if t)


def matches(caption: str, search: str | None) -> bool:
    return not search or search.lower() in caption.lower()


def edit_captions(captions: CaptionSet, edit: CaptionEdit, search: str | None = None,
                  dry_run: bool = False) -> EditResult:
    """Apply `edit` to every caption matching `search`; write the changed caption files (and a prepared set's
    manifest) unless `dry_run`."""
    result = EditResult()
    for item in captions.items:
        if not matches(item.caption, search):
            continue
        result.matched += 1
        _propose(result, item, edit_caption(item.caption, edit))
    return _apply(captions, result, dry_run)


def set_captions(captions: CaptionSet, new: dict[str, str], dry_run: bool = False) -> EditResult:
    """Give the images named in `new` ({image name: caption}, as listed) those captions (the web UI's inline
    editor); written as `edit_captions` writes: only a prepared set's own caption files, its manifest following."""
    unknown = sorted(set(new) - {item.name for item in captions.items})
    if unknown:
        raise UserError(f"{captions.folder} has no image named {unknown[0]!r}.", "Edit the captions of the images listed.")
    result = EditResult()
    for item in captions.items:
        if item.name not in new:
            continue
        result.matched += 1
        _propose(result, item, " ".join(str(new[item.name]).split()))
    return _apply(captions, result, dry_run)


def _propose(result: EditResult, item, new: str) -> None:
    """A changed caption becomes a change, unless its file is missing or a link (then skipped, with why)."""
    if new == item.caption:
        return
    if item.text_file is None:
        result.skipped.append((item, "no caption file beside it (none is created)"))
    elif item.text_file.is_symlink():
        result.skipped.append((item, "its caption file is a link (it belongs elsewhere)"))
    else:
        result.changes.append(Change(item, item.caption, new))


def _apply(captions: CaptionSet, result: EditResult, dry_run: bool) -> EditResult:
    if dry_run or not result.changes:
        return result
    if not captions.prepared:  # a folder personae did not make: its caption files are the user's, never written
        raise UserError(f"{captions.folder} is not a `personae prepare` output: its {len(result.changes)} caption "
                        "file(s) that would change are yours, and personae writes only into folders it made.",
                        f"Prepare it (`personae prepare {captions.folder} OUT`) and edit OUT's captions, which "
                        "training reads; or see the changes with --dry-run and make them with your own tools.")
    with locked(captions.folder):
        _write(captions, result.changes)
    return result


def _write(captions: CaptionSet, changes: list[Change]) -> None:
    for change in changes:
        write_text(change.item.text_file, change.new + "\n")
        change.item.caption = change.new
    if captions.prepared:  # the manifest follows the caption files (all of them: hand edits included)
        now = {item.name: item.caption for item in captions.items}
        entries = load_manifest(captions.folder)
        for entry in entries:
            if now.get(entry.image, entry.caption) != entry.caption:
                entry.caption, entry.caption_from = now[entry.image], "edited"
        write_manifest(captions.folder, entries)
        if entries:
            write_contact_sheet(captions.folder, entries)
