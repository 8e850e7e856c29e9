"""Labelled image grids: rows x columns of images with row and column labels (Pillow only).

Labels are never cut: a long prompt wraps onto as many lines as it needs, and the header
row (or a variant's row) grows to hold them, as A1111's X/Y plot does.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from personae.media.sheet import font
from personae.media.storyboard_sheet import wrap
from personae.staging import atomic_file

LINE = 16  # pixels per label line at the 13-pixel font
ROW_LABEL_W = 150


def wrapped(text: str, width: int, size: int = 13, f=None) -> list[str]:
    """`text` broken into lines no wider than `width` pixels in font `f` (default: `font(size, text)`), at spaces,
    else between characters; nothing dropped."""
    f, measure = f or font(size, text), ImageDraw.Draw(Image.new("RGB", (1, 1)))
    return [line for line in wrap(text, lambda s: measure.textlength(s, font=f) <= width) if line] or [""]


def labelled_grid(cells: list[list[Image.Image]], row_labels: list[str], col_labels: list[str], title: str = "",
                  cell: int | None = None) -> Image.Image:
    """cells[r][c]; small images are enlarged with hard pixels so tiny models stay readable."""
    # 1. sizes: labels wrapped to their column (or the row-label strip); header and rows grow to fit them
    first = cells[0][0]
    cell = cell or max(128, first.width)
    scale_up = first.width < cell
    label_w = ROW_LABEL_W if any(row_labels) else 0
    f = font(13, "".join([*row_labels, *col_labels]))  # one font for every label: a Korean prompt draws in Hangul
    col_lines = [wrapped(c, cell - 8, f=f) for c in col_labels]
    header = (max(len(lines) for lines in col_lines) * LINE + 8) if any(col_labels) else 0
    row_lines = [wrapped(label, label_w - 10, f=f) for label in row_labels] if label_w else [[] for _ in cells]
    row_h = [max(cell, len(lines) * LINE + 8) for lines in row_lines]
    cols = max(len(r) for r in cells)
    width = label_w + cols * (cell + 4) + 4
    title_font = font(15, title)
    title_lines = wrapped(title, width - 12, f=title_font) if title else []
    title_h = len(title_lines) * 20 + 4 if title else 0
    grid = Image.new("RGB", (width, title_h + header + sum(h + 4 for h in row_h) + 4), "white")
    # 2. draw: title, column headers, then each row's label and images
    draw = ImageDraw.Draw(grid)
    for j, line in enumerate(title_lines):
        draw.text((6, 4 + j * 20), line, fill="black", font=title_font)
    for c, lines in enumerate(col_lines):
        for j, line in enumerate(lines):
            draw.text((label_w + c * (cell + 4) + 6, title_h + 4 + j * LINE), line, fill="black", font=f)
    y = title_h + header + 4
    resample = Image.Resampling.NEAREST if scale_up else Image.Resampling.LANCZOS
    for r, row in enumerate(cells):
        for j, line in enumerate(row_lines[r]):
            draw.text((6, y + 4 + j * LINE), line, fill="black", font=f)
        for c, image in enumerate(row):
            grid.paste(image.convert("RGB").resize((cell, cell), resample), (label_w + c * (cell + 4) + 4, y))
        y += row_h[r] + 4
    return grid


def save_image(image: Image.Image, path: Path) -> Path:
    with atomic_file(path) as tmp:
        image.save(tmp, format="PNG")
    return path
