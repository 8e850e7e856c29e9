"""`personae prepare SRC OUT`: a folder of photos or drawings becomes a training set.

OUT holds, for every usable image, `images/<name>.png` and `images/<name>.txt` (its
caption), plus `manifest.jsonl` (one JSON object per image: the trainer's input; each line
carries the manifest's `version`, lines without one are version 1; a damaged line is an error
that names the file and the line),
`report.md` (counts, every rejected file with its reason, near-duplicates, faces not
found) and `contact_sheet.png`. SRC is only read, and may not overlap OUT. Each output's name
is its source's path made safe plus a short hash of that exact path, so no two sources share
one (`a b.png` / `a_b.png`, `x.jpg` / `x.png`) and a name never changes between runs.

OUT is built in OUT.partial and replaces personae's previous set whole (outputs.py): a
re-run reuses (links) every output whose source file and settings are unchanged, and drops
outputs whose source is gone; files the user added to OUT are left alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from personae.config.prepare import PrepareSettings
from personae.data import captions as cap
from personae.data.caption_checks import CaptionFlags, caption_flags
from personae.data.captioners import Captioner, get_captioner
from personae.data.framing import bucket_box, center_box, detect_faces, face_box, make_buckets, nearest_bucket
from personae.data.images import Rejected, file_hash, find_images, hamming, load_image, perceptual_hash
from personae.data.masks import MASK_SUFFIX, frame_mask, mask_fingerprint, source_mask
from personae.errors import UserError
from personae.events import EventHandler, Message, Progress, ignore
from personae.media.sheet import contact_sheet
from personae.outputs import Kind, absolute, check_output, staged_output
from personae.staging import atomic_file, write_text

MANIFEST = "manifest.jsonl"
REPORT_ROWS = 200  # flagged captions listed in report.md (the counts cover them all)
MANIFEST_VERSION = 3  # in every line; a change of shape adds a migration in _entry
PREPARED_SET = Kind("prepare", "a prepared training set", "personae prepare", signature=(MANIFEST, "report.md"),
                    layout=("images/*.png", "images/*.txt", MANIFEST, "report.md", "contact_sheet.png"))


@dataclass
class Entry:
    """One line of manifest.jsonl."""

    source: str  # path relative to SRC
    source_sha256: str
    image: str  # path relative to OUT
    caption: str
    crop_box: list[int]  # in the upright source image: left, top, right, bottom
    width: int
    height: int
    bucket: list[int]  # [width, height] the trainer batches by
    repeats: int
    token: str
    keep_tokens: int
    face: bool | None  # face crop: was a face found (None when not asked)
    phash: str
    settings_hash: str
    source_size: int
    source_mtime_ns: int
    sidecar_sha256: str | None = None  # the source's caption sidecar(s) ("" for none; None: not recorded, version 1)
    caption_from: str | None = None  # "sidecar", the captioner's name, "" when neither gave text, "edited" when the
    # user changed the set's .txt since (None: version 1)
    mask: str | None = None  # where images/<name>.mask.png came from: "alpha", "sidecar", "face"; "" none (data/masks)
    mask_sha256: str | None = None  # the source's sidecar mask ("" for none; None: not recorded, before version 3)
    version: int = MANIFEST_VERSION  # the manifest format (lines written before it existed are version 1)


@dataclass
class PrepareResult:
    out: Path
    entries: list[Entry]
    rejected: list[Rejected]
    duplicates: list[tuple[str, str, int]]
    reused: int


# settings added after sets were prepared without them: left out of the hash at their defaults, so those sets'
# images are reused instead of prepared (and captioned) again
LATER_SETTINGS = {"caption_extension": "auto", "sidecars": "template"}


def _settings_hash(settings: PrepareSettings) -> str:
    later = {key for key, default in LATER_SETTINGS.items() if getattr(settings, key) == default}
    return hashlib.sha256(settings.model_dump_json(exclude=later).encode()).hexdigest()[:16]


def _output_name(relative: Path) -> str:
    """A readable, file-system-safe name that is unique to the exact source path (suffix and folders included)."""
    stem = "__".join(relative.with_suffix("").parts)
    readable = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:100]
    return f"{readable}-{hashlib.sha256(relative.as_posix().encode('utf-8')).hexdigest()[:8]}"


def _entry(path: Path, number: int, line: str) -> Entry:
    """One manifest line; a damaged or newer one is a UserError naming the file and the line."""
    fix = "Run `personae prepare` again on the source folder to rebuild the set."
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise UserError(f"{path}, line {number}: not a JSON object ({exc.msg}).", fix) from None
    if not isinstance(data, dict):
        raise UserError(f"{path}, line {number}: not a JSON object.", fix)
    version = data.get("version", 1)
    if isinstance(version, int) and version > MANIFEST_VERSION:
        raise UserError(f"{path}, line {number}: manifest version {version} is newer than this personae reads "
                        f"({MANIFEST_VERSION}).", "Update personae, or prepare the set again with this version.")
    if isinstance(version, int) and version < 3:  # 1 -> 2: sidecar_sha256, caption_from; 2 -> 3: mask, mask_sha256
        data = {**data, "version": MANIFEST_VERSION}  # (unknown: None, so the image is prepared again, not reused)
    try:
        entry = Entry(**data)
    except TypeError as exc:  # a field missing or unknown
        raise UserError(f"{path}, line {number}: not a manifest entry ({exc}).", fix) from None
    if not isinstance(entry.image, str) or not isinstance(entry.caption, str):
        raise UserError(f"{path}, line {number}: `image` and `caption` must be text.", fix)
    return entry


def _read_manifest(out: Path) -> dict[str, Entry]:
    path = out / MANIFEST
    if not path.is_file():
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text.", "Run `personae prepare` again to rebuild the set.") from None
    entries = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            entry = _entry(path, number, line)
            entries[entry.source] = entry
    return entries


def read_caption_file(path: Path) -> str:
    """A caption .txt as one line of text (whitespace runs collapsed; empty is allowed: the user's choice)."""
    return " ".join(path.read_text(encoding="utf-8", errors="replace").split())


def load_manifest(folder: str | Path) -> list[Entry]:
    """The entries of a prepared set (used by the trainer)."""
    return list(_read_manifest(Path(folder)).values())


def write_manifest(folder: str | Path, entries: list[Entry]) -> None:
    """manifest.jsonl of a prepared set, written atomically."""
    write_text(Path(folder) / MANIFEST, "".join(json.dumps(asdict(e), ensure_ascii=False) + "\n" for e in entries))


def _frame(image: Image.Image, settings: PrepareSettings, buckets
           ) -> tuple[list[int], tuple[int, int], bool | None, tuple[int, int, int, int] | None]:
    """(crop box, output size, face found?, the face's box) for one upright RGB image."""
    w, h = image.size
    if settings.crop == "none":
        bucket = nearest_bucket(w, h, buckets)
        return list(bucket_box(w, h, bucket)), (bucket.width, bucket.height), None, None
    if settings.crop == "face":
        faces = detect_faces(image)
        if faces:
            return list(face_box(w, h, faces[0], settings.face_margin)), (settings.resolution,) * 2, True, faces[0]
        return list(center_box(w, h)), (settings.resolution,) * 2, False, None
    return list(center_box(w, h)), (settings.resolution,) * 2, None, None


def prepare_dataset(src: str | Path, out: str | Path, settings: PrepareSettings, on_event: EventHandler = ignore,
                    load_captioner: Callable[[str], Captioner] = get_captioner) -> PrepareResult:
    """`load_captioner` turns `settings.captioner` into a captioner once the inputs are checked; the default knows
    only the ones that need no model (a model captioner: `personae.models.captioners.load_captioner`)."""
    # 1. check inputs
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise UserError(f"{src} is not a folder.", "Pass the folder that holds your images as SRC.")
    _refuse_overlap(src, out)
    _check_buckets(settings)
    files = find_images(src)
    if not files:
        raise UserError(f"{src} holds no image files (looked for jpg, jpeg, png, webp, bmp, tiff, gif, recursively).")
    previous = {}
    if check_output(out, PREPARED_SET).state == "ours":
        try:
            previous = _read_manifest(out)
        except UserError as exc:  # nothing of it is reused: every image is prepared again
            on_event(Message(f"{exc.what} Rebuilding the whole set.", "warning"))
    captioner = load_captioner(settings.captioner)
    with staged_output(out, PREPARED_SET) as work:
        result = _prepare(src, files, out, work, previous, settings, captioner, on_event)
    result.out = out
    on_event(Message(f"prepared {len(result.entries)} images ({result.reused} unchanged), rejected "
                     f"{len(result.rejected)}: see {out / 'report.md'}"))
    return result


def _check_buckets(settings: PrepareSettings) -> None:
    """With --crop none every image goes into an aspect-ratio bucket: there must be at least one."""
    if settings.crop != "none" or make_buckets(settings.resolution, settings.bucket_step):
        return
    fitting = max((s for s in (64, 32, 16, 8) if s <= settings.resolution // 2), default=8)
    raise UserError(f"--crop none with --resolution {settings.resolution} and --bucket-step {settings.bucket_step} "
                    f"gives no bucket: bucket sides move in steps of {settings.bucket_step} px, which do not fit in "
                    f"a {settings.resolution} x {settings.resolution} pixel budget.",
                    f"Use a smaller step (e.g. --bucket-step {fitting}; it should be at most half the resolution) or "
                    "a larger --resolution.")


def _refuse_overlap(src: Path, out: Path) -> None:
    """SRC is only read: OUT may not be SRC, sit inside it, or hold it (SRC = OUT/images would be overwritten)."""
    a, b = absolute(src).resolve(), absolute(out).resolve()
    if a == b or a in b.parents or b in a.parents:
        where = "is" if a == b else ("is inside" if a in b.parents else "holds")
        raise UserError(f"OUT ({out}) {where} SRC ({src}); SRC is only ever read, so the two may not overlap.",
                        "Choose an OUT folder outside SRC (and not around it), e.g. a sibling folder named prepared.")


def _reuse(old_out: Path, work: Path, name: str) -> None:
    """Bring an unchanged output into the new set: a hard link (no copy) where the file system allows it."""
    target = work / name
    try:
        os.link(old_out / name, target)
    except OSError:
        shutil.copy2(old_out / name, target)


def caption_for(path: Path, relative: Path, settings: PrepareSettings, captioner: Captioner,
                image: Image.Image | None = None) -> tuple[str, str]:
    """(caption, where its description came from) for the image at `path` (SRC/`relative`): its sidecar, else the
    captioner's text, through the template; "from" is "sidecar", the captioner's name, or "" when neither gave
    text. `image` may be None for captioners that read only the path (filename, none)."""
    _, prefix, token = cap.folder_meaning(relative, settings.folder_tokens)
    sidecar = cap.read_sidecar(path, cap.sidecar_suffixes(settings.caption_extension))
    if sidecar and not settings.recaption and settings.sidecars == "verbatim":
        return sidecar, "sidecar"
    if sidecar and not settings.recaption:
        raw, origin = sidecar, "sidecar"
    else:
        raw = cap.clean_tags(captioner.caption([image], [path])[0] or "", not settings.keep_underscores)
        origin = captioner.name if raw else ""
    caption = cap.fill_template(settings.template, caption=cap.clean_tags(raw, not settings.keep_underscores), trigger=settings.trigger,
                                class_word=settings.class_word, token=token, folder=prefix, append=settings.append)
    return caption, origin


def planned_captions(src: str | Path, settings: PrepareSettings) -> list[str]:
    """The captions `prepare_dataset(src, ..., settings)` would write, without reading or writing any image
    (only for captioners that need no model; images prepare would reject are included)."""
    src = Path(src)
    captioner = get_captioner(settings.captioner)
    return [caption_for(path, path.relative_to(src), settings, captioner)[0] for path in find_images(src)]


def _prepare(src: Path, files: list[Path], out: Path, work: Path, previous: dict[str, Entry],
             settings: PrepareSettings, captioner, on_event: EventHandler) -> PrepareResult:
    settings_hash = _settings_hash(settings)
    (work / "images").mkdir(parents=True, exist_ok=True)
    buckets = make_buckets(settings.resolution, settings.bucket_step)

    # 2. read, frame, caption and write each image (reusing unchanged outputs)
    entries, rejected, reused = [], [], 0
    for i, path in enumerate(files):
        on_event(Progress("prepare", i, len(files)))
        relative = path.relative_to(src)
        stat = path.stat()
        name = _output_name(relative)
        image_rel = f"images/{name}.png"
        old = previous.get(relative.as_posix())
        sidecar_sha = cap.sidecar_fingerprint(path, cap.sidecar_suffixes(settings.caption_extension))
        mask_sha = mask_fingerprint(path)
        mask_rel = f"images/{name}{MASK_SUFFIX}"
        if (old and old.settings_hash == settings_hash and old.source_size == stat.st_size
                and old.source_mtime_ns == stat.st_mtime_ns and old.sidecar_sha256 == sidecar_sha
                and old.mask_sha256 == mask_sha and (not old.mask or (out / mask_rel).is_file())
                and old.image == image_rel and (out / old.image).is_file() and (out / f"images/{name}.txt").is_file()):
            _reuse(out, work, old.image)
            _reuse(out, work, f"images/{name}.txt")
            if old.mask:
                _reuse(out, work, mask_rel)
            text = read_caption_file(out / f"images/{name}.txt")
            if text != old.caption:  # edited there by the user: the manifest follows
                old.caption, old.caption_from = text, "edited"
            entries.append(old)
            reused += 1
            continue
        image = load_image(path, settings.min_side, settings.max_aspect, settings.background)
        if isinstance(image, Rejected):
            rejected.append(Rejected(relative, image.reason))
            continue
        box, size, face, face_rect = _frame(image, settings, buckets)
        framed = image.crop(tuple(box)).resize(size, Image.Resampling.LANCZOS)
        mask, mask_from = source_mask(path, image.size, face_rect)
        if mask is not None:
            with atomic_file(work / mask_rel) as tmp:
                frame_mask(mask, box, size).save(tmp, format="PNG")
        repeats, _, token = cap.folder_meaning(relative, settings.folder_tokens)
        caption, caption_from = caption_for(path, relative, settings, captioner, image)
        with atomic_file(work / image_rel) as tmp:
            framed.save(tmp, format="PNG")
        write_text(work / f"images/{name}.txt", caption + "\n")
        entries.append(Entry(relative.as_posix(), file_hash(path), image_rel, caption, box, size[0], size[1],
                             [size[0], size[1]], repeats, token, settings.keep_tokens, face,
                             f"{perceptual_hash(image):016x}", settings_hash, stat.st_size, stat.st_mtime_ns,
                             sidecar_sha, caption_from, mask_from, mask_sha))
    on_event(Progress("prepare", len(files), len(files)))

    # 3. outputs whose source is gone or now rejected are not carried over into the new set; names never repeat
    names = [e.image for e in entries]
    if len(set(names)) != len(names):  # would need two source paths with the same readable name and hash
        raise RuntimeError(f"prepare: two sources were given one output name: {sorted(n for n in names if names.count(n) > 1)}")

    # 4. near-duplicates by perceptual hash
    duplicates = []
    hashes = [(e.source, int(e.phash, 16)) for e in entries]
    for a in range(len(hashes)):
        for b in range(a + 1, len(hashes)):
            distance = hamming(hashes[a][1], hashes[b][1])
            if distance <= settings.duplicate_distance:
                duplicates.append((hashes[a][0], hashes[b][0], distance))

    # 5. manifest, report, contact sheet
    result = PrepareResult(work, entries, rejected, duplicates, reused)
    write_manifest(work, entries)
    write_text(work / "report.md", _report(src, result, settings))
    if entries:
        write_contact_sheet(work, entries)
    return result


def write_contact_sheet(work: Path, entries: list[Entry]) -> Path:
    """contact_sheet.png: every kept image with its caption, flagged captions under a red band (rewritten when
    `personae captions` edits the set, so it never shows captions training will not read)."""
    flags = _flags(entries)
    return contact_sheet([work / e.image for e in entries], [e.caption for e in entries], work / "contact_sheet.png",
                         marks=[", ".join(flags.of(e.source, e.caption)) for e in entries])


def _flags(entries: list[Entry]) -> CaptionFlags:
    return caption_flags([(e.source, e.caption, e.caption_from) for e in entries])


def _cell(text: str) -> str:
    """Text for a markdown table cell."""
    return (text or "(empty)").replace("|", "\\|")


def _report(src: Path, r: PrepareResult, settings: PrepareSettings) -> str:
    lines = [f"# Training set prepared from `{src}`", "",
             f"- images: {len(r.entries)} ({r.reused} reused unchanged from the last run)",
             f"- rejected: {len(r.rejected)}", f"- near-duplicate pairs: {len(r.duplicates)}",
             f"- framing: {settings.crop}, resolution {settings.resolution}"]
    flags = _flags(r.entries)
    origins = [e.caption_from for e in r.entries]
    lines += [f"- captions: {origins.count('sidecar')} from sidecar files, {len(flags.from_filename)} from file "
              f"names, {len(flags.empty)} empty (template only), {len(flags.duplicates)} duplicated "
              f"(the same text on {flags.duplicated_images} images)", ""]
    if r.rejected:
        lines += ["## Rejected files", "", "| file | reason |", "|---|---|"]
        lines += [f"| `{x.path.as_posix()}` | {x.reason} |" for x in r.rejected] + [""]
    no_face = [e.source for e in r.entries if e.face is False]
    if no_face:
        lines += ["## No face found (centre crop used)", ""] + [f"- `{s}`" for s in no_face] + [""]
    if r.duplicates:
        lines += ["## Near-duplicates (perceptual hash)", "", "| first | second | differing bits |", "|---|---|---|"]
        lines += [f"| `{a}` | `{b}` | {d} |" for a, b, d in r.duplicates] + [""]
    if flags.any():
        lines += ["## Captions to check", "",
                  "Empty captions teach only the template's words; a caption shared by several images cannot tell "
                  "them apart; a file name is rarely a description. Edit the `.txt` files in `images/` (training "
                  "reads them) or add sidecar captions beside the sources and run prepare again.", "",
                  "| file | caption | why |", "|---|---|---|"]
        flagged = [e for e in r.entries if flags.of(e.source, e.caption)]
        lines += [f"| `{e.source}` | {_cell(e.caption)} | {', '.join(flags.of(e.source, e.caption))} |"
                  for e in flagged[:REPORT_ROWS]]
        lines += [f"| ... | {len(flagged) - REPORT_ROWS} more (see `manifest.jsonl`) | |"] * (len(flagged) > REPORT_ROWS)
        lines += [""]
    buckets: dict[str, int] = {}
    for e in r.entries:
        buckets[f"{e.width}x{e.height}"] = buckets.get(f"{e.width}x{e.height}", 0) + 1
    lines += ["## Sizes", "", "| size | images |", "|---|---|"] + [f"| {k} | {v} |" for k, v in sorted(buckets.items())]
    return "\n".join(lines) + "\n"
