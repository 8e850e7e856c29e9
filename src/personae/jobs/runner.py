"""The job interface: start a training job, read its events, send it commands. The CLI and the web UI drive this.

    handle = start(job)                       # a worker process running run_training (in-thread: isolated=False)
    for event in handle.events():             # Progress, Message, ImageReady, CheckpointSaved, then Finished or Failed
        if isinstance(event, Progress) and event.stage == "train" and event.done == 2:
            handle.stop()                     # or handle.sample_now() / handle.save_now()
    result = handle.result()                  # the TrainResult; a stop raises Stopped, a failure its error

Commands are acted on at the end of the current step (training/stopping.py): "stop" saves a
checkpoint of exactly the steps done and ends the run (a --resume continues it bit-identically),
"sample" renders the validation samples (an ImageReady event), "save" writes a checkpoint (a
CheckpointSaved event). A stop sent before the loop begins ends the run between its setup stages.
Events are queued for `events()`; `on_event`, when given, is also called with each, in a thread of this process.

Each job runs in its own process by default (`ProcessJobHandle`): accelerate keeps one precision and
one accumulation setting per process, and a training run sets both, so two jobs in one process could
not differ (or run side by side) without resetting library state under each other. The CLI runs its
one job in a thread of its own process (`JobHandle`), where its signal handlers live.
"""

from __future__ import annotations

import ctypes
import queue
import signal
import threading
from collections.abc import Iterator
from multiprocessing import get_context
from pathlib import Path

from personae.config.train import TrainJob
from personae.events import Event, EventHandler, Failed, Finished, Progress
from personae.quiet import quiet_libraries
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


class ProcessJobHandle(JobHandle):
    """A training job running in a worker process of its own; the same events, commands and result."""

    def __init__(self, job: TrainJob, resume: bool = False, overwrite: bool = False,
                 on_event: EventHandler | None = None):
        super().__init__(job, resume, overwrite, on_event)
        context = get_context("spawn")  # a fresh interpreter: no state inherited from this process
        self._events, self._commands = context.Queue(), context.Queue()
        self._process = context.Process(target=_worker, args=(job.model_dump(), resume, overwrite, self._events,
                                                              self._commands, _threads()),
                                        name=f"personae train {job.output}")

    def start(self) -> ProcessJobHandle:
        self._process.start()
        self._thread.start()  # here the thread relays the worker's events
        return self

    def _run(self) -> None:
        try:
            while True:
                try:
                    kind, value = self._events.get(timeout=0.5)
                except queue.Empty:
                    if not self._process.is_alive():
                        code = self._process.exitcode
                        self._error = RuntimeError(f"the training process ended without a result (exit code {code})")
                        self._emit(Failed(self._error))
                        return
                    continue
                if kind == "event":
                    self._emit(value)
                elif kind == "stopped":
                    self._error = Stopped(value)
                    self._emit(Finished(Path(self.job.output), self.steps, stopped=True))
                    return
                elif kind == "failed":
                    self._error = value
                    self._emit(Failed(value))
                    return
                else:
                    self._result = value
                    self._emit(Finished(value.run, value.steps))
                    return
        finally:
            self._queue.put(_END)
            self._process.join(timeout=30)

    def send(self, command: str, signum: int | None = None) -> None:
        self.commands.send(command, signum)  # checked and recorded here too (the CLI reads commands.signum)
        self._commands.put((command, signum))

    def interrupt(self) -> None:
        """Stop at once: KeyboardInterrupt in the worker's training, whose cleanup runs as in a main-thread run."""
        if not self.done:
            self._commands.put(("interrupt", None))


def _threads() -> int | None:
    """This process's torch thread count (None before torch is loaded): the worker computes with the same, so a
    job gives the same numbers in a worker as in a thread here."""
    import sys

    return sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None


def _worker(job_data: dict, resume: bool, overwrite: bool, events, commands, threads: int | None) -> None:
    """The worker process: runs the job in its main thread; a thread takes commands from the parent."""
    import torch

    from personae.jobs.train import run_training

    if threads:
        torch.set_num_threads(threads)  # this process is the job's own
    quiet_libraries()  # the worker's terminal is its parent's (e.g. `personae ui`)
    # Ctrl-C at a terminal reaches the whole process group: the parent decides (its handle sends "stop", which
    # saves a checkpoint, or "interrupt"); the worker acting on the signal itself would end without a checkpoint
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    job = TrainJob.model_validate(job_data)
    request = Commands()
    main = threading.main_thread().ident

    def listen():
        while True:
            command, signum = commands.get()
            if command == "interrupt":
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(main), ctypes.py_object(KeyboardInterrupt))
                return
            request.send(command, signum)

    threading.Thread(target=listen, daemon=True).start()
    try:
        result = run_training(job, resume=resume, overwrite=overwrite, on_event=lambda e: events.put(("event", e)),
                              commands=request)
    except Stopped as stop:
        events.put(("stopped", stop.signum))
    except BaseException as exc:
        events.put(("failed", _portable(exc)))
    else:
        events.put(("finished", result))
    events.close()
    events.join_thread()  # everything sent before the process ends


def _portable(exc: BaseException) -> BaseException:
    """The error as the parent can receive it: itself when it pickles, else its type and message."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def start(job: TrainJob, resume: bool = False, overwrite: bool = False, on_event: EventHandler | None = None,
          isolated: bool = True) -> JobHandle:
    """Start `job` and return its handle: in a worker process of its own, or (isolated=False) in a thread here."""
    kind = ProcessJobHandle if isolated else JobHandle
    return kind(job, resume, overwrite, on_event).start()
