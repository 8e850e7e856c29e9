"""The install is the lock: what scripts/setup.sh put in .venv is exactly locks/personae.txt (issue #13)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
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


def test_installed_versions_are_the_ones_import_finds_even_after_setuptools_vendors_its_own():
    # setuptools appends setuptools/_vendor (importlib_metadata 8.x, packaging, zipp dist-info) to sys.path when
    # imported; under pytest-xdist a worker that had imported it reported those as installed and CI went red
    code = ("import setuptools, sys; from importlib import metadata; "
            "from personae.jobs.doctor import installed_versions, normalise; "
            "assert any(p.endswith('_vendor') for p in sys.path), 'setuptools no longer vendors: test is moot'; "
            "v = installed_versions(); "
            "print({n: (v.get(normalise(n)), metadata.version(n)) for n in ('packaging', 'zipp', 'jaraco.text')})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    pairs = ast.literal_eval(out)
    # packaging and zipp: the site-packages copy import finds; jaraco.text lives only in _vendor: not installed
    assert pairs["packaging"][0] == pairs["packaging"][1] and pairs["zipp"][0] == pairs["zipp"][1], pairs
    assert pairs["jaraco.text"][0] is None, pairs
