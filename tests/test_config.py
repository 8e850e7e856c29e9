import pytest

from personae.config.base import Strict, apply_overrides, parse_settings
from personae.config.generate import GenerateSettings
from personae.errors import UserError


def test_unknown_key_names_the_nearest_valid_one():
    with pytest.raises(UserError) as err:
        parse_settings(GenerateSettings, {"model": "m", "prompt": "p", "stpes": 4}, "job.yaml")
    assert 'unknown key "stpes"' in str(err.value) and 'did you mean "steps"' in str(err.value)


def test_nested_unknown_key_and_bad_value():
    with pytest.raises(UserError) as err:
        parse_settings(GenerateSettings, {"model": "m", "prompt": "p", "loras": [{"path": "a", "wieght": 1}]})
    assert '"loras.0.wieght"' in str(err.value) and 'did you mean "weight"' in str(err.value)
    with pytest.raises(UserError, match="multiple of 8"):
        parse_settings(GenerateSettings, {"model": "m", "prompt": "p", "width": 65})


def test_version_migrations_run_in_order_and_newer_versions_are_refused():
    class Job(Strict):
        VERSION = 3
        MIGRATIONS = {1: lambda d: {"b": d.pop("a"), **d}, 2: lambda d: {**d, "c": d["b"] * 2}}
        version: int = 3
        b: int
        c: int

    job = parse_settings(Job, {"version": 1, "a": 5})
    assert (job.version, job.b, job.c) == (3, 5, 10)
    with pytest.raises(UserError, match="newer than this personae"):
        parse_settings(Job, {"version": 4, "b": 1, "c": 1})


def test_set_overrides_parse_values_as_yaml():
    data = apply_overrides({"train": {"steps": 10}}, ["train.steps=20", "train.lr=1e-4", "method=lora"])
    assert data == {"train": {"steps": 20, "lr": 1e-4}, "method": "lora"}


def test_yaml_yes_and_no_mean_the_words_they_spell():
    """YAML 1.1 reads a bare `no` as false: `--set train.mixed_precision=no` (and `mixed_precision: no` in a job
    file) was refused as "Input should be 'no', 'fp16' or 'bf16'"."""
    from personae.config.storyboard import StoryboardSettings
    from personae.config.train import TrainSection

    data = apply_overrides({}, ["mixed_precision=no"])
    assert data == {"mixed_precision": False}
    assert TrainSection.model_validate(data).mixed_precision == "no"
    scenes = [{"number": 1, "description": "a bus stop"}]
    for written, meant in [("no", "no"), ("yes", "yes"), ("auto", "auto")]:
        board = apply_overrides({"version": 1, "model": "m", "scenes": scenes}, [f"use_shot_tokens={written}"])
        assert parse_settings(StoryboardSettings, board, "s.yaml").use_shot_tokens == meant
