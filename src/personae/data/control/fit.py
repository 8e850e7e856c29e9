"""A control map made and sized as A1111's ControlNet extension makes it (sd-webui-controlnet).

    padded, unpad = processor_input(photo, 512)   # short side to "Processor Res", padded to a multiple of 64
    control_map = unpad(detect(padded))            # the preprocessor ran at that resolution
    fitted = fit_map(control_map, (768, 512), "Crop and Resize")   # to the picture's size, as the unit says

"Resize Mode" fits the map to the picture: "Just Resize" stretches it, "Crop and Resize" (A1111's default)
scales it to cover the picture and cuts the middle out, "Resize and Fill" scales it to fit inside and fills the
rest with the median colour of the map's border. Every resize is the extension's high-quality one: nearest
neighbour for maps of a few colours (segmentation, the face mesh), area averaging to shrink, cubic to enlarge; a
black-and-white map is thresholded back to two levels (Otsu), and one of one-pixel lines (canny) is thinned back
to one-pixel lines after the resize. "Pixel Perfect" picks the processor resolution that the fitted map needs.
Our own code, written from the extension's description of these steps.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")

# hit-or-miss patterns (1: set, -1: clear, 0: either) that peel a pixel off a thick line, each in four turns,
# and those that prune a one-pixel spur
_THIN = [np.array(p, dtype=np.int32) for p in (
    [[-1, -1, -1], [0, 1, 0], [1, 1, 1]],
    [[0, -1, -1], [1, 1, -1], [0, 1, 0]])]
_PRUNE = [np.array(p, dtype=np.int32) for p in (
    [[-1, -1, -1], [-1, 1, -1], [0, 0, -1]],
    [[-1, -1, -1], [-1, 1, -1], [-1, 0, 0]])]
_THIN = [np.rot90(p, k) for k in range(4) for p in _THIN]
_PRUNE = [np.rot90(p, k) for k in range(4) for p in _PRUNE]


def _rgb(array: np.ndarray) -> np.ndarray:
    return np.repeat(array[:, :, None], 3, axis=2) if array.ndim == 2 else array[:, :, :3]


def processor_input(photo: Image.Image, res: int) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """The photo as a preprocessor sees it: scaled so that its short side is `res` (area averaging to shrink, cubic
    to enlarge), then padded on the right and bottom to a multiple of 64 by repeating the edge; and the function
    that cuts a map made from it back to the scaled size."""
    import cv2

    image = _rgb(np.asarray(photo.convert("RGB")))
    h, w = image.shape[:2]
    k = float(res) / min(h, w)
    height, width = int(np.round(h * k)), int(np.round(w * k))
    scaled = cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
    padded = np.pad(scaled, [[0, -height % 64], [0, -width % 64], [0, 0]], mode="edge")
    return np.ascontiguousarray(padded), lambda made: np.ascontiguousarray(made[:height, :width])


def pixel_perfect_res(photo_size: tuple[int, int], size: tuple[int, int], resize_mode: str) -> int:
    """"Pixel Perfect": the processor resolution at which the photo's short side, once fitted to `size` (width,
    height) by `resize_mode`, is drawn one map pixel per picture pixel."""
    (photo_w, photo_h), (width, height) = photo_size, size
    k_h, k_w = height / photo_h, width / photo_w
    k = min(k_h, k_w) if resize_mode == "Resize and Fill" else max(k_h, k_w)
    return int(np.round(k * min(photo_h, photo_w)))


def _nms(edges: np.ndarray) -> np.ndarray:
    """Keep a pixel where it is the largest along one of four directions (lines of three pixels)."""
    import cv2

    kept = np.zeros_like(edges)
    for line in ([[0, 0, 0], [1, 1, 1], [0, 0, 0]], [[0, 1, 0], [0, 1, 0], [0, 1, 0]],
                 [[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[0, 0, 1], [0, 1, 0], [1, 0, 0]]):
        np.putmask(kept, cv2.dilate(edges, kernel=np.array(line, dtype=np.uint8)) == edges, edges)
    return kept


def _peel(lines: np.ndarray, patterns: list[np.ndarray]) -> bool:
    """Clear, in place and pattern after pattern, every pixel a pattern hits; whether any was cleared."""
    import cv2

    changed = False
    for pattern in patterns:
        hits = cv2.morphologyEx(lines, cv2.MORPH_HITMISS, pattern) > 127
        if hits.any():
            lines[hits] = 0
            changed = True
    return changed


def thin_lines(lines: np.ndarray, prune: bool) -> np.ndarray:
    """White lines on black (uint8) thinned to one pixel (at most 32 rounds), spurs pruned once when `prune`."""
    lines = lines.copy()
    for _ in range(32):
        if not _peel(lines, _THIN):
            break
    if prune:
        _peel(lines, _PRUNE)
    return lines


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The extension's high-quality map resize to `size` (width, height)."""
    import cv2

    w, h = size
    if (h, w) == image.shape[:2]:
        return image  # the extension leaves a map of the right size untouched (no thinning, no threshold)
    shrink, grow = w * h < image.shape[0] * image.shape[1], w * h > image.shape[0] * image.shape[1]
    colours = np.unique(image.reshape(-1, image.shape[2]), axis=0).shape[0]
    binary = colours == 2 and image.min() < 16 and image.max() > 240
    one_pixel = False
    if binary:
        opened = cv2.dilate(cv2.erode(image, np.ones((3, 3), np.uint8)), np.ones((3, 3), np.uint8))
        one_pixel = np.count_nonzero(opened < image) * 2 > np.count_nonzero(image > 127)
    interpolation = (cv2.INTER_NEAREST if 2 < colours < 200 else cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    resized = cv2.resize(image, (w, h), interpolation=interpolation)
    if not binary:
        return _rgb(resized)
    grey = np.mean(resized.astype(np.float32), axis=2).clip(0, 255).astype(np.uint8)
    if one_pixel:
        _, grey = cv2.threshold(_nms(grey), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        grey = thin_lines(grey, prune=grow)
    else:
        _, grey = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return _rgb(grey)


def filled_at(source: tuple[int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Where "Resize and Fill" puts a map of `source` (width, height) in a picture of `size`: (top, left, height,
    width) of the scaled map; the rest is the filled margin."""
    (old_w, old_h), (w, h) = source, size
    k = min(h / old_h, w / old_w)
    new_w, new_h = int(np.round(old_w * k)), int(np.round(old_h * k))
    return max(0, (h - new_h) // 2), max(0, (w - new_w) // 2), new_h, new_w


def fit_map(control_map: Image.Image | np.ndarray, size: tuple[int, int], resize_mode: str) -> Image.Image:
    """The map at the picture's `size` (width, height), fitted as `resize_mode` says (RESIZE_MODES)."""
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {resize_mode!r}: expected one of {', '.join(RESIZE_MODES)}")
    image = _rgb(np.asarray(control_map.convert("RGB")) if isinstance(control_map, Image.Image) else control_map)
    w, h = size
    if resize_mode == "Just Resize":
        return Image.fromarray(np.ascontiguousarray(_resize(image, (w, h))))
    old_h, old_w = image.shape[:2]
    fill = resize_mode == "Resize and Fill"
    k = (min if fill else max)(h / old_h, w / old_w)
    scaled = _resize(image, (int(np.round(old_w * k)), int(np.round(old_h * k))))
    new_h, new_w = scaled.shape[:2]
    if fill:
        border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]], axis=0)
        out = np.tile(np.median(border, axis=0).astype(image.dtype)[None, None], (h, w, 1))
        top, left = filled_at((old_w, old_h), size)[:2]
        out[top:top + new_h, left:left + new_w] = scaled
    else:
        top, left = max(0, (new_h - h) // 2), max(0, (new_w - w) // 2)
        out = scaled[top:top + h, left:left + w]
    return Image.fromarray(np.ascontiguousarray(out))
