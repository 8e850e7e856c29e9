"""Labelled image grids: rows x columns of images with row and column labels (Pillow only)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from PIL import Image, ImageDraw

from personae.media.sheet import font
from personae.staging import atomic_file


def labelled_grid(cells: list[list[Image.Image]], row_labels: list[str], col_labels: list[str], title: str = "",
                  cell: int | None = None) -> Image.Image:
    """cells[r][c]; small images are enlarged with hard pixels so tiny models stay readable."""
    first = cells[0][0]
    cell = cell or max(128, first.width)
    scale_up = first.width < cell
    label_w = 150 if any(row_labels) else 0
    f = font(13)
    wrap = max(10, cell // 8)
    col_lines = [textwrap.wrap(c, wrap)[:4] for c in col_labels]
    header = (max((len(l) for l in col_lines), default=0) * 16 + 8) if any(col_labels) else 0
    title_h = 24 if title else 0
    rows, cols = len(cells), max(len(r) for r in cells)
    grid = Image.new("RGB", (label_w + cols * (cell + 4) + 4, title_h + header + rows * (cell + 4) + 4), "white")
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((6, 4), title, fill="black", font=font(15))
    for c, lines in enumerate(col_lines):
        for j, line in enumerate(lines):
            draw.text((label_w + c * (cell + 4) + 6, title_h + 4 + j * 16), line, fill="black", font=f)
    for r, row in enumerate(cells):
        y = title_h + header + r * (cell + 4) + 4
        for j, line in enumerate(textwrap.wrap(row_labels[r], 18)[:6] if row_labels else []):
            draw.text((6, y + 4 + j * 16), line, fill="black", font=f)
        for c, image in enumerate(row):
            resample = Image.Resampling.NEAREST if scale_up else Image.Resampling.LANCZOS
            grid.paste(image.convert("RGB").resize((cell, cell), resample), (label_w + c * (cell + 4) + 4, y))
    return grid


def save_image(image: Image.Image, path: Path) -> Path:
    with atomic_file(path) as tmp:
        image.save(tmp, format="PNG")
    return path
