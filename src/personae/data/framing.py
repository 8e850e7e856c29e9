"""Where to crop: centre, around a detected face, or whole-image aspect-ratio buckets.

Face detection uses OpenCV's Haar cascades, whose weights ship inside the
opencv-python-headless wheel, so it works offline. Boxes are (left, top, right, bottom).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

Box = tuple[int, int, int, int]


def center_box(width: int, height: int) -> Box:
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


@lru_cache(maxsize=1)
def _cascade():
    import cv2

    path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():  # pragma: no cover - a broken OpenCV install
        raise RuntimeError(f"OpenCV could not read its face cascade at {path}")
    return cascade


def detect_faces(image: Image.Image) -> list[Box]:
    """Face boxes, largest first (OpenCV Haar cascade on a grey copy at most 1024 px)."""
    import cv2

    scale = min(1.0, 1024 / max(image.size))  # (histogram equalisation was tried: it loses faces on flat padding)
    small = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    grey = cv2.cvtColor(np.asarray(small), cv2.COLOR_RGB2GRAY)
    min_side = max(24, int(min(small.size) * 0.08))
    found = _cascade().detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
    boxes = [(int(x / scale), int(y / scale), int((x + w) / scale), int((y + h) / scale)) for x, y, w, h in found]
    return sorted(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)


def face_box(width: int, height: int, face: Box, margin: float = 1.0) -> Box:
    """A square crop centred on `face`, `margin` face-sizes of context on each side, kept inside the image.

    The face always stays inside the crop: when the image edge stops the square from
    being centred, it slides, and it shrinks only down to the face itself.
    """
    fl, ft, fr, fb = face
    face_side = max(fr - fl, fb - ft)
    side = int(round(face_side * (1 + 2 * margin)))
    side = max(min(side, width, height), min(face_side, width, height))
    cx, cy = (fl + fr) / 2, (ft + fb) / 2
    left = int(round(min(max(cx - side / 2, 0), width - side)))
    top = int(round(min(max(cy - side / 2, 0), height - side)))
    return left, top, left + side, top + side


@dataclass(frozen=True)
class Bucket:
    width: int
    height: int

    @property
    def aspect(self) -> float:
        return self.width / self.height


def make_buckets(resolution: int, step: int = 64, min_side: int | None = None, max_side: int | None = None) -> list[Bucket]:
    """kohya-style buckets: sides in `step` increments, area within resolution x resolution."""
    min_side = min_side or max(step, resolution // 2)
    max_side = max_side or resolution * 2
    area = resolution * resolution
    buckets = set()
    for width in range(min_side, max_side + 1, step):
        height = min(max_side, (area // width) // step * step)
        if height >= min_side:
            buckets.add(Bucket(width, height))
            buckets.add(Bucket(height, width))
    return sorted(buckets, key=lambda b: (b.aspect, b.width))


def nearest_bucket(width: int, height: int, buckets: list[Bucket]) -> Bucket:
    aspect = width / height
    return min(buckets, key=lambda b: (abs(np.log(b.aspect / aspect)), -b.width * b.height))


def bucket_box(width: int, height: int, bucket: Bucket) -> Box:
    """The centred region of the image with the bucket's aspect ratio (cropping as little as possible)."""
    if width / height > bucket.aspect:
        new_w = round(height * bucket.aspect)
        left = (width - new_w) // 2
        return left, 0, left + new_w, height
    new_h = round(width / bucket.aspect)
    top = (height - new_h) // 2
    return 0, top, width, top + new_h
