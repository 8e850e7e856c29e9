"""What every tab shows of the job queue: the jobs in order, their progress bars, rates and ETAs (HTML)."""

from __future__ import annotations

import html

from personae.jobs.queue import ENDED, RUNNING, WAITING, Task


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def task_line(task: Task, position: int | None = None) -> str:
    """One job as a row: number, what, status (or place in the queue), a progress bar, step, rate, ETA."""
    status = task.status if position is None else f"queued, #{position} in line"
    unit = f"{task.done}/{task.total} {html.escape(task.stage)}" if task.total else html.escape(task.stage)
    rate = f"{task.rate:.2f} it/s" if task.rate else ""
    loss = f"loss {task.info['loss']:.4f}" if isinstance(task.info.get("loss"), (int, float)) else ""
    eta = f"ETA {_clock(task.eta)}" if task.status == RUNNING and task.eta is not None else ""
    if task.status in ENDED and task.started and task.ended:
        eta = f"took {_clock(task.ended - task.started)}"
    error = f"<div class='personae-error'>{html.escape(task.error)}</div>" if task.error else ""
    return (f"<tr class='personae-job' data-job='{task.id}' data-status='{task.status}'>"
            f"<td>{task.id}</td><td>{html.escape(task.kind)}</td><td>{html.escape(task.title)}{error}</td>"
            f"<td class='personae-status'>{html.escape(status)}</td>"
            f"<td><progress max='100' value='{task.percent}'></progress> <span class='personae-percent'>"
            f"{task.percent}%</span></td><td>{unit}</td><td>{rate}</td><td>{loss}</td><td>{eta}</td></tr>")


def queue_table(tasks: list[Task], limit: int = 12) -> str:
    """The queue as a table: running and waiting jobs first (in their order), then the latest ended ones."""
    if not tasks:
        return "<p class='personae-queue-empty'>No jobs yet. Jobs run one at a time, in the order they were asked for.</p>"
    waiting = [t for t in tasks if t.status == WAITING]
    active = [t for t in tasks if t.status == RUNNING]
    ended = sorted((t for t in tasks if t.status in ENDED), key=lambda t: t.ended or 0, reverse=True)
    rows = [task_line(t) for t in active] + [task_line(t, i + 1) for i, t in enumerate(waiting)]
    rows += [task_line(t) for t in ended[: max(0, limit - len(rows))]]
    return ("<div class='personae-scroll'><table class='personae-queue'><thead><tr><th>#</th><th>job</th><th>what</th><th>status</th>"
            "<th>progress</th><th>step</th><th>rate</th><th>loss</th><th>time</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table></div>")
