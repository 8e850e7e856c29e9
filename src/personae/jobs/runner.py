"""The job interface: start a training job, read its events, send it commands. The CLI and the web UI drive this.

    handle = start(job)                       # a worker thread running run_training
    for event in handle.events():             # Progress, Message, ImageReady, CheckpointSaved, then Finished or Failed
        if isinstance(event, Progress) and event.stage == "train" and event.done == 2:
            handle.stop()                     # or handle.sample_now() / handle.save_now()
    result = handle.result()                  # the TrainResult; a stop raises Stopped, a failure its error

Commands are acted on at the end of the current step (training/stopping.py): "stop" saves a
checkpoint of exactly the steps done and ends the run (a --resume continues it bit-identically),
"sample" renders the validation samples (an ImageReady event), "save" writes a checkpoint (a
CheckpointSaved event). A stop sent before the loop begins ends the run between its setup stages.
Events are queued for `events()`; `on_event`, when given, is also called with each, in the worker.
"""

from __future__ import annotations

import ctypes
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

from personae.config.train import TrainJob
from personae.events import Event, EventHandler, Failed, Finished, Progress
from personae.training.stopping import Commands, Stopped

_END = object()


class JobHandle:
    """A training job running in a worker thread."""

    def __init__(self, job: TrainJob, resume: bool = False, overwrite: bool = False,
                 on_event: EventHandler | None = None):
        self.job, self.commands = job, Commands()
        self.steps = 0  # training steps done, from the progress events
        self._resume, self._overwrite, self._on_event = resume, overwrite, on_event
        self._queue: queue.Queue = queue.Queue()
        self._result = None
        self._error: BaseException | None = None
        # a daemon: should the process end while the worker still runs, it does not wait for it
        self._thread = threading.Thread(target=self._run, name=f"personae train {job.output}", daemon=True)

    def start(self) -> JobHandle:
        self._thread.start()
        return self

    # -- events out
    def _emit(self, event: Event) -> None:
        if isinstance(event, Progress) and event.stage == "train":
            self.steps = event.done
        self._queue.put(event)
        if self._on_event is not None:
            self._on_event(event)

    def _run(self) -> None:
        from personae.jobs.train import run_training

        try:
            result = run_training(self.job, resume=self._resume, overwrite=self._overwrite, on_event=self._emit,
                                  commands=self.commands)
        except Stopped as stop:
            self._error = stop
            self._emit(Finished(Path(self.job.output), self.steps, stopped=True))
        except BaseException as exc:  # handed to whoever waits on the handle, raised there again
            self._error = exc
            self._emit(Failed(exc))
        else:
            self._result = result
            self._emit(Finished(result.run, result.steps))
        finally:
            self._queue.put(_END)

    def events(self, poll: float = 0.2) -> Iterator[Event]:
        """Every event until the job ends (Finished or Failed is the last); `poll` keeps signals responsive."""
        while True:
            try:
                event = self._queue.get(timeout=poll)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    return  # ended without its last event (interrupted inside its own bookkeeping)
                continue
            if event is _END:
                self._queue.put(_END)  # a second reader ends too
                return
            yield event

    # -- commands in
    def send(self, command: str, signum: int | None = None) -> None:
        """"stop", "sample" or "save", acted on at the end of the current step."""
        self.commands.send(command, signum)

    def stop(self, signum: int | None = None) -> None:
        self.send("stop", signum)

    def sample_now(self) -> None:
        self.send("sample")

    def save_now(self) -> None:
        self.send("save")

    def interrupt(self) -> None:
        """Stop at once, not at the step's end (a second Ctrl-C): KeyboardInterrupt is raised in the worker, as it
        would be in a run in the main thread, so its cleanup runs (no half-written file, the folder unlocked)."""
        ident = self._thread.ident
        if ident is not None and not self.done:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(KeyboardInterrupt))

    # -- the end
    @property
    def done(self) -> bool:
        return self._thread.ident is not None and not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return self.done

    def result(self, timeout: float | None = None):
        """The TrainResult once the job ends; a stopped job raises Stopped, a failed one its error."""
        if not self.wait(timeout):
            raise TimeoutError(f"the training job {self.job.output} is still running")
        if self._error is not None:
            raise self._error
        if self._result is None:
            raise KeyboardInterrupt  # interrupted before it could record how it ended
        return self._result


def start(job: TrainJob, resume: bool = False, overwrite: bool = False,
          on_event: EventHandler | None = None) -> JobHandle:
    """Start `job` in a worker thread and return its handle."""
    return JobHandle(job, resume, overwrite, on_event).start()
