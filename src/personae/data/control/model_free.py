"""A1111's model-free ControlNet preprocessors: maps made by a few OpenCV operations, so they work offline with no
weights. Each is the extension's own (sd-webui-controlnet's processor.py), by its "Module" name, with its sliders as
options and their ranges:

- `invert` ("invert (from white bg & black line)"): 255 minus the picture, for a drawing of black lines on white
  read by a lineart / scribble / canny ControlNet, which want white lines on black;
- `lineart_standard` ("lineart_standard (from white bg & black line)"): lines found as where the picture is darker
  than its blur (sigma 6), scaled by the median line strength;
- `scribble_xdog`: a difference of Gaussians (sigma 0.5 and 5), white where twice the darkening exceeds `threshold`;
- `threshold` (A1111's "Binarization"): white where every channel is above `threshold`;
- `tile_resample`: the picture shrunk by `rate` (area averaging) for the tile ControlNet to fill in the detail;
- `blur_gaussian`: the picture blurred with `sigma`, for the tile ControlNet too;
- `recolor_luminance` / `recolor_intensity`: the picture's lightness (OpenCV's Lab L) or value (HSV V) to the power
  `gamma`, in grey, for a recolor ControlNet to colour.

Where the extension first scales the photo to "Processor Res" (lineart_standard, scribble_xdog, threshold,
blur_gaussian) the type says so (`scaled`); the others work on the photo at its own size. recolor_luminance converts
the extension's RGB pixels with OpenCV's BGR-to-Lab conversion, as the extension does, so its grey matches A1111's.
Our own code, written from the extension's description of these steps.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from personae.data.control.base import ControlType
from personae.errors import UserError


def _within(options: dict[str, float], name: str, low: float, high: float, module: str) -> float:
    value = float(options[name])
    if not low <= value <= high:
        raise UserError(f"{module}'s {name} must lie between {low:g} and {high:g} (A1111's slider), got {value:g}.")
    return value


def _rgb(array: np.ndarray) -> Image.Image:
    return Image.fromarray(np.repeat(array[:, :, None], 3, axis=2) if array.ndim == 2 else array)


def invert(image: Image.Image, options: dict[str, float], where: str) -> Image.Image:
    return _rgb(255 - np.asarray(image.convert("RGB")))


def lineart_standard(image: Image.Image, options: dict[str, float], where: str) -> Image.Image:
    import cv2

    x = np.asarray(image.convert("RGB")).astype(np.float32)
    darker = np.min(cv2.GaussianBlur(x, (0, 0), 6.0) - x, axis=2).clip(0, 255)
    lines = darker[darker > 8]
    darker /= max(16.0, float(np.median(lines)) if lines.size else 0.0)
    return _rgb((darker * 127).clip(0, 255).astype(np.uint8))


def scribble_xdog(image: Image.Image, options: dict[str, float], where: str) -> Image.Image:
    import cv2

    threshold = _within(options, "threshold", 1, 64, "scribble_xdog")
    x = np.asarray(image.convert("RGB")).astype(np.float32)
    dog = (255 - np.min(cv2.GaussianBlur(x, (0, 0), 5.0) - cv2.GaussianBlur(x, (0, 0), 0.5), axis=2))
    darkening = 255 - dog.clip(0, 255).astype(np.uint8)
    doubled = darkening * np.uint8(2)  # in 8 bits, so above 127 it wraps round, as the extension's arithmetic does
    return _rgb(np.where(doubled > threshold, 255, 0).astype(np.uint8))


def binarize(image: Image.Image, options: dict[str, float], where: str) -> Image.Image:
    threshold = _within(options, "threshold", 0, 255, "threshold")
    x = np.asarray(image.convert("RGB"))
    return _rgb(np.where(np.min(x, axis=2) > threshold, 255, 0).astype(np.uint8))


def tile_resample(image: Image.Image, options: dict[str, float], where: str) -> Image.Image:
    import cv2

    rate = _within(options, "rate", 1, 8, "tile_resample")
    x = np.asarray(image.convert("RGB"))
    if rate < 1.1:  # the extension leaves the picture as it is below 1.1
        return _rgb(x)
    height, width = int(x.shape[0] / rate), int(x.shape[1] / rate)
    return _rgb(cv2.resize(x, (width, height), interpolation=cv2.INTER_AREA))


def blur_gaussian(image: Image.Image, options: dict[str, float], where: str) -> Image.Image:
    import cv2

    sigma = _within(options, "sigma", 0.01, 64, "blur_gaussian")
    return _rgb(cv2.GaussianBlur(np.asarray(image.convert("RGB")), (0, 0), sigma))


def _recolor(channel_of, module: str):
    def recolor(image: Image.Image, options: dict[str, float], where: str) -> Image.Image:
        gamma = _within(options, "gamma", 0.1, 2, module)
        grey = channel_of(np.asarray(image.convert("RGB"))).astype(np.float32) / 255.0
        return _rgb(((grey ** gamma) * 255.0).clip(0, 255).astype(np.uint8))
    return recolor


def _lightness(x: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(x, cv2.COLOR_BGR2LAB)[:, :, 0]  # RGB pixels through BGR's conversion, as the extension


def _value(x: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(x, cv2.COLOR_BGR2HSV)[:, :, 2]


TILE = "lllyasviel/control_v11f1e_sd15_tile"

TYPES = [
    ControlType("invert", invert, "255 minus the picture: black lines on white become white on black (name the "
                "ControlNet: lineart, scribble, canny)", a1111_module="invert (from white bg & black line)",
                default_model=None, scaled=False, aliases=("invert",)),
    ControlType("lineart_standard", lineart_standard, "lines where the picture is darker than its blur, no model "
                "needed", a1111_module="lineart_standard (from white bg & black line)",
                default_model="lllyasviel/control_v11p_sd15_lineart", aliases=("lineart_standard",)),
    ControlType("scribble_xdog", scribble_xdog, "scribble lines by a difference of Gaussians (option threshold, "
                "1-64, default 32)", a1111_module="scribble_xdog",
                default_model="lllyasviel/control_v11p_sd15_scribble", options={"threshold": 32.0}),
    ControlType("threshold", binarize, "white where the picture is brighter than threshold (0-255, default 127), "
                "else black", a1111_module="threshold", default_model=None, options={"threshold": 127.0}),
    ControlType("tile_resample", tile_resample, "the picture shrunk by rate (1-8, default 1: as it is) for the tile "
                "ControlNet", a1111_module="tile_resample", default_model=TILE, options={"rate": 1.0}, scaled=False),
    ControlType("blur_gaussian", blur_gaussian, "the picture blurred (option sigma, 0.01-64, default 9) for the tile "
                "ControlNet", a1111_module="blur_gaussian", default_model=TILE, options={"sigma": 9.0},
                padded=False),
    ControlType("recolor_luminance", _recolor(_lightness, "recolor_luminance"), "the picture's lightness in grey "
                "(option gamma, 0.1-2, default 1) for a recolor ControlNet", a1111_module="recolor_luminance",
                default_model=None, options={"gamma": 1.0}, scaled=False),
    ControlType("recolor_intensity", _recolor(_value, "recolor_intensity"), "the picture's value (HSV) in grey "
                "(option gamma) for a recolor ControlNet", a1111_module="recolor_intensity", default_model=None,
                options={"gamma": 1.0}, scaled=False),
]
