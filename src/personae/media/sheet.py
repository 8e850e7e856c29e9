"""Contact sheets: thumbnails in a grid with a caption under each (Pillow only)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from personae.errors import UserError
from personae.media.fonts import font_for
from personae.staging import atomic_file

_FONT_CANDIDATES = ["DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"]
_DEJAVU_COVERS = 0x24F  # Latin to Latin Extended-B; beyond it (Hangul, kana, Han...) look for a font that has them


def font(size: int, text: str = "") -> ImageFont.ImageFont:
    """A font at `size` for labels: DejaVu Sans, or for `text` with characters beyond Latin (a Korean prompt, a
    Russian caption) an installed font that draws all of them (media.fonts), so a label is never a row of boxes.
    When no installed font covers them, DejaVu (the boxes show what is missing; a label is no reason to fail)."""
    if any(ord(c) > _DEJAVU_COVERS for c in text):
        try:
            return ImageFont.truetype(font_for(text), size)
        except (UserError, OSError):
            pass
    for name in _FONT_CANDIDATES:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


MARK_RED = (200, 30, 30)


def contact_sheet(images: list[Path], captions: list[str], out: Path, thumb: int = 160, columns: int = 6,
                  text_lines: int = 4, marks: list[str] | None = None) -> Path:
    """A PNG grid of `images` with their captions, written atomically; a non-empty `marks[i]` ("empty, duplicate")
    is written in white on a red band across the top of image i."""
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    text_size = 11
    line_h = text_size + 3
    cell_w, cell_h = thumb + 10, thumb + 10 + text_lines * line_h
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    f = font(text_size, "".join(captions))
    chars = max(8, int(thumb / (text_size * 0.55)))
    for i, (path, caption) in enumerate(zip(images, captions)):
        x, y = (i % columns) * cell_w + 5, (i // columns) * cell_h + 5
        with Image.open(path) as im:
            im = im.convert("RGB")
            small = max(im.size) < thumb  # tiny training images are enlarged with hard pixels, not blurred
            im = ImageOps.contain(im, (thumb, thumb), Image.Resampling.NEAREST if small else Image.Resampling.LANCZOS)
            sheet.paste(im, (x + (thumb - im.width) // 2, y + (thumb - im.height) // 2))
        if marks and marks[i]:
            draw.rectangle([x, y, x + thumb - 1, y + line_h + 2], fill=MARK_RED)
            draw.text((x + 3, y + 2), f"! {marks[i]}", fill="white", font=f)
        lines = textwrap.wrap(caption, chars)[:text_lines]
        for j, line in enumerate(lines):
            draw.text((x, y + thumb + 3 + j * line_h), line, fill="black", font=f)
    with atomic_file(out) as tmp:
        sheet.save(tmp, format="PNG")
    return out
