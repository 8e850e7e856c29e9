"""Stopping a training run cleanly: Ctrl-C (SIGINT) and SIGTERM (kill, schedulers, containers).

A signal does not interrupt the step it lands in: it asks the loop to stop at the end of the
step, where the loop saves a checkpoint of exactly that many steps and raises `Stopped`, so a
resumed run continues bit-identically. A second Ctrl-C stops at once (KeyboardInterrupt; the
last checkpoint is kept). Signals can only be caught in the main thread; elsewhere (a web UI's
worker thread) the run stops through `StopRequest.signum` set by its caller.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


class Stopped(KeyboardInterrupt):
    """The run stopped on a signal after saving a checkpoint; the CLI exits with 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(NAMES.get(signum, f"signal {signum}"))
        self.signum = signum


@dataclass
class StopRequest:
    signum: int | None = None  # the signal that asked for the stop, once one did


def _raise_stopped(signum, frame):
    raise Stopped(signum)


@contextmanager
def sigterm_stops() -> Iterator[None]:
    """Outside the training loop, SIGTERM unwinds like Ctrl-C (cleanup runs, locks are released) instead of killing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def stop_at_step_end() -> Iterator[StopRequest]:
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, frame):
        if request.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now
        request.signum = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
