"""data.subsets: several folders trained as one set, each with its own repeats and caption (kohya's dataset_config
subsets), and data.sidecars: verbatim (captions as kohya reads them)."""

import numpy as np
import pytest
import yaml
from PIL import Image

from personae.config.prepare import PrepareSettings
from personae.config.train import TrainJob
from personae.data.prepare import prepare_dataset
from personae.data.stats import dataset_stats
from personae.errors import UserError
from personae.jobs.train import load_job


def _images(folder, count, captions=()):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(count)
    for i in range(count):
        Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(folder / f"p{i}.png")
        if i < len(captions):
            (folder / f"p{i}.txt").write_text(captions[i])
    return folder


def _job(**data) -> dict:
    return {"version": 1, "base_model": "m", "method": "lora", "output": "runs/x", "data": data,
            "train": {"resolution": 64}}


@pytest.mark.parametrize("data, words", [
    ({}, "data needs path"),
    ({"path": "a", "subsets": [{"path": "b"}]}, "and not both"),
    ({"subsets": [{"path": "b", "repeats": 0}]}, "greater than or equal to 1"),
])
def test_data_needs_one_path_or_subsets(data, words):
    from personae.config.base import parse_settings

    with pytest.raises(UserError, match=words):
        parse_settings(TrainJob, _job(**data), "job.yaml")


def test_subset_paths_are_read_relative_to_the_job_file_and_never_hold_the_run(tmp_path):
    (tmp_path / "jobs").mkdir()
    path = tmp_path / "jobs" / "job.yaml"
    path.write_text(yaml.safe_dump(_job(subsets=[{"path": "../me", "repeats": 3}, {"path": str(tmp_path / "st")}],
                                        caption="sks man")))
    job = load_job(path)
    assert [s.path for s in job.data.subsets] == [str(tmp_path / "me"), str(tmp_path / "st")]
    assert [s.caption for s in job.data.sources()] == ["sks man", "sks man"]  # data.caption where none is given
    from personae.jobs.train import _refuse_overlaps

    with pytest.raises(UserError, match=r"is inside data.subsets\[1\].path"):
        _refuse_overlaps(job, tmp_path / "st" / "run")  # a run folder inside a subset's folder


def test_subsets_load_as_one_set_with_their_own_repeats_and_captions(tmp_path):
    """A prepared set and two raw folders: the prepared one as it is, each raw folder prepared into the run,
    verbatim sidecars with the subset's caption for images without one; repeats replace the folder's own."""
    from personae.training.setup import load_example_groups, load_examples

    prepare_dataset(_images(tmp_path / "src", 1, ["from a set"]), tmp_path / "set", PrepareSettings(resolution=64))
    _images(tmp_path / "10_sks man", 2, ["sks man, smiling"])
    _images(tmp_path / "style", 1)
    job = TrainJob(**_job(subsets=[{"path": str(tmp_path / "set"), "repeats": 4},
                                   {"path": str(tmp_path / "10_sks man")},
                                   {"path": str(tmp_path / "style"), "repeats": 2, "caption": "pencil drawing"}],
                          sidecars="verbatim"))
    groups = load_example_groups(job, tmp_path / "run", lambda e: None)
    assert [name for name, _ in groups] == ["set", "10_sks man", "style"]
    assert [[(e.caption, e.repeats) for e in g] for _, g in groups] == [
        [("from a set", 4)], [("sks man, smiling", 1), ("", 1)], [("pencil drawing", 2)]]
    # the folder's own 10_ repeats count only inside a folder prepare walks; a subset's folder is its top
    assert (tmp_path / "run/prepared/2/manifest.jsonl").is_file() and (tmp_path / "run/prepared/3").is_dir()
    assert len(load_examples(job, tmp_path / "run", lambda e: None, groups)) == 4
    stats = dataset_stats([e for _, g in groups for e in g], "set", ["sks"], 0, groups)
    fields = stats.kohya_fields()
    assert stats.per_epoch == 4 + 2 + 2 and fields["ss_num_train_images"] == "8"
    assert '"10_sks man": {"n_repeats": 1, "img_count": 2}' in fields["ss_dataset_dirs"]


def test_verbatim_sidecars_keep_the_text_as_written(tmp_path):
    """prepare --sidecars verbatim: a .txt is the caption as written (underscores, the folder's words not put
    before it); an image without one gets the template ({folder}: a 10_sks man folder's words)."""
    src = tmp_path / "src"
    _images(src / "10_sks man", 2, ["sks man, long_hair"])
    settings = PrepareSettings(resolution=64, sidecars="verbatim", template="{folder}", captioner="none")
    result = prepare_dataset(src, tmp_path / "out", settings)
    assert sorted((e.caption, e.repeats) for e in result.entries) == [("sks man", 10), ("sks man, long_hair", 10)]
    templated = prepare_dataset(src, tmp_path / "out2", PrepareSettings(resolution=64))
    assert "sks man, sks man, long hair" in [e.caption for e in templated.entries]  # the template's way, unchanged


def test_the_caption_extension_picks_which_caption_file_is_read(tmp_path):
    """kohya reads only the caption_extension's files: x.caption when it says .caption, even beside an x.txt."""
    src = _images(tmp_path / "src", 2, ["tags from a tagger"])
    (src / "p0.caption").write_text("a man in a hat")
    (src / "p1.caption").write_text("a man on a bike")
    read = {ext: sorted(e.caption for e in prepare_dataset(src, tmp_path / ext.strip("."), PrepareSettings(
        resolution=64, sidecars="verbatim", template="", captioner="none", caption_extension=ext)).entries)
        for ext in ("auto", ".txt", ".caption")}
    assert read == {"auto": ["a man on a bike", "tags from a tagger"], ".txt": ["", "tags from a tagger"],
                    ".caption": ["a man in a hat", "a man on a bike"]}


def test_sets_prepared_before_the_caption_settings_are_still_reused(tmp_path):
    """The hash an earlier personae (before caption_extension and sidecars) stored for these settings: with both at
    their defaults it is unchanged, so a re-run reuses those images instead of preparing (and captioning) again."""
    from personae.data.prepare import _settings_hash

    assert _settings_hash(PrepareSettings()) == "a3d9ac585d4c1dda"
    assert _settings_hash(PrepareSettings(resolution=64, crop="none")) == "2338db4bbc041c78"
    assert _settings_hash(PrepareSettings(sidecars="verbatim")) != "a3d9ac585d4c1dda"
