"""Shared fixtures: the tiny model written once per test session, CPU, fixed threads."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("PERSONAE_CACHE", os.path.join(os.environ.get("TMPDIR", "/tmp"), "personae-test-cache"))

# Under pytest-xdist (pyproject's addopts run two workers) each worker gets one thread, and so do the personae
# processes tests start: two processes with two OpenMP threads each on two cores spin against each other.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"

import pytest
import torch

torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """(folder, single_file) of the tiny model, seed 0."""
    from personae.models.tiny import write_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    write_tiny_model(root / "tiny", seed=0, single_file=root / "tiny.safetensors")
    return root / "tiny", root / "tiny.safetensors"


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`): AnimateDiff on two
    threads is many times slower while other processes share the two cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_session(tiny_model):
    """A loaded tiny pipeline (no add-ons); tests must not add LoRAs or tokens to it."""
    from personae.cli.main import quiet_libraries
    from personae.inference.session import open_session

    quiet_libraries()
    return open_session(str(tiny_model[0]), device="cpu")


@pytest.fixture(scope="session")
def motion_dir(tmp_path_factory):
    """The folder of the tiny AnimateDiff motion adapter (matching the tiny model), seed 0."""
    from personae.models.tiny_motion import write_tiny_motion_adapter

    folder = tmp_path_factory.mktemp("tiny-motion") / "motion"
    write_tiny_motion_adapter(folder, seed=0)
    return folder


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A 64x64 PNG of seeded noise: an ordinary image file for commands that take one."""
    import numpy as np
    from PIL import Image

    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(path)
    return path


# The fast tier (`pytest -m "not slow"`, a few minutes on 2 cores, for contributors): a test that loads or
# trains a model (one of these fixtures, directly or through another fixture) is slow; tests that are slow for
# other reasons say so with @pytest.mark.slow. CI runs everything.
MODEL_FIXTURES = {"tiny_model", "tiny_session", "short_world", "shipped_world", "tiny_motion", "tiny_controlnet",
                  "motion_dir", "sd15"}  # sd15: the full-size SD-1.5 UNet and text encoder (tests/test_lora_layouts.py)


# The longest test files, longest first (seconds per file in a full run on 2 cores, one thread per worker). The
# two xdist workers take files in collection order (`--dist loadfile`), so these go first and the many short
# files fill in behind them; in alphabetical order one worker sat idle for the last 10 minutes.
LONGEST_FIRST = ("test_train_learning.py", "test_docs.py", "test_cli.py", "test_web_ui.py",
                 "test_train.py", "test_interrupts.py", "test_world.py", "test_runs.py", "test_compare.py",
                 "test_world_bench.py", "test_world_controlnet.py", "test_world_img2img.py")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Tests train many jobs in one process, with different precisions; personae runs each job in its own
    process (jobs.runner), so here accelerate's per-process state is reset after each test, as accelerate's
    own tests do (AccelerateTestCase.tearDown)."""
    yield
    import sys

    if "accelerate.state" in sys.modules:
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
