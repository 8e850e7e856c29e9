"""Long work in a queue, one job at a time, in a background thread: the web UI's worker.

    jobs = JobQueue()
    task = jobs.submit("generate", "a red fox", lambda on_event: run_generate(settings, out, on_event))
    train = jobs.submit_training(job)           # in a worker process (jobs/runner.py), stoppable
    jobs.stop(train.id)                         # a queued job is cancelled; a running training stops at the step's end
    jobs.snapshot()                             # every job so far, as copies: status, progress, rate, ETA, losses, images

One job runs at a time (one GPU), in submission order. A job's events (events.py) update its record, which
pages read by polling: a browser that closes and comes back finds the job where it is. A training job runs
in its own process, as `personae train` would (so two runs never share accelerate's per-process state),
and Stop is that job's stop command: a checkpoint of the steps done, which `resume=True` continues.
"""

from __future__ import annotations

import copy
import itertools
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personae.errors import UserError
from personae.events import CheckpointSaved, Event, EventHandler, Failed, Finished, ImageReady, Message, Progress

WAITING, RUNNING, DONE, STOPPED, FAILED, CANCELLED = "queued", "running", "done", "stopped", "failed", "cancelled"
ENDED = (DONE, STOPPED, FAILED, CANCELLED)


@dataclass
class Task:
    """One job's record: what it is, where it is, what it made."""

    id: int
    kind: str  # "generate", "train", "prepare", ...
    title: str
    status: str = WAITING
    stage: str = ""
    done: int = 0
    total: int = 0
    info: dict = field(default_factory=dict)  # the last progress postfix, e.g. {"loss": 0.12}
    rate: float | None = None  # units per second in the current stage
    eta: float | None = None  # seconds left in the current stage
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss) of a training job
    images: list[Path] = field(default_factory=list)  # images written so far (validation grids, results)
    messages: list[str] = field(default_factory=list)
    checkpoints: list[int] = field(default_factory=list)
    result: Any = None  # what the job returned (output paths, a report)
    run: Path | None = None  # a training job's run folder
    error: str | None = None  # the one-paragraph reason a job failed
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    _stage_start: tuple[float, int] | None = field(default=None, repr=False)

    @property
    def percent(self) -> int:
        if self.status == DONE:
            return 100
        return int(100 * self.done / self.total) if self.total else 0


