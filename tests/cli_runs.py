"""`personae generate` as a user runs it, for tests: a subprocess, the one picture it made, a PNG drawn again from
its own settings (`--from-png`: the same pixels), and a stand-in for an A1111 PNG (a black picture with its
infotext)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def generate(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "personae", "generate", *map(str, args)], capture_output=True,
                          text=True)


def made(out: Path) -> Path:
    """The one picture a run wrote into `out`."""
    [png] = Path(out).glob("*.png")
    return png


def drawn_again(png: Path, out: Path) -> None:
    """`--from-png png` into `out` draws the same pixels (the PNG's settings are read whole)."""
    r = generate("--from-png", png, "--out", out)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(made(out))))


def a1111_png(path: Path, infotext: str) -> Path:
    from personae.media.png import save_png

    save_png(Image.new("RGB", (64, 64)), path, infotext)
    return path
