"""`face`: MediaPipe face mesh drawn as the MediaPipe-face ControlNet expects.

The public face ControlNet (CrucibleAI/ControlNetMediaPipeFace) was trained on maps
drawn this way: on black, the face oval, eyebrows, eyes and lips of the 478-point
MediaPipe mesh as coloured lines, and the irises as points, each region in its own
colour (left/right as the subject's own, as MediaPipe names them). The mesh's
triangle tesselation is not drawn: the model was not trained with it.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from personae.data.control.base import ControlType, line_width
from personae.data.control.mediapipe_models import native_quiet, solutions
from personae.errors import UserError

# region -> RGB colour, the convention of the MediaPipe-face ControlNet's training maps
COLOURS = {
    "FACEMESH_FACE_OVAL": (10, 200, 10),
    "FACEMESH_LIPS": (10, 180, 10),
    "FACEMESH_LEFT_EYE": (180, 200, 10),
    "FACEMESH_LEFT_EYEBROW": (180, 220, 10),
    "FACEMESH_RIGHT_EYE": (10, 200, 180),
    "FACEMESH_RIGHT_EYEBROW": (10, 220, 180),
}
IRIS_COLOURS = {"FACEMESH_LEFT_IRIS": (250, 200, 10), "FACEMESH_RIGHT_IRIS": (10, 200, 250)}


def face_landmarks(image: Image.Image, max_faces: int = 1, min_confidence: float = 0.5) -> list[np.ndarray]:
    """Per face, 478 (x, y) pixel positions from MediaPipe's face mesh (with irises)."""
    face_mesh = solutions().face_mesh
    with native_quiet(), face_mesh.FaceMesh(static_image_mode=True, max_num_faces=max_faces, refine_landmarks=True,
                                            min_detection_confidence=min_confidence) as mesh:
        found = mesh.process(np.ascontiguousarray(np.asarray(image.convert("RGB"))))
    faces = []
    for landmarks in found.multi_face_landmarks or []:
        points = np.array([(p.x * image.width, p.y * image.height) for p in landmarks.landmark], dtype=np.float32)
        faces.append(points)
    return faces


def draw_face_map(size: tuple[int, int], faces: list[np.ndarray]) -> Image.Image:
    import cv2

    face_mesh = solutions().face_mesh
    canvas = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    width = line_width(Image.new("L", size), per=256)
    for points in faces:
        xy = np.round(points).astype(np.int32)
        for region, colour in COLOURS.items():
            for a, b in getattr(face_mesh, region):
                cv2.line(canvas, tuple(map(int, xy[a])), tuple(map(int, xy[b])), colour, width)
        for region, colour in IRIS_COLOURS.items():
            for index in {i for edge in getattr(face_mesh, region) for i in edge}:
                cv2.circle(canvas, tuple(map(int, xy[index])), width, colour, -1)
    return Image.fromarray(canvas)


def face_map(image: Image.Image, options: dict[str, float], where: str) -> Image.Image:
    faces = face_landmarks(image, int(options["max_faces"]), float(options["min_confidence"]))
    if not faces:
        raise UserError(f"No face was found in {where}, so there is no face control map to draw.",
                        "Use a photo where one face is clearly visible and roughly front-facing, lower "
                        "min_confidence, or pass a ready-made map as raw:IMAGE.")
    return draw_face_map(image.size, faces)


FACE = ControlType("face", face_map, "MediaPipe face mesh (oval, brows, eyes, lips, irises) in the MediaPipe-face "
                   "ControlNet's colours (options: max_faces 1, min_confidence 0.5)",
                   a1111_module="mediapipe_face", default_model="CrucibleAI/ControlNetMediaPipeFace/diffusion_sd15",
                   options={"max_faces": 1.0, "min_confidence": 0.5})
