"""Captions are right the first time (issue #17): learned tokens must be in the captions, edited captions train,
junk captions are flagged, and `personae captions` edits them in bulk. No model is needed here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from personae.config.prepare import PrepareSettings
from personae.config.train import TrainJob
from personae.data.prepare import prepare_dataset
from personae.data.samples import write_sample_subject
from personae.errors import UserError


def _ti_job(tmp_path: Path, data: Path, token: str, method: str = "textual_inversion") -> TrainJob:
    return TrainJob(base_model=str(tmp_path / "no-model-needed"), method=method, data={"path": str(data)},
                    output=str(tmp_path / "run"), **{method: {"tokens": [{"token": token, "init_word": "woman"}]}})


@pytest.fixture
def subject(tmp_path):
    """Six star images whose sidecar captions say "a photo of sks star on a ... background"."""
    src = tmp_path / "src"
    write_sample_subject(src, count=6, size=64)
    return src


# --- item 1: a learned token in no caption stops the run before it starts ---

@pytest.mark.parametrize("method", ["textual_inversion", "pivotal"])
@pytest.mark.parametrize("prepared", [True, False], ids=["prepared-set", "raw-folder"])
def test_a_token_in_no_caption_stops_training_before_the_run_folder_exists(subject, tmp_path, method, prepared):
    from personae.jobs.train import run_training

    data = subject
    if prepared:
        data = tmp_path / "prepared"
        prepare_dataset(subject, data, PrepareSettings(resolution=64, trigger="sks"))
    job = _ti_job(tmp_path, data, "<me>", method)
    with pytest.raises(UserError) as err:
        run_training(job)
    text = str(err.value)
    assert '"<me>"' in text and "6 of 6" in text and "sks star" in text  # the token, the count, an example
    assert "--trigger <me>" in text and "{token}" in text and "--append" in text  # the fixes
    assert not (tmp_path / "run").exists()


def test_a_token_in_the_captions_passes_the_check(subject, tmp_path):
    from personae.training.setup import check_tokens, preflight

    data = tmp_path / "prepared"
    prepare_dataset(subject, data, PrepareSettings(resolution=64, trigger="<me>"))
    job = _ti_job(tmp_path, data, "<me>")
    with pytest.raises(UserError) as err:  # the next check: the (absent) base model
        preflight(job)
    assert "<me>" not in str(err.value) and "no-model-needed" in str(err.value)
    check_tokens(job, ["a photo of <me> star", "a star"], data)  # one caption with it is enough
