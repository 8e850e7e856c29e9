"""A demo section run in a worker process beside the others, when the machine has a core to spare.

The demo is a chain of sections, each mostly one core's work on small tensors. The drawing style's LoRA (2000 steps,
about 6 of the demo's 15 minutes on one core) needs nothing but the world model, so on two or more cores it runs in
a worker process from the start while the other sections go on here, and its sections take the place in the index
reserved for them. The worker computes on one torch thread (docs/world.md's style LoRA is the one-thread one);
this process keeps the other threads. What the worker says (its messages, warnings included) is said here when it
is done; its failure fails the demo, after the other sections, as it would have in line.

    later = Beside(world_style, (out, world), on_event).start()   # inline (not started) on one core
    ...
    slot = index.reserve()          # where its sections go
    ...
    later.place(slot)               # waits for it; its sections fill the slot
"""

from __future__ import annotations

import os
import signal
import traceback
from collections.abc import Callable
from multiprocessing import get_context
from pathlib import Path

from personae.errors import UserError
from personae.events import EventHandler, Message


class Recorder:
    """Stands in for the demo's Index in a worker: the sections a demo step adds, and the messages it says."""

    def __init__(self):
        self.sections: list[tuple[str, str, list[Path]]] = []
        self.messages: list[Message] = []

    def add(self, title: str, text: str, images: list[Path] = ()) -> None:
        self.sections.append((title, text, list(images)))

    def event(self, event) -> None:
        if isinstance(event, Message):
            self.messages.append(event)


def spare_cores() -> bool:
    """Whether this process may use two or more cores (its CPU affinity, as a container or taskset sets it)."""
    try:
        return len(os.sched_getaffinity(0)) >= 2
    except AttributeError:  # not on Linux
        return (os.cpu_count() or 1) >= 2


def _child(conn, section: Callable, args: tuple) -> None:
    """The worker: one torch thread, Ctrl-C left to the parent, which ends this process (a training run in it takes
    Ctrl-C as a stop at its step's end meanwhile); the section's outcome sent back whole."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    from personae.quiet import quiet_libraries

    torch.set_num_threads(1)
    quiet_libraries()
    recorder = Recorder()
    try:
        section(*args, recorder, recorder.event)
        outcome = ("done", recorder.sections, recorder.messages, os.getpid())
    except UserError as err:
        outcome = ("user error", str(err), recorder.messages, os.getpid())
    except BaseException:  # noqa: BLE001 - a bug: its traceback travels as text
        outcome = ("bug", traceback.format_exc(), recorder.messages, os.getpid())
    try:
        conn.send(outcome)
        conn.close()
    except OSError:  # the demo has ended (it is ending this process): nobody to tell, and nothing to print
        pass


class Beside:
    """`section(*args, index, on_event)` in a worker process (`start`), its sections placed later (`place`); run
    in line at `place` instead when `overlap` is False (one core)."""

    def __init__(self, section: Callable, args: tuple, on_event: EventHandler, overlap: bool | None = None,
                 name: str = "a demo section"):
        self.section, self.args, self.on_event, self.name = section, args, on_event, name
        self.overlap = spare_cores() if overlap is None else overlap
        self.pid: int | None = None  # the process the section ran in (tests)
        self._proc = self._conn = None
        self._threads: int | None = None

    def start(self) -> Beside:
        if not self.overlap:
            return self
        import torch

        ctx = get_context("spawn")
        self._conn, child_end = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_child, args=(child_end, self.section, self.args), daemon=True,
                                 name=f"personae demo: {self.name}")
        self._proc.start()
        child_end.close()
        self._threads = torch.get_num_threads()
        if self._threads > 1:  # the worker has one core: this process keeps the rest
            torch.set_num_threads(self._threads - 1)
        self.on_event(Message(f"{self.name}: running in a worker process beside the other sections"))
        return self

    def place(self, slot) -> None:
        """The section's index entries into `slot` (an Index's reserved place), its messages said; its failure
        raised here."""
        if not self.overlap:
            self.section(*self.args, slot, self.on_event)
            return
        try:
            outcome = self._outcome()
        finally:
            self.close()
        if outcome is None:
            raise RuntimeError(f"{self.name}: the worker process ended without a result (exit code "
                               f"{self._proc.exitcode}); it may have run out of memory")
        kind, payload, messages, self.pid = outcome
        for message in messages:
            self.on_event(message)
        if kind == "user error":
            raise UserError(payload)
        if kind == "bug":
            raise RuntimeError(f"{self.name} failed in its worker process:\n{payload}")
        for title, text, images in payload:
            slot.add(title, text, images)

    def _outcome(self) -> tuple | None:
        """What the worker sent, once it has; None when it ended without sending (its end of the pipe closed)."""
        while not self._conn.poll(0.5):
            if not self._proc.is_alive() and not self._conn.poll(0):
                return None
        try:
            return self._conn.recv()
        except EOFError:
            return None

    def close(self) -> None:
        """Ends the worker if it still runs (the demo failed or was stopped here) and gives this process its
        threads back. SIGKILL, not SIGTERM: a training run takes SIGTERM as "save a checkpoint, then stop", and
        the demo has no use for that checkpoint."""
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()
        if self._proc is not None:
            self._proc.join(10)
        if self._threads:
            import torch

            torch.set_num_threads(self._threads)
            self._threads = None

    def __enter__(self) -> Beside:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
