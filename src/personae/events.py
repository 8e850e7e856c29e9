"""Typed progress events: how long-running work reports to the CLI, the web UI and tests.

The core never prints or draws bars; it calls an `on_event` callback with these, and the
adapters render them (tqdm in the CLI). A training job (jobs/runner.py) also reports the images
and checkpoints it writes and how it ended (Finished, Failed); a handler ignores what it does not know.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Progress:
    stage: str  # what is running, e.g. "denoise", "prepare", "train"
    done: int  # units finished so far
    total: int  # units in the stage (0 when unknown)
    info: dict = field(default_factory=dict)  # e.g. {"loss": 0.1} for a postfix


@dataclass(frozen=True)
class Message:
    text: str  # a line for the user (a warning, or where files went)
    level: str = "info"  # "info" or "warning"


@dataclass(frozen=True)
class ImageReady:
    path: Path  # an image just written (a validation grid, a sample)
    step: int | None = None  # the training step it shows, when it comes from training


@dataclass(frozen=True)
class CheckpointSaved:
    step: int
    path: Path  # the checkpoint folder


@dataclass(frozen=True)
class Finished:
    run: Path  # the run folder
    steps: int  # steps done
    stopped: bool = False  # True: ended early on a stop (command or signal), with a checkpoint to resume from


@dataclass(frozen=True)
class Failed:
    error: BaseException  # what ended the job (a UserError for the user's mistakes)


Event = Progress | Message | ImageReady | CheckpointSaved | Finished | Failed
EventHandler = Callable[[Event], None]


def ignore(_: Event) -> None:
    """The default handler: report nothing."""
