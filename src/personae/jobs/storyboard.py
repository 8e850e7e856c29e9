"""`personae storyboard SCENES.yaml`: panels, sheet PNG and PDF, and storyboard.json to redo any panel.

OUT/panels/panel-NNN.png (each with A1111 metadata), OUT/sheet.png (or sheet-1.png,
sheet-2.png... for several pages), OUT/sheet.pdf, OUT/storyboard.json (every setting,
every panel's prompt, seed and file hash). `only` regenerates the listed panels and
re-lays the sheets from the panel files on disk. The board is built in OUT.partial and
replaces personae's previous board whole (outputs.py); an OUT holding anything else is refused.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from pathlib import Path

import yaml

from personae.config.base import apply_overrides, load_yaml, parse_settings, parse_yaml
from personae.config.storyboard import StoryboardSettings
from personae.errors import UserError
from personae.events import EventHandler, Message, Progress, ignore
from personae.inference.storyboard import (
    PanelRecord,
    addon_embeddings,
    addon_loras,
    canonical_shot,
    render_panel,
    shot_phrase,
    tokenless_shots,
)
from personae.media.fonts import font_for
from personae.media.png import save_png
from personae.media.storyboard_sheet import PanelText, body, header, render_png_pages, write_pdf
from personae.models.resolve import resolve_model
from personae.outputs import Kind, check_output, staged_output
from personae.staging import atomic_file, write_text

STORYBOARD = Kind("storyboard", "a storyboard", "personae storyboard", signature=("storyboard.json", "sheet.pdf"),
                  layout=("panels/panel-*.png", "sheet.png", "sheet-*.png", "sheet.pdf", "storyboard.json"))


def _page_text(panels: list[PanelText], title: str):
    """The page's words as a UTF-8 PNG text chunk ("Description"), so a sheet's dialogue can be searched and read
    back from the PNG as from the PDF."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    lines = ([title] if title else []) + [f"{header(p)}\n{body(p)}" for p in panels]
    info.add_itxt("Description", "\n".join(lines))
    return info


