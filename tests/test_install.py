"""The install is the lock: what scripts/setup.sh put in .venv is exactly locks/personae.txt (issue #13)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from personae.jobs.doctor import installed_versions, lock_differences, read_lock

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "locks" / "personae.txt"
# installed beside a CUDA torch on GPU machines, or the venv's own bootstrap: not ours to lock
UNLOCKED = re.compile(r"^(pip|personae|nvidia-.*|triton|cuda-.*)$")


def test_lock_pins_every_package_exactly_and_keeps_the_known_bad_pair_out():
    pins = read_lock(LOCK)
    assert {"torch", "diffusers", "transformers", "peft", "accelerate", "safetensors"} <= set(pins)
    transformers = tuple(int(x) for x in pins["transformers"].split(".")[:2])
    peft = tuple(int(x) for x in pins["peft"].split(".")[:2])
    assert not (transformers >= (5, 24) and peft < (0, 22)), "transformers >= 5.24 refuses peft < 0.22"


@pytest.mark.skipif(Path(sys.prefix).resolve() != (ROOT / ".venv").resolve(),
                    reason="checks the project's own .venv (made by scripts/setup.sh)")
def test_installed_packages_are_exactly_the_lock():
    pins, installed = read_lock(LOCK), installed_versions()
    wrong = lock_differences(pins, installed)
    assert not wrong, f"installed versions differ from {LOCK.name} (locked, installed): {wrong}"
    if os.environ.get("CI") or os.environ.get("PERSONAE_STRICT_LOCK"):
        extra = sorted(n for n in installed if n not in pins and not UNLOCKED.match(n))
        assert not extra, f"installed but not in {LOCK.name}: {extra} (refresh it with scripts/lock.sh)"
