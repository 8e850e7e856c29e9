"""MediaPipe 0.10.21's bundled models (face mesh, pose), imported with a clear message when absent.

0.10.21 is the last MediaPipe release that ships its model files in the wheel; it is
installed with --no-deps (its declared dependencies pull jax and pin protobuf < 5).

Two things make it look broken beside today's protobuf when it is not:
- its C++ side asks protobuf for `MessageFactory().GetPrototype`, which protobuf 5 removed
  (`GetMessageClass` replaced it); the lookup fails at import and prints an AttributeError.
  `solutions()` gives protobuf that method back, as the function that replaced it.
- TF Lite, absl and glog write start-up notes straight to file descriptor 2 ("INFO: Created
  TensorFlow Lite XNNPACK delegate", "W0000 ... inference_feedback_manager.cc"), past Python's
  logging. `native_quiet()` holds descriptor 2 while MediaPipe runs and passes on every line
  that is not one of those notes (so a real error still shows).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from personae.errors import UserError

INSTALL = ('pip install attrs absl-py flatbuffers matplotlib "protobuf>=6.31,<7" && '
           'pip install --no-deps "mediapipe==0.10.21" (scripts/setup.sh does this)')

# the notes MediaPipe's native libraries write to stderr: TF Lite's delegate line, absl's "before InitializeLog"
# line, and glog/absl info and warning lines ("I0000 00:00:17... file.cc:12] ...", "W0000 ...")
NOISE = re.compile(r"^(INFO: Created TensorFlow Lite|WARNING: All log messages before absl::InitializeLog"
                   r"|[IW]\d{4} \d\d:\d\d:[\d.]+ +\d+ [\w./-]+:\d+\])")
_STDERR = threading.RLock()  # descriptor 2 is the process's: one holder at a time (a nested holder restores it)


def _protobuf_compat() -> None:
    """MediaPipe 0.10.21's bindings call MessageFactory().GetPrototype(descriptor), gone since protobuf 5."""
    from google.protobuf import message_factory

    if not hasattr(message_factory.MessageFactory, "GetPrototype") and hasattr(message_factory, "GetMessageClass"):
        message_factory.MessageFactory.GetPrototype = lambda self, descriptor: message_factory.GetMessageClass(descriptor)


@contextmanager
def native_quiet() -> Iterator[None]:
    """Within the block, MediaPipe's native start-up notes on stderr are dropped; every other line is kept."""
    with _STDERR, tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            kept = [line for line in sink.read().decode(errors="replace").splitlines(keepends=True)
                    if not NOISE.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def solutions(needed_by: str = "The face and pose control types"):
    """The `mediapipe.python.solutions` module; `needed_by` starts the message when MediaPipe is missing."""
    os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ start-up chatter
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        _protobuf_compat()
        with native_quiet():
            from mediapipe.python import solutions
    except ImportError as exc:
        raise UserError(f"{needed_by} need MediaPipe, which is not installed ({exc}).",
                        f"Install it with: {INSTALL}") from None
    return solutions
