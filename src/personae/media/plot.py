"""A loss curve as a PNG, drawn with Pillow (raw loss faint, moving average bold)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from personae.media.sheet import font
from personae.staging import atomic_file


def moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def loss_curve(losses: list[float], path: Path, title: str = "training loss", size=(640, 320)) -> Path:
    w, h = size
    left, right, top, bottom = 56, 12, 28, 30
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    f = font(12)
    draw.text((left, 6), title, fill="black", font=f)
    if losses:
        lo, hi = min(losses), max(losses)
        hi = hi if hi > lo else lo + 1e-8
        n = max(1, len(losses) - 1)

        def xy(i, v):
            return left + (w - left - right) * i / n, top + (h - top - bottom) * (1 - (v - lo) / (hi - lo))

        draw.line([xy(i, v) for i, v in enumerate(losses)], fill=(180, 200, 230), width=1)
        smooth = moving_average(losses, max(1, len(losses) // 20))
        draw.line([xy(i, v) for i, v in enumerate(smooth)], fill=(20, 70, 170), width=2)
        draw.text((4, top - 6), f"{hi:.4g}", fill="black", font=f)
        draw.text((4, h - bottom - 6), f"{lo:.4g}", fill="black", font=f)
        draw.text((left, h - bottom + 8), "step 1", fill="black", font=f)
        draw.text((w - right - 70, h - bottom + 8), f"step {len(losses)}", fill="black", font=f)
    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    with atomic_file(path) as tmp:
        image.save(tmp, format="PNG")
    return path
