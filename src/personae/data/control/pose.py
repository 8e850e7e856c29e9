"""`pose`: MediaPipe's 33-point body pose redrawn as an OpenPose skeleton.

OpenPose ControlNets (lllyasviel/control_v11p_sd15_openpose) read the 18 COCO
keypoints drawn in OpenPose's convention: on black, each limb a filled ellipse in its
own colour at 60% brightness, each joint a dot in full colour. MediaPipe's points are
mapped to that order; OpenPose's "neck" is the midpoint of the shoulders. Points that
MediaPipe sees as hidden or outside the picture are left out, as OpenPose does.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from personae.data.control.base import ControlType, line_width
from personae.data.control.mediapipe_models import native_quiet, solutions
from personae.errors import UserError

NECK = -1  # not a MediaPipe point: the midpoint of the shoulders (11, 12)
# OpenPose COCO-18 order: nose, neck, R shoulder, R elbow, R wrist, L shoulder, L elbow, L wrist, R hip, R knee,
# R ankle, L hip, L knee, L ankle, R eye, L eye, R ear, L ear; the MediaPipe index of each
FROM_MEDIAPIPE = [0, NECK, 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7]
# OpenPose's limbs (pairs of COCO-18 indices) and its 18 colours (RGB), in OpenPose's drawing order
LIMBS = [(1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
         (1, 0), (0, 14), (14, 16), (0, 15), (15, 17)]
COLOURS = [(255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
           (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
           (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85)]


def openpose_keypoints(image: Image.Image, min_visibility: float = 0.5) -> list[tuple[float, float] | None]:
    """The 18 OpenPose keypoints in pixels (None where unseen), or [] when no person is found."""
    pose = solutions().pose
    with native_quiet(), pose.Pose(static_image_mode=True, model_complexity=1, min_detection_confidence=0.5) as model:
        found = model.process(np.ascontiguousarray(np.asarray(image.convert("RGB"))))
    if found.pose_landmarks is None:
        return []
    marks = found.pose_landmarks.landmark

    def point(i: int) -> tuple[float, float] | None:
        p = marks[i]
        if p.visibility < min_visibility or not (0 <= p.x <= 1 and 0 <= p.y <= 1):
            return None
        return p.x * image.width, p.y * image.height

    keypoints = []
    for index in FROM_MEDIAPIPE:
        if index == NECK:
            right, left = point(12), point(11)
            keypoints.append(((right[0] + left[0]) / 2, (right[1] + left[1]) / 2) if right and left else None)
        else:
            keypoints.append(point(index))
    return keypoints


def draw_openpose(size: tuple[int, int], keypoints: list[tuple[float, float] | None]) -> Image.Image:
    import cv2

    canvas = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    stick = 4 * line_width(Image.new("L", size), per=512)  # OpenPose draws 4 px limbs at 512 px
    for (a, b), colour in zip(LIMBS, COLOURS):
        if keypoints[a] is None or keypoints[b] is None:
            continue
        (xa, ya), (xb, yb) = keypoints[a], keypoints[b]
        length = math.hypot(xa - xb, ya - yb)
        angle = math.degrees(math.atan2(ya - yb, xa - xb))
        polygon = cv2.ellipse2Poly((int((xa + xb) / 2), int((ya + yb) / 2)), (int(length / 2), stick), int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, [int(c * 0.6) for c in colour])
    for point, colour in zip(keypoints, COLOURS):
        if point is not None:
            cv2.circle(canvas, (int(point[0]), int(point[1])), stick, colour, thickness=-1)
    return Image.fromarray(canvas)


def pose_map(image: Image.Image, options: dict[str, float], where: str) -> Image.Image:
    keypoints = openpose_keypoints(image, float(options["min_visibility"]))
    seen = sum(p is not None for p in keypoints)
    if seen < 2:
        raise UserError(f"No person was found in {where} (MediaPipe pose saw {seen} of the 18 OpenPose keypoints), "
                        "so there is no pose control map to draw.",
                        "Use a photo where a person's head and shoulders are visible, or pass a ready-made "
                        "OpenPose map as raw:IMAGE.")
    return draw_openpose(image.size, keypoints)


POSE = ControlType("pose", pose_map, "MediaPipe pose as an OpenPose 18-keypoint skeleton (option: min_visibility 0.5)",
                   a1111_module="openpose", default_model="lllyasviel/control_v11p_sd15_openpose",
                   options={"min_visibility": 0.5})
