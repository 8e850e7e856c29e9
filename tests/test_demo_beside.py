"""demo/beside.py: a demo section in a worker process beside the others, its sections placed where the index
reserved them. The demo itself (tests/test_cli.py) runs its drawing style this way on CI's two cores; these tests
take the mechanism's own cases with small sections (plain functions, no model), each in a real spawned worker."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from personae.demo.beside import Beside
from personae.demo.flow import Index
from personae.errors import UserError
from personae.events import Message

SPAWNS = pytest.mark.slow  # each starts a worker process that imports torch: several seconds, for the full tier


def _section(out, word, index, on_event):
    on_event(Message(f"{word}: drawing"))
    on_event(Message("a warning from the worker", "warning"))
    (out / "made.txt").write_text(f"{os.getpid()} {torch.get_num_threads()}")
    index.add("Made beside", f"{word}, made in process {os.getpid()}", [out / "made.txt"])


def _wrong_input(out, index, on_event):
    on_event(Message("reading the input"))
    raise UserError(f"{out / 'input.txt'} is not a list of shapes.", "Write one shape per line.")


def _bug(out, index, on_event):
    raise ValueError("a bug in a section")


def _dies(out, index, on_event):
    os._exit(3)  # as the kernel's out-of-memory killer would end it: no outcome sent


def _long(out, index, on_event):
    signal.signal(signal.SIGTERM, lambda *_: None)  # as a training run defers it: a checkpoint at the step's end
    (out / "started").write_text("")
    time.sleep(120)


def _run(tmp_path, section, args, overlap):
    said, index = [], Index(tmp_path)
    index.add("Before", "made first")
    with Beside(section, args, said.append, overlap, "the section") as later:
        slot = index.reserve()
        index.add("After", "made here while the section ran")
        later.place(slot)
    return later, index, said


@SPAWNS
def test_a_section_runs_in_a_worker_on_one_thread_and_fills_its_place_in_the_index(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        later, index, said = _run(tmp_path, _section, (tmp_path, "circles"), overlap=True)
        assert torch.get_num_threads() == 2  # given back once the worker is done
    finally:
        torch.set_num_threads(threads)
    pid, worker_threads = (tmp_path / "made.txt").read_text().split()
    assert int(pid) == later.pid != os.getpid() and worker_threads == "1"
    assert [t for t, _, _ in index.sections] == ["Before", "Made beside", "After"]
    md = (tmp_path / "index.md").read_text()
    assert md.index("## Before") < md.index("## Made beside") < md.index("## After"), md
    assert f"circles, made in process {pid}" in md and "![](made.txt)" in md
    assert [m.text for m in said] == ["the section: running in a worker process beside the other sections",
                                      "circles: drawing", "a warning from the worker"]
    assert said[-1].level == "warning"


def test_on_one_core_the_section_runs_in_line_at_its_place(tmp_path):
    later, index, said = _run(tmp_path, _section, (tmp_path, "squares"), overlap=False)
    assert (tmp_path / "made.txt").read_text().split()[0] == str(os.getpid()) and later.pid is None
    assert [t for t, _, _ in index.sections] == ["Before", "Made beside", "After"]
    assert [m.text for m in said] == ["squares: drawing", "a warning from the worker"]


@SPAWNS
def test_a_user_error_in_the_worker_is_the_demo_s_user_error(tmp_path):
    with pytest.raises(UserError) as err:
        _run(tmp_path, _wrong_input, (tmp_path,), overlap=True)
    assert str(err.value) == f"{tmp_path / 'input.txt'} is not a list of shapes. Write one shape per line."


@SPAWNS
def test_a_bug_in_the_worker_fails_the_demo_with_its_traceback(tmp_path):
    with pytest.raises(RuntimeError) as err:
        _run(tmp_path, _bug, (tmp_path,), overlap=True)
    assert "the section failed in its worker process" in str(err.value)
    assert "ValueError: a bug in a section" in str(err.value) and "_bug" in str(err.value)


@SPAWNS
def test_a_worker_that_dies_fails_the_demo_saying_so(tmp_path):
    with pytest.raises(RuntimeError) as err:
        _run(tmp_path, _dies, (tmp_path,), overlap=True)
    assert "the worker process ended without a result (exit code 3)" in str(err.value)


@SPAWNS
def test_a_demo_that_fails_here_ends_the_worker(tmp_path):
    """The demo failing (or Ctrl-C) in this process while the section still runs: the worker does not go on
    writing into the demo's folder, even when its section (a training run) takes SIGTERM as a stop to do later."""
    with pytest.raises(KeyError):
        with Beside(_long, (tmp_path,), lambda e: None, True, "the section") as later:
            deadline = time.monotonic() + 60
            while not (tmp_path / "started").exists():
                assert time.monotonic() < deadline
                time.sleep(0.05)
            raise KeyError("a section here failed")
    assert not later._proc.is_alive() and later._proc.exitcode == -signal.SIGKILL
