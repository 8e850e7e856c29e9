"""`personae doctor`: versions, what auto picks, optional parts, known-bad combinations (issue #13)."""

from __future__ import annotations

from importlib import metadata

from personae.cli.main import main
from personae.jobs.doctor import CORE, known_problems, lock_differences, version_tuple


def test_doctor_prints_versions_device_and_optional_parts(capsys):
    code = main(["doctor"])
    out = capsys.readouterr().out
    for name in CORE:
        assert f"{name:<16}{metadata.version(name)}" in out, name
    assert "device cpu, dtype fp32" in out  # no GPU here: auto picks the CPU in fp32
    for part in ("mediapipe", "dlib", "CJK font", "chromium", "tensorboard", "bitsandbytes", "xformers"):
        assert part in out
    assert "free" in out and "RAM" in out
    assert "known problems with this combination: none" in out and code == 0


def test_the_transformers_peft_break_is_named_with_its_fix():
    bad = known_problems({"transformers": "5.24.0", "peft": "0.21.2", "diffusers": "0.42.1"})
    assert len(bad) == 1 and "peft" in bad[0].what and "transformers==5.23.0" in bad[0].fix
    assert not known_problems({"transformers": "5.23.0", "peft": "0.21.2", "diffusers": "0.42.1"})
    assert not known_problems({"transformers": "5.24.0", "peft": "0.22.0", "diffusers": "0.42.1"})
    assert known_problems({"opencv-python-headless": "5.0.0"}) and known_problems({"mediapipe": "0.10.32"})


def test_versions_compare_as_numbers_and_lock_differences_are_listed():
    assert version_tuple("2.13.0+cpu") == (2, 13, 0) and version_tuple("5.24.0rc1") == (5, 24, 0)
    assert version_tuple("0.10.21") > version_tuple("0.10.9")
    diff = lock_differences({"torch": "2.13.0", "peft": "0.21.2", "gone": "1.0"},
                            {"torch": "2.13.0+cpu", "peft": "0.20.0"})
    assert diff == {"peft": ("0.21.2", "0.20.0"), "gone": ("1.0", None)}


def test_version_flag(capsys):
    import pytest

    from personae import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and __version__ in capsys.readouterr().out
