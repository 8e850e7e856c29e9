"""A1111's prompt styles: `styles.csv` (name, prompt, negative_prompt), applied by name.

    --styles-file ~/webui/styles.csv --style "Cinematic" --style "Film grain"

A style's prompt that holds `{prompt}` wraps the prompt there; any other is appended after ", " (A1111's
merge_prompts); the negative prompts the same way; styles apply in the order given. A1111 writes the prompt with
its styles applied into the PNG, so the picture reproduces without the file (and so does personae).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from personae.errors import UserError, did_you_mean


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str
    negative: str


def styles_path(spec: str) -> Path:
    """The styles file: the file itself, or an A1111 webui folder's styles.csv."""
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "styles.csv").is_file():
        return path / "styles.csv"
    if not path.is_file():
        raise UserError(f"--styles-file {spec} is not a file (nor a folder holding styles.csv).",
                        "Pass A1111's styles.csv (in the webui folder) or a CSV with the columns name, prompt, "
                        "negative_prompt.")
    return path


def read_styles(spec: str) -> dict[str, Style]:
    """The styles of an A1111 styles file, by name (as A1111 reads it: UTF-8 with or without a BOM, spaces after
    commas skipped, the old `text` column read as the prompt)."""
    path = styles_path(spec)
    try:
        with path.open(encoding="utf-8-sig", newline="") as file:
            rows = list(csv.DictReader(file, skipinitialspace=True))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"--styles-file {path} could not be read as a CSV file ({exc}).",
                        "Pass A1111's styles.csv: columns name, prompt, negative_prompt.") from None
    styles = {}
    for row in rows:
        name = (row.get("name") or "").strip()
        if not name:
            continue
        prompt = row.get("prompt") if row.get("prompt") is not None else row.get("text") or ""
        styles[name] = Style(name, prompt or "", row.get("negative_prompt") or "")
    if not styles and rows is not None:
        columns = ", ".join(rows[0]) if rows else "none"
        raise UserError(f"--styles-file {path} holds no styles (columns: {columns}).",
                        "A1111's styles.csv has the columns name, prompt, negative_prompt.")
    return styles


def merge_prompt(style: str, prompt: str) -> str:
    """A1111's merge_prompts: a style with {prompt} wraps the prompt, any other follows it after ", "."""
    if "{prompt}" in style:
        return style.replace("{prompt}", prompt)
    return ", ".join(part for part in (prompt.strip(), style.strip()) if part)


def apply_styles(prompt: str, negative: str, names: list[str], spec: str | None) -> tuple[str, str]:
    """The prompt and negative prompt with the named styles applied in order."""
    if not names:
        return prompt, negative
    if not spec:
        raise UserError(f"--style {names[0]} names an A1111 style, but no styles file was given.",
                        "Pass --styles-file with A1111's styles.csv (or the webui folder).")
    styles = read_styles(spec)
    for name in names:
        if name not in styles:
            raise UserError(f'--style "{name}" is not in {styles_path(spec)}.{did_you_mean(name, styles)}',
                            "Its styles: " + ", ".join(sorted(styles)) + ".")
        prompt = merge_prompt(styles[name].prompt, prompt)
        negative = merge_prompt(styles[name].negative, negative)
    return prompt, negative
