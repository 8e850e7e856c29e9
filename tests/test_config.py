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
    assert data == {"mixed_precision": "no"}  # read as YAML 1.2 reads it: only true / false are booleans
    assert TrainSection.model_validate(data).mixed_precision == "no"
    scenes = [{"number": 1, "description": "a bus stop"}]
    for written, meant in [("no", "no"), ("yes", "yes"), ("auto", "auto")]:
        board = apply_overrides({"version": 1, "model": "m", "scenes": scenes}, [f"use_shot_tokens={written}"])
        assert parse_settings(StoryboardSettings, board, "s.yaml").use_shot_tokens == meant


def test_yaml_files_read_only_true_and_false_as_booleans_and_1e_4_as_a_number(tmp_path):
    """A compare row labelled `no` (README: `{label: no control, ...}` works, `{label: no}` did not: YAML 1.1 made it
    false and the label check refused a bool); bool settings still take yes / no / on / off."""
    from personae.config.base import load_yaml
    from personae.config.compare import CompareSuite
    from personae.config.train import TrainSection

    suite = tmp_path / "suite.yaml"
    suite.write_text("base_model: m\nvariants:\n  - {label: no}\n  - {label: on, weight: 1e-1}\n  - {label: Off}\n"
                     "seeds: [0]\n", encoding="utf-8")
    data = load_yaml(suite)
    assert [v["label"] for v in data["variants"]] == ["no", "on", "Off"] and data["variants"][1]["weight"] == 0.1
    parsed = parse_settings(CompareSuite, data, str(suite))
    assert [v.label for v in parsed.variants] == ["no", "on", "Off"]
    job = tmp_path / "train.yaml"
    job.write_text("gradient_checkpointing: yes\nlearning_rate: 1e-4\nema: off\nseed: 3\n"
                   "mixed_precision: no\n", encoding="utf-8")
    data = load_yaml(job)
    assert data["learning_rate"] == 1e-4 and isinstance(data["learning_rate"], float) and data["seed"] == 3
    section = TrainSection.model_validate(data)
    assert section.gradient_checkpointing is True and section.ema is False
    assert section.mixed_precision == "no" and section.learning_rate == 1e-4
    assert load_yaml(_write(tmp_path / "b.yaml", "a: true\nb: False\nc: 1.5\nd: 0x10\ne: 1_000\n")) == \
        {"a": True, "b": False, "c": 1.5, "d": 16, "e": 1000}


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path
