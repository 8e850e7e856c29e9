"""Stopping a training run cleanly, and the other commands a running job takes at a step's end.

Ctrl-C (SIGINT), SIGTERM (kill, schedulers, containers) and the job interface's "stop" command
all end a run the same way.

A signal does not interrupt the step it lands in: it asks the loop to stop at the end of the
step, where the loop saves a checkpoint of exactly that many steps and raises `Stopped`, so a
resumed run continues bit-identically. A second Ctrl-C stops at once (KeyboardInterrupt; the
last checkpoint is kept). Signals can only be caught in the main thread; a run in a worker
thread (jobs/runner.py: the CLI and the web UI) is driven through its `Commands`: "stop",
"sample" (render the validation samples now) and "save" (a checkpoint now), each acted on at
the end of the current step. A stop asked for before the loop begins ends the run at the next
stage of its setup (`Commands.check`), without a checkpoint.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


COMMANDS = ("stop", "sample", "save")


class Stopped(KeyboardInterrupt):
    """The run stopped (on a signal, or the "stop" command) after saving a checkpoint; after a signal the CLI
    exits with 128 + signum."""

    def __init__(self, signum: int | None = None):
        super().__init__(NAMES.get(signum, "stop") if signum is None or signum in NAMES else f"signal {signum}")
        self.signum = signum


class Commands:
    """What a running job is asked to do at the end of its current step (safe to call from any thread)."""

    def __init__(self):
        self.signum: int | None = None  # the signal that asked for the stop, once one did
        self.stop_asked = False
        self._pending: set[str] = set()
        self._lock = threading.Lock()

    @property
    def stopping(self) -> bool:
        return self.stop_asked or self.signum is not None

    def send(self, command: str, signum: int | None = None) -> None:
        if command not in COMMANDS:
            raise ValueError(f"unknown command {command!r}; one of {', '.join(COMMANDS)}")
        if command == "stop":  # plain attribute writes, no lock: a signal handler may call this
            if signum is not None and self.signum is None:
                self.signum = signum
            self.stop_asked = True
            return
        with self._lock:
            self._pending.add(command)

    def take(self) -> set[str]:
        """The commands other than stop asked for since the last call ("sample", "save")."""
        with self._lock:
            pending, self._pending = self._pending, set()
        return pending

    def check(self) -> None:
        """Between the stages before the loop: a stop asked for ends the run here."""
        if self.stopping:
            raise Stopped(self.signum)


@contextmanager
def stop_at_step_end(request: Commands | None = None) -> Iterator[Commands]:
    """In the main thread, Ctrl-C and SIGTERM become a stop at the end of the step (a second Ctrl-C: at once)."""
    request = request if request is not None else Commands()
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
