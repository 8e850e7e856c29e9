"""Read any common image file as clean 8-bit RGB, or say exactly why it cannot be used.

Handles what phones, scanners and drawing tools produce: EXIF orientation, CMYK,
palette and grey images, 16-bit PNG/TIFF, alpha (composited on a chosen background),
the first frame of a GIF. Never writes to the source.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
CAPTION_SUFFIXES = (".txt", ".caption")


@dataclass
class Rejected:
    path: Path
    reason: str


def find_images(root: Path) -> list[Path]:
    """Every image file under root, recursively, in a stable order; hidden folders and loss masks (`*.mask.png`,
    data/masks.py) skipped."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.lower().endswith(".mask.png")
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer / float modes scaled to 8 bits per channel."""
    array = np.asarray(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N") or (image.mode == "I" and array.max() > 255):
        return Image.fromarray((array.astype(np.float64) / 65535.0 * 255.0 + 0.5).clip(0, 255).astype(np.uint8), "L")
    if image.mode == "F":
        hi = float(array.max()) or 1.0
        scale = 255.0 if hi <= 1.0 else 255.0 / hi
        return Image.fromarray((array * scale + 0.5).clip(0, 255).astype(np.uint8), "L")
    return image.convert("L") if image.mode == "I" else image


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any PIL mode to RGB; transparency is composited over `background`."""
    image = _to_8bit(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "PA", "La"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "RGBa"):
        base = Image.new("RGB", image.size, background)
        base.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return base
    return image.convert("RGB")  # CMYK, YCbCr, L, 1, RGB


def load_image(path: Path, min_side: int = 64, max_aspect: float = 4.0,
               background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image | Rejected:
    """The upright RGB image at `path`, or a Rejected with the reason."""
    try:
        if path.stat().st_size == 0:
            return Rejected(path, "empty file (0 bytes)")
        with Image.open(path) as img:
            img.seek(0)  # first frame of an animation
            img.load()
            img = ImageOps.exif_transpose(img) or img
            rgb = to_rgb(img, background)
    except UnidentifiedImageError:
        return Rejected(path, "not an image (the contents are not a known image format)")
    except Image.DecompressionBombError as exc:  # a few KB on disk that would take gigabytes to decode
        return Rejected(path, f"too large to decode safely ({exc.args[0].split(' exceeds')[0].lower()})")
    except (OSError, SyntaxError, ValueError) as exc:  # PIL reports truncation and corruption as these
        return Rejected(path, f"damaged or truncated image ({exc})")
    width, height = rgb.size
    if min(width, height) < min_side:
        return Rejected(path, f"too small ({width}x{height}; the shorter side must be at least {min_side} px)")
    if max(width, height) / min(width, height) > max_aspect:
        return Rejected(path, f"extreme aspect ratio ({width}x{height}, more than {max_aspect:g}:1)")
    return rgb


def perceptual_hash(image: Image.Image, size: int = 8) -> int:
    """pHash: sign of the low-frequency DCT coefficients of a 32x32 grey thumbnail (64 bits)."""
    from scipy.fft import dctn

    grey = np.asarray(image.convert("L").resize((size * 4, size * 4), Image.Resampling.LANCZOS), dtype=np.float64)
    low = dctn(grey, norm="ortho")[:size, :size].flatten()
    bits = low > np.median(low[1:])
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")
