"""Loss masks: which pixels of a training image are the subject (`data.masked_loss`).

A prepared set keeps an image's mask as `images/<name>.mask.png` beside `images/<name>.png` (8-bit grey,
white = subject, the image's own crop and size). `personae prepare` makes it from the first of:

1. the source image's alpha channel (a cut-out subject on a transparent background);
2. a sidecar mask beside the source, named as the image with `.mask.png` for its extension
   (`photos/me.jpg` -> `photos/me.mask.png`; grey or black-and-white, the source's size); such files are
   masks, never training images themselves;
3. with `--crop face`, the detected face's box.

The world bench writes each training image's shape (its exact coverage) as such a sidecar. Training with
`data.masked_loss` reads the mask file beside each prepared image (a user may add or edit them there, like
captions) and refuses to start when an image has none. No torch here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from personae.errors import UserError

MASK_SUFFIX = ".mask.png"


def is_mask_file(path: Path) -> bool:
    return path.name.lower().endswith(MASK_SUFFIX)


def sidecar_mask(path: Path) -> Path:
    """Where a source image's own mask sits: `me.jpg` -> `me.mask.png` (a prepared `x.png` -> `x.mask.png`)."""
    return path.with_name(path.name[: len(path.name) - len(path.suffix)] + MASK_SUFFIX)


def mask_fingerprint(path: Path) -> str:
    """The sidecar mask's sha256, or "" when there is none (a changed mask re-prepares the image)."""
    mask = sidecar_mask(path)
    return hashlib.sha256(mask.read_bytes()).hexdigest() if mask.is_file() else ""


def _upright(path: Path) -> Image.Image:
    with Image.open(path) as img:
        img.seek(0)
        img.load()
        return ImageOps.exif_transpose(img) or img


def alpha_mask(path: Path) -> Image.Image | None:
    """The source's alpha channel (upright, mode L), or None when it has none or is opaque everywhere."""
    image = _upright(path)
    if image.mode == "P" and "transparency" in image.info or image.mode in ("LA", "PA", "La"):
        image = image.convert("RGBA")
    if image.mode not in ("RGBA", "RGBa"):
        return None
    alpha = image.getchannel("A")
    return None if alpha.getextrema() == (255, 255) else alpha


def source_mask(path: Path, size: tuple[int, int], face: tuple[int, int, int, int] | None
                ) -> tuple[Image.Image | None, str]:
    """(mask of the upright source image, where it came from: "alpha", "sidecar", "face" or "") for the source
    image at `path` of upright `size`; a sidecar of another size is a UserError naming both files."""
    alpha = alpha_mask(path)
    if alpha is not None:
        return alpha, "alpha"
    sidecar = sidecar_mask(path)
    if sidecar.is_file():
        mask = _upright(sidecar).convert("L")
        if mask.size != size:
            raise UserError(f"The mask {sidecar} is {mask.size[0]}x{mask.size[1]} px, but its image {path} is "
                            f"{size[0]}x{size[1]} px.", "Save the mask at the image's size (white = the subject).")
        return mask, "sidecar"
    if face is not None:
        mask = Image.new("L", size, 0)
        ImageDraw.Draw(mask).rectangle([face[0], face[1], face[2] - 1, face[3] - 1], fill=255)
        return mask, "face"
    return None, ""


def frame_mask(mask: Image.Image, box: list[int], size: tuple[int, int]) -> Image.Image:
    """The mask cropped and resized as its image was (bilinear: no ringing past 0 and 255)."""
    return mask.crop(tuple(box)).resize(size, Image.Resampling.BILINEAR)


def load_mask(path: Path, flip: bool = False) -> np.ndarray:
    """A mask file as float32 (H, W) in [0, 1]; an all-black mask (nothing to learn from) is a UserError."""
    with Image.open(path) as img:
        array = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    if not array.any():
        raise UserError(f"The mask {path} is black everywhere: with data.masked_loss its image would teach nothing.",
                        "Paint the subject white in the mask, or remove the image from the set.")
    return np.ascontiguousarray(array[:, ::-1] if flip else array)


def require_masks(images: list[Path], where: str | Path) -> None:
    """Every training image has its mask file beside it, or one paragraph naming the first that has not."""
    missing = [p for p in images if not sidecar_mask(p).is_file()]
    if missing:
        raise UserError(f"data.masked_loss is on, but {len(missing)} of {len(images)} training images in {where} have "
                        f"no mask: {missing[0]} has no {sidecar_mask(missing[0]).name} beside it. personae prepare "
                        "makes one from the source's alpha channel, a NAME.mask.png beside the source image, or the "
                        "face box of --crop face.",
                        "Add NAME.mask.png (white = the subject, the image's size) beside each source image and run "
                        "personae prepare again, or set data.masked_loss: off.")
