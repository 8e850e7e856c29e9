"""`canny`: OpenCV's Canny edges, white on black, as lllyasviel's canny ControlNets were trained on."""

from __future__ import annotations

import numpy as np
from PIL import Image

from personae.data.control.base import ControlType
from personae.errors import UserError


def canny_edges(image: Image.Image, options: dict[str, float], where: str) -> Image.Image:
    import cv2

    low, high = float(options["low"]), float(options["high"])
    if not 0 <= low <= high <= 255 * 4:
        raise UserError(f"Canny thresholds must satisfy 0 <= low <= high, got low {low:g}, high {high:g}.",
                        "A1111's defaults are low 100, high 200; lower values find more edges.")
    edges = cv2.Canny(np.asarray(image.convert("RGB")), low, high)
    return Image.fromarray(edges).convert("RGB")


CANNY = ControlType("canny", canny_edges, "Canny edges (options: low, high thresholds; default 100, 200)",
                    a1111_module="canny", default_model="lllyasviel/control_v11p_sd15_canny",
                    options={"low": 100.0, "high": 200.0})
