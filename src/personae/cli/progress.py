"""Render core events in a terminal: tqdm bars for Progress, lines for Message, ImageReady and CheckpointSaved."""

from __future__ import annotations

import sys

from tqdm import tqdm

from personae.events import CheckpointSaved, Event, ImageReady, Message, Progress


class TerminalProgress:
    """An event handler that keeps one tqdm bar per stage (stderr, so stdout stays clean)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.bar: tqdm | None = None
        self.key: tuple | None = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, Message):
            if event.level == "warning" or not self.quiet:
                self._write(("warning: " if event.level == "warning" else "") + event.text)
            return
        if isinstance(event, (ImageReady, CheckpointSaved)) and not self.quiet:
            at = f"step {event.step}: " if event.step is not None else ""
            noun = "checkpoint" if isinstance(event, CheckpointSaved) else "image"
            if isinstance(event, ImageReady) and event.path.parent.name == "validation":
                noun = "validation grid"
            self._write(f"{at}{noun} {event.path}")
            return
        if self.quiet or not isinstance(event, Progress):
            return
        key = (event.stage, event.total, event.info.get("batch"))
        if key != self.key:
            self.close()
            label = event.stage
            if event.info.get("batches", 1) > 1:
                label += f" {event.info['batch']}/{event.info['batches']}"
            self.bar = tqdm(total=event.total or None, desc=label, file=sys.stderr, dynamic_ncols=True, leave=False)
            self.key = key
        assert self.bar is not None
        self.bar.n = event.done
        postfix = {k: v for k, v in event.info.items() if k not in ("batch", "batches")}
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)
        self.bar.refresh()
        if event.total and event.done >= event.total:
            self.close()

    def _write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar = None
        self.key = None