def load_scenes(path: str | Path, overrides: dict | None = None, assignments: list[str] = ()) -> StoryboardSettings:
    """A YAML storyboard file, or a CSV of scenes (number, description, dialogue, shot, angle, characters) whose
    "# key: value" lines above the header hold the same settings a YAML file does; then `--set KEY=VALUE`
    `assignments`, then `overrides` (the command line's options), over either."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        data, scenes = _csv_file(path)
        data["scenes"] = scenes
    else:
        data = load_yaml(path)
    data = apply_overrides(data, list(assignments))
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    settings = parse_settings(StoryboardSettings, data, str(path))
    return _relative_to(settings, path.resolve().parent, path)


_SETTING_LINE = re.compile(r"^#(\s|$)")  # "# key: value" above the header (a header's own "#" column is "#,")


def _csv_file(path: Path) -> tuple[dict, list[dict]]:
    """(the settings in the "# key: value" lines above the header, the scenes of the rows below it)."""
    if not path.is_file():
        raise UserError(f"{path} does not exist.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at position {exc.start}).",
                        "Save it as UTF-8 CSV (spreadsheets offer \"CSV UTF-8\").") from None
    lines = text.splitlines(keepends=True)
    head = 0
    while head < len(lines) and _SETTING_LINE.match(lines[head].rstrip().rstrip(",")):
        head += 1
    settings = "".join(line.rstrip().rstrip(",")[1:].removeprefix(" ") + "\n" for line in lines[:head])
    try:
        data = parse_yaml(settings) if settings.strip() else {}
    except yaml.YAMLError as exc:
        raise UserError(f'{path}: the "# key: value" settings lines above the header are not valid YAML ({exc}).',
                        'Write one setting per line, e.g. "# style_lora: sketch.safetensors:0.8".') from None
    if not isinstance(data, dict):
        raise UserError(f'{path}: the "#" lines above the header must be settings written "# key: value".',
                        'E.g. "# model: ./tiny" and "# style_lora: sketch.safetensors:0.8".')
    if "scenes" in data:
        raise UserError(f"{path}: the scenes of a CSV file are its rows, not a `# scenes:` setting.",
                        "Write each scene as a row below the header, or use a YAML file.")
    return data, _csv_scenes(path, "".join(lines[head:]))


def _csv_scenes(path: Path, text: str) -> list[dict]:
    """The scenes of a CSV text (a header row naming the columns, then one row per scene)."""
    try:
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise UserError(f"{path} is not a readable CSV file ({exc}).") from None
    scenes = []
    for i, row in enumerate(rows, start=1):
        row = {str(k).strip().lower(): (v if isinstance(v, str) else "").strip() for k, v in row.items() if k}
        if "#" in row and "number" not in row:  # shot lists often head the number column "#"
            row["number"] = row.pop("#")
        scene = {k: v for k, v in row.items() if v != ""}
        number = row.get("number") or str(i)
        if not number.isdecimal() or len(number) > 9:
            raise UserError(f'{path}, scene row {i}: the number "{number[:40]}" is not a whole number.',
                            "Number the scenes 1, 2, 3... (or leave the column empty to count rows).")
        scene["number"] = int(number)
        if "characters" in scene:
            scene["characters"] = [c.strip() for c in scene["characters"].replace(";", ",").split(",") if c.strip()]
        scenes.append(scene)
    return scenes


def _relative_to(settings: StoryboardSettings, base: Path, source: Path) -> StoryboardSettings:
    """Paths in a scenes file (model, LoRAs, embeddings, font) are relative to the file, as users expect; a path
    that exists nowhere is named with its key and where it was looked for (not blamed on a command-line flag)."""
    def fix(value: str | None, key: str, must_exist: bool = True) -> str | None:
        if not value or Path(value).expanduser().is_absolute():
            return value
        if (base / value).exists():
            return str((base / value).resolve())
        if Path(value).exists() or not must_exist:  # given on the command line (relative to here), or a hub id
            return value
        raise UserError(f"{source}: {key} is {value}, which does not exist (looked for {base / value}, relative "
                        "to the scenes file).", "Fix the path in the file (relative to the file, or absolute), or "
                        "run the step that writes it first (e.g. `personae train` for a run's LoRA).")

    data = settings.model_dump()
    data["model"], data["font"] = fix(data["model"], "model", must_exist=False), fix(data["font"], "font")
    refs = [("style_lora", data["style_lora"])]
    refs += [(f"shot_embeddings[{i}]", ref) for i, ref in enumerate(data["shot_embeddings"])]
    refs += [(f"characters.{name}.{k}", c[k]) for name, c in data["characters"].items() for k in ("lora", "embedding")]
    for key, ref in refs:
        if ref:
            ref["path"] = fix(ref["path"], f"{key}.path")
    return StoryboardSettings.model_validate(data)


def _check(settings: StoryboardSettings, only: set[int] | None) -> None:
    numbers = [s.number for s in settings.scenes]
    duplicates = sorted({n for n in numbers if numbers.count(n) > 1})
    if duplicates:
        raise UserError(f"Scene numbers must be unique; repeated: {duplicates}.")
    for scene in settings.scenes:
        canonical_shot(scene.shot, settings)
        unknown = [c for c in scene.characters if c not in settings.characters and settings.characters]
        if unknown:
            raise UserError(f"Scene {scene.number} names characters not defined under `characters`: {unknown}.")
    if only and not only <= set(numbers):
        raise UserError(f"--only names scenes that are not in the file: {sorted(only - set(numbers))}.")
    resolve_model(settings.model)  # a wrong path is said at once, not after seconds of imports


def run_storyboard(settings: StoryboardSettings, out: str | Path, only: set[int] | None = None,
                   on_event: EventHandler = ignore) -> dict:
    out = Path(out)
    # 1. check everything before generating: scenes, shots, characters, a font for all the text, the folder
    _check(settings, only)
    text = "".join(f"#{s.number} {s.shot.upper()} {s.angle} “{s.dialogue}” {s.description}" for s in settings.scenes)
    font = font_for(text + settings.layout.title, settings.font)
    check_output(out, STORYBOARD)
    previous = {}
    if only:
        record = out / "storyboard.json"
        if record.is_file():
            previous = {p["number"]: p for p in json.loads(record.read_text(encoding="utf-8"))["panels"]}
        missing = [s.number for s in settings.scenes if s.number not in only
                   and not (out / "panels" / f"panel-{s.number:03d}.png").is_file()]
        if missing:
            raise UserError(f"Panels {missing} have no image yet in {out / 'panels'}.", "Run once without --only first.")
    with staged_output(out, STORYBOARD, keep_previous=bool(only)) as work:  # --only starts from the board there
        summary, todo, pages = _draw(settings, only, font, previous, work, on_event)
    on_event(Message(f"storyboard: {len(todo)} panel(s) drawn, {len(pages)} page(s) in {out}"))
    return summary


def _draw(settings: StoryboardSettings, only: set[int] | None, font: str, previous: dict, out: Path,
          on_event: EventHandler) -> tuple[dict, list, list]:
    """Panels, sheets and storyboard.json into `out` (the board being built)."""
    panels_dir = out / "panels"
    panels_dir.mkdir(parents=True, exist_ok=True)
    # 2. one loaded model with the style LoRA, character LoRAs and the shot / character tokens
    from personae.inference.session import open_session

    session = open_session(settings.model, settings.device, settings.dtype,
                           loras=[(l.path, l.weight, l.unet_weight) for l in addon_loras(settings)],
                           embeddings=[(e.path, e.token) for e in addon_embeddings(settings)], on_event=on_event,
                           runtime=settings)
    loaded = {e.token for e in session.embeddings}
    for shot in tokenless_shots(settings, loaded):  # a trained token is never borrowed by another kind of shot
        on_event(Message(f'note: the {shot} panels get no shot token (none of the loaded ones is mapped to {shot} in '
                         f'shot_tokens); they are drawn with the words "{shot_phrase(shot, settings)}"'))
    # 3. the panels
    todo = [s for s in settings.scenes if not only or s.number in only]
    records = {}
    for i, scene in enumerate(todo):
        on_event(Progress("panels", i, len(todo)))
        image, prompt = render_panel(session, scene, settings)
        path = save_png(image.image, panels_dir / f"panel-{scene.number:03d}.png", image.parameters, image.png_text())
        records[scene.number] = PanelRecord(scene.number, canonical_shot(scene.shot, settings), prompt, image.seed,
                                            str(path.relative_to(out)), hashlib.sha256(path.read_bytes()).hexdigest()).__dict__
    on_event(Progress("panels", len(todo), len(todo)))
    # 4. the sheets, from the panel files on disk (an earlier board's pages are replaced, whatever their number)
    texts = [PanelText(s.number, canonical_shot(s.shot, settings), s.angle, s.dialogue, s.description,
                       panels_dir / f"panel-{s.number:03d}.png") for s in settings.scenes]
    lay = settings.layout
    pages = render_png_pages(texts, font, lay.page_size, lay.landscape, lay.panels_per_row, lay.panels_per_page, lay.title)
    for stale in [out / "sheet.png", *out.glob("sheet-*.png")]:
        stale.unlink(missing_ok=True)
    names = ["sheet.png"] if len(pages) == 1 else [f"sheet-{i + 1}.png" for i in range(len(pages))]
    per_page = lay.panels_per_page
    for i, (name, page) in enumerate(zip(names, pages)):
        with atomic_file(out / name) as tmp:
            page.save(tmp, format="PNG", pnginfo=_page_text(texts[i * per_page:(i + 1) * per_page], lay.title))
    write_pdf(texts, font, out / "sheet.pdf", lay.page_size, lay.landscape, lay.panels_per_row, lay.panels_per_page,
              lay.title)
    # 5. storyboard.json: enough to regenerate the board or any panel
    panels = [records.get(s.number) or previous.get(s.number) for s in settings.scenes]
    summary = {"settings": settings.model_dump(), "font": font, "sheets": names, "pdf": "sheet.pdf",
               "panels": [p for p in panels if p]}
    write_text(out / "storyboard.json", json.dumps(summary, ensure_ascii=False, indent=1))
    return summary, todo, pages
