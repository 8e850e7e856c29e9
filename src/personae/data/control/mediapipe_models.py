"""MediaPipe 0.10.21's bundled models (face mesh, pose), imported with a clear message when absent.

0.10.21 is the last MediaPipe release that ships its model files in the wheel; it is
installed with --no-deps (its declared dependencies pull jax and pin protobuf < 5).
"""

from __future__ import annotations

import os

from personae.errors import UserError

INSTALL = ('pip install attrs absl-py flatbuffers matplotlib "protobuf>=6.31,<7" && '
           'pip install --no-deps "mediapipe==0.10.21" (scripts/setup.sh does this)')


def solutions():
    """The `mediapipe.python.solutions` module."""
    os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ start-up chatter
    try:
        from mediapipe.python import solutions
    except ImportError as exc:
        raise UserError(f"The face and pose control types need MediaPipe, which is not installed ({exc}).",
                        f"Install it with: {INSTALL}") from None
    return solutions