class JobQueue:
    """Jobs run one at a time, in order, in a daemon thread; records kept for the life of the queue."""

    def __init__(self):
        self._lock = threading.Lock()
        self._tasks: list[Task] = []
        self._work: dict[int, Callable[[EventHandler], Any]] = {}
        self._pending: queue.Queue[int] = queue.Queue()
        self._ids = itertools.count(1)
        self._handles: dict[int, Any] = {}  # a running training job's handle (jobs/runner.py)
        self._thread = threading.Thread(target=self._loop, name="personae jobs", daemon=True)
        self._thread.start()

    # -- in
    def submit(self, kind: str, title: str, work: Callable[[EventHandler], Any]) -> Task:
        """Queue `work(on_event)`; its return value becomes the task's result."""
        return self._add(kind, title, lambda _task_id: work)

    def submit_training(self, job, resume: bool = False, overwrite: bool = False, title: str | None = None) -> Task:
        """Queue a training job (a TrainJob), run in a worker process of its own; Stop leaves a checkpoint."""
        def make(task_id: int) -> Callable[[EventHandler], Any]:
            def work(on_event: EventHandler):
                from personae.jobs.runner import start
                from personae.training.stopping import Stopped

                handle = start(job, resume=resume, overwrite=overwrite, on_event=on_event)
                with self._lock:
                    self._handles[task_id] = handle
                try:
                    return handle.result()
                except Stopped:
                    return None
                finally:
                    with self._lock:
                        self._handles.pop(task_id, None)
            return work

        word = "resume" if resume else "train"
        return self._add("train", title or f"{word} {job.method} -> {job.output}", make)

    def _add(self, kind: str, title: str, make: Callable[[int], Callable[[EventHandler], Any]]) -> Task:
        with self._lock:
            task = Task(next(self._ids), kind, title)
            self._tasks.append(task)
            self._work[task.id] = make(task.id)
        self._pending.put(task.id)
        return copy.deepcopy(task)

    def stop(self, task_id: int) -> str:
        """Cancel a queued job, or stop a running training job at the end of its step; what happened, in words."""
        with self._lock:
            task = self._find(task_id)
            if task.status == WAITING:
                task.status, task.ended = CANCELLED, time.time()
                return f"job {task_id} cancelled before it started"
            handle = self._handles.get(task_id)
        if task.status != RUNNING:
            return f"job {task_id} has already ended ({task.status})"
        if handle is None:
            return f"job {task_id} ({task.kind}) cannot be stopped while it runs; it ends on its own"
        handle.stop()
        return f"job {task_id} stops at the end of its current step and saves a checkpoint"

    def shutdown(self, timeout: float = 600) -> list[Task]:
        """Before the process ends: cancel the queued jobs, stop a running training job at its step's end (a
        checkpoint that resume continues) and wait for the running job to end; the jobs that were still running."""
        with self._lock:
            for task in self._tasks:
                if task.status == WAITING:
                    task.status, task.ended = CANCELLED, time.time()
            handles = list(self._handles.values())
            running = [t.id for t in self._tasks if t.status == RUNNING]
        for handle in handles:
            handle.stop()
        deadline = time.time() + timeout
        while time.time() < deadline and any(self.get(i).status == RUNNING for i in running):
            time.sleep(0.1)
        return [self.get(i) for i in running]

    # -- out
    def snapshot(self) -> list[Task]:
        with self._lock:
            return copy.deepcopy(self._tasks)

    def get(self, task_id: int) -> Task:
        with self._lock:
            return copy.deepcopy(self._find(task_id))

    def wait(self, task_id: int, timeout: float | None = None) -> Task:
        """Block until the job ends (tests, scripts); its final record."""
        deadline = None if timeout is None else time.time() + timeout
        while True:
            task = self.get(task_id)
            if task.status in ENDED:
                return task
            if deadline is not None and time.time() > deadline:
                raise TimeoutError(f"job {task_id} is still {task.status}")
            time.sleep(0.1)

    def _find(self, task_id: int) -> Task:
        for task in self._tasks:
            if task.id == task_id:
                return task
        raise KeyError(task_id)

    # -- the worker
    def _loop(self) -> None:
        while True:
            task_id = self._pending.get()
            with self._lock:
                task = self._find(task_id)
                if task.status != WAITING:
                    continue  # cancelled while queued
                task.status, task.started = RUNNING, time.time()
                work = self._work.pop(task_id)
            try:
                result = work(lambda event, _t=task: self._record(_t, event))
            except UserError as exc:
                self._end(task, FAILED, error=str(exc))
            except BaseException as exc:  # noqa: BLE001 - a job's crash must not end the worker
                self._end(task, FAILED, error=f"{type(exc).__name__}: {exc}")
            else:
                with self._lock:
                    stopped = task.status == STOPPED
                self._end(task, STOPPED if stopped else DONE, result=result)

    def _end(self, task: Task, status: str, result: Any = None, error: str | None = None) -> None:
        with self._lock:
            if task.status == RUNNING or status in (FAILED, STOPPED):
                task.status = status
            task.result = result if result is not None else task.result
            task.error = error or task.error
            task.ended = time.time()
            task.eta = 0.0 if status == DONE else None

    def _record(self, task: Task, event: Event) -> None:
        with self._lock:
            if isinstance(event, Progress):
                now = time.time()
                if task.stage != event.stage or task._stage_start is None or event.done < task.done:
                    task._stage_start = (now, event.done)
                task.stage, task.done, task.total, task.info = event.stage, event.done, event.total, dict(event.info)
                start_time, start_done = task._stage_start
                if event.done > start_done and now > start_time:
                    task.rate = (event.done - start_done) / (now - start_time)
                    task.eta = (event.total - event.done) / task.rate if event.total else None
                if event.stage == "train" and "loss" in event.info:
                    task.losses.append((event.done, float(event.info["loss"])))
            elif isinstance(event, ImageReady):
                task.images.append(Path(event.path))
            elif isinstance(event, Message):
                task.messages.append(event.text)
            elif isinstance(event, CheckpointSaved):
                task.checkpoints.append(event.step)
            elif isinstance(event, Finished):
                task.run = Path(event.run)
                if event.stopped:
                    task.status = STOPPED
                    task.messages.append(f"stopped at step {event.steps}; a checkpoint is saved (Resume continues)")
            elif isinstance(event, Failed):
                task.error = str(event.error)
