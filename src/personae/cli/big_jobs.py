"""Ask before a big job: more than BIG_IMAGES images, or more than an hour by a simple estimate.

Only when a person is at the terminal (stdin is a TTY and CI is not set): scripts, CI and
the web UI just run. `--yes` answers in advance.

The estimate is deliberately simple: one UNet evaluation of SD-1.5 at 512x512 takes about
18 s on a CPU core pair (measured here), 0.6 s on Apple MPS and 0.06 s on a CUDA GPU; it
scales with the UNet's size on disk, the number of pixels, two evaluations per step with
CFG, the frames of a clip, and each ControlNet unit (a ControlNet is SD-1.5's encoder half again: about 0.45 of
a UNet evaluation; a run with one unit measured 1.3-1.5x the time per step).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from personae.errors import UserError

BIG_IMAGES = 100
BIG_SECONDS = 3600.0
SD15_UNET_BYTES = 3.44e9  # SD-1.5's UNet in float32
SECONDS_PER_EVAL = {"cpu": 18.0, "mps": 0.6, "cuda": 0.06}  # SD-1.5 UNet, 512x512, batch 1
CONTROLNET_SHARE = 0.45  # one ControlNet unit's evaluation, as a share of the UNet's (361 M vs 860 M parameters)


def unet_bytes(model: str | None) -> float:
    """The size of a model's UNet weights on disk (SD-1.5's for a hub id or anything unreadable)."""
    path = Path(model or "").expanduser()
    try:
        if path.is_dir():
            files = [p for p in (path / "unet").glob("*") if p.suffix in (".safetensors", ".bin")]
            return float(sum(p.stat().st_size for p in files)) or SD15_UNET_BYTES
        if path.is_file():
            return path.stat().st_size * 0.8  # a single file: the UNet is most of it
    except OSError:
        pass
    return SD15_UNET_BYTES


def estimate_seconds(model: str | None, images: int, steps: int, width: int | None, height: int | None,
                     cfg: float = 7.0, device: str = "auto", frames: int = 1, controls: int = 0) -> float:
    """A rough time for `images` images (or clips of `frames` frames) of `steps` steps, with `controls` ControlNet
    units."""
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    pixels = (width or 512) * (height or 512) / (512 * 512)
    evaluations = images * steps * (2 if cfg > 1 else 1) * frames
    per_eval = SECONDS_PER_EVAL.get(device, 18.0) * (1 + CONTROLNET_SHARE * controls)
    return evaluations * per_eval * pixels * unet_bytes(model) / SD15_UNET_BYTES


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"about {seconds / 3600:.1f} hours"
    return f"about {max(1, round(seconds / 60))} minutes"


def interactive() -> bool:
    """A person at a terminal (not CI, not a pipe)."""
    if os.environ.get("CI"):
        return False
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def confirm_big_job(what: str, images: int, seconds: float, yes: bool = False) -> None:
    """Ask once at a terminal before a job of more than BIG_IMAGES images or BIG_SECONDS; a UserError on no."""
    if yes or (images <= BIG_IMAGES and seconds <= BIG_SECONDS) or not interactive():
        return
    question = (f"{what}: {images} image{'s' * (images != 1)}, {_duration(seconds)} by a rough estimate. "
                "Go ahead? [y/N] ")
    print(question, end="", file=sys.stderr, flush=True)
    try:
        answer = sys.stdin.readline()
    except (OSError, ValueError):
        answer = ""
    if answer.strip().lower() not in ("y", "yes"):
        raise UserError(f"{what} was not started.", "Pass --yes to run it without this question, or make it smaller.")
