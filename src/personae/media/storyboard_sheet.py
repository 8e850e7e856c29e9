"""Storyboard sheets: panels in a grid with number, shot and angle above, dialogue and description below.

The same layout (in millimetres) is drawn twice: as PNG pages with Pillow (150 dpi) and
as a PDF with fpdf2, whose text stays selectable and searchable. One font, chosen to
cover every script in the text, is used for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from personae.staging import atomic_file

PAGES_MM = {"A4": (210.0, 297.0), "Letter": (215.9, 279.4)}
DPI = 150
MARGIN, GAP, HEADER, TITLE = 10.0, 5.0, 6.0, 9.0
TEXT_PT = 8.0


@dataclass
class PanelText:
    number: int
    shot: str
    angle: str
    dialogue: str
    description: str
    image: Path


@dataclass
class Cell:
    x: float
    y: float
    w: float
    h: float


def page_size(page: str, landscape: bool) -> tuple[float, float]:
    w, h = PAGES_MM[page]
    return (h, w) if landscape else (w, h)


def cells(page_w: float, page_h: float, per_row: int, per_page: int, title: bool) -> list[Cell]:
    rows = -(-per_page // per_row)
    top = MARGIN + (TITLE if title else 0.0)
    w = (page_w - 2 * MARGIN - (per_row - 1) * GAP) / per_row
    h = (page_h - top - MARGIN - (rows - 1) * GAP) / rows
    return [Cell(MARGIN + (i % per_row) * (w + GAP), top + (i // per_row) * (h + GAP), w, h) for i in range(per_page)]


def header(p: PanelText) -> str:
    return " · ".join(x for x in (f"#{p.number}", p.shot.upper(), p.angle) if x)


def body(p: PanelText) -> str:
    parts = []
    if p.dialogue:
        parts.append(f"“{p.dialogue}”")
    if p.description:
        parts.append(p.description)
    return "\n".join(parts)


def image_box(cell: Cell, aspect: float) -> tuple[float, float, float, float]:
    """(x, y, w, h) of the panel image: full cell width, leaving at least 40 % of the cell for text."""
    h = min(cell.w / aspect, (cell.h - HEADER) * 0.6)
    w = h * aspect
    return cell.x + (cell.w - w) / 2, cell.y + HEADER, w, h


def wrap(text: str, fits) -> list[str]:
    """Wrap at spaces where possible, between any two characters otherwise (CJK has no spaces)."""
    lines = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if fits(candidate):
                line = candidate
                continue
            if line:
                lines.append(line)
            line = ""
            for ch in word:
                if fits(line + ch):
                    line += ch
                else:
                    lines.append(line)
                    line = ch
        lines.append(line)
    return lines


def render_png_pages(panels: list[PanelText], font_path: str, page: str = "A4", landscape: bool = True,
                     per_row: int = 3, per_page: int = 6, title: str = "") -> list[Image.Image]:
    page_w, page_h = page_size(page, landscape)
    px = DPI / 25.4

    def f(size_mm):
        return ImageFont.truetype(font_path, max(8, round(size_mm * px)))

    text_font, head_font, title_font = f(TEXT_PT * 0.3528), f(TEXT_PT * 0.3528 * 1.15), f(5.0)
    line_h = TEXT_PT * 0.3528 * 1.35
    pages = []
    for start in range(0, len(panels), per_page):
        sheet = Image.new("RGB", (round(page_w * px), round(page_h * px)), "white")
        draw = ImageDraw.Draw(sheet)
        if title:
            draw.text((MARGIN * px, MARGIN * px * 0.6), title, fill="black", font=title_font)
        for cell, p in zip(cells(page_w, page_h, per_row, per_page, bool(title)), panels[start:start + per_page]):
            draw.text((cell.x * px, cell.y * px), header(p), fill="black", font=head_font)
            with Image.open(p.image) as im:
                im = im.convert("RGB")
                x, y, w, h = image_box(cell, im.width / im.height)
                resample = Image.Resampling.NEAREST if im.width < w * px / 2 else Image.Resampling.LANCZOS
                sheet.paste(im.resize((round(w * px), round(h * px)), resample), (round(x * px), round(y * px)))
                draw.rectangle([x * px, y * px, (x + w) * px, (y + h) * px], outline="black", width=2)
            ty = y + h + 1.5
            lines = wrap(body(p), lambda s: draw.textlength(s, font=text_font) <= cell.w * px)
            for line in lines:
                if ty + line_h > cell.y + cell.h:
                    break
                draw.text((cell.x * px, ty * px), line, fill="black", font=text_font)
                ty += line_h
        pages.append(sheet)
    return pages


def write_pdf(panels: list[PanelText], font_path: str, path: Path, page: str = "A4", landscape: bool = True,
              per_row: int = 3, per_page: int = 6, title: str = "") -> Path:
    from fpdf import FPDF

    page_w, page_h = page_size(page, landscape)
    pdf = FPDF(orientation="L" if landscape else "P", unit="mm", format=page.lower() if page == "A4" else "letter")
    pdf.set_auto_page_break(False)
    pdf.add_font("board", fname=font_path)
    for start in range(0, len(panels), per_page):
        pdf.add_page()
        if title:
            pdf.set_font("board", size=14)
            pdf.set_xy(MARGIN, MARGIN * 0.5)
            pdf.cell(text=title)
        for cell, p in zip(cells(page_w, page_h, per_row, per_page, bool(title)), panels[start:start + per_page]):
            pdf.set_font("board", size=TEXT_PT * 1.15)
            pdf.set_xy(cell.x, cell.y)
            pdf.cell(w=cell.w, h=HEADER - 1, text=header(p))
            with Image.open(p.image) as im:
                x, y, w, h = image_box(cell, im.width / im.height)
            pdf.image(str(p.image), x=x, y=y, w=w, h=h)
            pdf.rect(x, y, w, h)
            pdf.set_font("board", size=TEXT_PT)
            pdf.set_xy(cell.x, y + h + 1.5)
            lines = wrap(body(p), lambda s: pdf.get_string_width(s) <= cell.w - 1)
            room = int((cell.y + cell.h - (y + h + 1.5)) / (TEXT_PT * 0.3528 * 1.35))
            for line in lines[:max(0, room)]:
                pdf.set_x(cell.x)
                pdf.cell(w=cell.w, h=TEXT_PT * 0.3528 * 1.35, text=line, new_x="LMARGIN", new_y="NEXT")
    with atomic_file(path) as tmp:
        pdf.output(str(tmp))
    return path
