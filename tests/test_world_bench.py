"""`personae world bench` (issue #8): prompts, exact scores, training data, regularization images, bad input."""

import numpy as np
import pytest
from PIL import Image

from personae.world.bench import Task, job_for, make_data, summarise, word_for
from personae.world.bench_scores import bench_prompts, score_concept
from personae.world.bench_settings import WorldBench
from personae.world.check import check
from personae.world.scene import BACKGROUNDS, SIZES, render

pytestmark = pytest.mark.slow  # models, training or CLI subprocesses: the full tier only


def test_bench_prompts_ask_for_unseen_backgrounds_and_sizes_only():
    prompts = bench_prompts("star", "white", ["blue", "green"], ["close-up", "medium shot"])
    subject = [p for p in prompts if p.kind == "subject"]
    edit = [p for p in prompts if p.kind == "edit"]
    assert [p.text for p in subject] == [f"a white star on a {b} background" for b in BACKGROUNDS]
    assert [p.seen for p in subject] == [b in ("blue", "green") for b in BACKGROUNDS]
    assert {(p.background, p.size) for p in edit} == {
        (b, s) for b in BACKGROUNDS for s in SIZES if b in ("red", "yellow") or s == "full shot"}
    # a yellow shape never stands on yellow
    assert all(p.background != "yellow" for p in bench_prompts("star", "yellow", ["blue"], ["close-up"]))


def test_scores_are_read_exactly_from_images():
    prompts = bench_prompts("<star>", "white", ["blue", "green"], ["close-up", "medium shot"])

    def draw(shape, wrong_size=False):
        out = []
        for p in prompts:
            size = p.size or "medium shot"
            if wrong_size:
                size = "close-up" if size != "close-up" else "full shot"
            out.append([render(shape, "white", p.background, size, offset=(o, -o)) for o in (-0.5, 0.0, 0.5)])
        return out

    right = score_concept("star", prompts, draw("star"))
    assert right["subject_fidelity"] == 1.0 and right["prompt_fidelity"] == 1.0 and right["subject_on_edit"] == 1.0
    assert right["subject_seen_bg"] == 1.0 == right["subject_unseen_bg"]
    assert right["position_spread_px"] > 0.5 and right["size_entropy_bits"] == 0.0
    circles = score_concept("star", prompts, draw("circle", wrong_size=True))
    assert circles["subject_fidelity"] == 0.0 and circles["prompt_fidelity"] == 0.0


def test_training_images_show_the_concept_on_training_contexts(tmp_path):
    bench = WorldBench()
    captions = make_data(bench, Task("pivotal", "heart", 1), tmp_path)
    assert len(captions) == bench.images == len(list(tmp_path.glob("*.png")))
    seen = set()
    for i, text in enumerate(captions):
        found = check(Image.open(tmp_path / f"{i:02d}.png"))
        assert (found.shape, found.colour) == ("heart", "black")
        assert text == f"a black <heart> on a {found.background} background, {found.size}"
        assert (tmp_path / f"{i:02d}.txt").read_text().strip() == text
        seen.add((found.background, found.size))
    assert seen == {(b, s) for b in bench.train_backgrounds for s in bench.train_sizes}
    # the same draw for every method, only the word differs
    other = make_data(bench, Task("lora", "heart", 1), tmp_path / "lora")
    assert [c.replace("<heart>", "heart") for c in captions] == other  # lora: the shape's own (untrained) word
    assert np.array_equal(np.asarray(Image.open(tmp_path / "00.png")), np.asarray(Image.open(tmp_path / "lora/00.png")))


def test_each_method_gets_an_ordinary_train_job(tmp_path):
    bench = WorldBench()
    for method in bench.methods:
        task = Task(method, "star", 2)
        job = job_for(bench, task, str(tmp_path / "model"), tmp_path / "data", tmp_path / "runs" / task.name, "shape")
        assert job.method == method and job.train.seed == 2 and job.train.resolution == 32
        assert job.output.endswith(task.name) and job.data.path == str(tmp_path / "data")
        if method in ("textual_inversion", "pivotal"):
            assert getattr(job, method).tokens[0].token == "<star>" == word_for(bench, method, "star")
        if job.dreambooth.prior_preservation:
            assert job.dreambooth.class_data_dir == str(tmp_path / "prior")


def test_summary_means_and_prior_change():
    base = {"star": {"prior_after": 0.9}, "heart": {"prior_after": 0.8}}
    runs = [{"method": "lora", "concept": c, "seed": 0, "subject_fidelity": f, "prompt_fidelity": 0.5,
             "subject_on_edit": 0.5, "subject_seen_bg": f, "subject_unseen_bg": f, "prior_after": p, "position_spread_px": 1.0, "size_entropy_bits": 0.0,
             "train_seconds": 10.0} for c, f, p in (("star", 1.0, 0.85), ("heart", 0.5, 0.8))]
    row = summarise(runs, base, ["lora"])[0]
    assert row["runs"] == 2 and row["subject_fidelity"] == pytest.approx(0.75)
    assert row["subject_fidelity_sd"] == pytest.approx(0.25) and row["prior_delta"] == pytest.approx(-2.5)


@pytest.mark.parametrize("change, words", [
    ({"concepts": ["circle"]}, "not a held-out shape"),
    ({"train_backgrounds": ["purple"]}, "purple"),
    ({"methods": ["lora"], "jobs": {}}, "no recipe"),
])
def test_bad_bench_settings_say_what_is_wrong(change, words):
    from personae.config.base import parse_settings
    from personae.errors import UserError

    with pytest.raises(UserError, match=words):
        parse_settings(WorldBench, change, "--set")


def test_regularization_folder_captions_come_from_sidecars(tmp_path):
    """Prior preservation with a kohya-style reg folder: images + .txt, for any method, nothing generated."""
    from personae.config.train import TrainJob
    from personae.training.setup import class_examples

    reg = tmp_path / "reg"
    reg.mkdir()
    for i, text in enumerate(["a red circle on a blue background, close-up", "a green square on a red background, full shot"]):
        render("circle", "red", "blue", "close-up").save(reg / f"r{i}.png")
        (reg / f"r{i}.txt").write_text(text + "\n")
    job = TrainJob(base_model="x", method="lora", data={"path": str(tmp_path)}, output=str(tmp_path / "run"),
                   dreambooth={"prior_preservation": True, "class_data_dir": str(reg), "num_class_images": 2})
    examples = class_examples(None, None, job, tmp_path / "run", (32, 32), lambda e: None)
    assert [e.caption for e in examples] == ["a red circle on a blue background, close-up",
                                             "a green square on a red background, full shot"]
    with pytest.raises(Exception, match="class_prompt"):
        TrainJob(base_model="x", method="lora", data={"path": "d"}, output="o", dreambooth={"prior_preservation": True})


def test_bench_refuses_a_used_folder_and_unknown_settings(tmp_path, capsys):
    from personae.cli.main import main

    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    assert main(["world", "bench", "--out", str(used), "--methods", "lora", "--quiet"]) == 2
    assert "personae did not write" in " ".join(capsys.readouterr().err.split()) and (used / "keep.txt").read_text() == "mine"
    assert main(["world", "bench", "--out", str(tmp_path / "x"), "--concepts", "circle", "--quiet"]) == 2
    assert main(["world", "bench", "--out", str(tmp_path / "x"), "--set", "eval.stepz=3", "--quiet"]) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()


# The real bench run (DreamBooth teaches the held-out star on the shipped model, one seed) is the demo's
# "Teach a star" section; tests/test_cli.py::test_demo_runs_offline_and_writes_an_index checks its numbers and
# files, so the same few-minute run is not repeated here.


def test_dreambooth_on_a_model_with_its_own_tokenizer_exports_a_folder_only(tmp_path):
    """A single-file checkpoint has no tokenizer (readers assume CLIP's 49,408 tokens): for the world model's
    615-token vocabulary it would load with ids past the embedding table, so only the folder is written."""
    from personae.config.train import TrainJob
    from personae.jobs.train import run_training
    from personae.world.model import write_world_model

    model = write_world_model(tmp_path / "world")
    bench = WorldBench()
    make_data(bench, Task("dreambooth", "star", 0), tmp_path / "data")
    job = TrainJob(base_model=str(model), method="dreambooth", data={"path": str(tmp_path / "data")},
                   output=str(tmp_path / "run"), train={"steps": 2, "batch_size": 2, "resolution": 32,
                                                        "validation": {"steps": 2}})
    result = run_training(job)
    assert [(f.format, f.loader) for f in result.exports] == [("diffusers", "folder")]
    assert [c.family for c in result.checks] == ["folder"] and result.checks[0].max_abs_diff <= 1e-4


def test_bench_through_the_cli_writes_its_whole_folder(tmp_path):
    """`personae world bench` as a user runs it, at plumbing size (one method without prior images, 2 steps,
    1 evaluation image per prompt): exit 0, every file of the folder, no .partial left. The real numbers
    (DreamBooth teaching the star) are checked on the demo's run (tests/test_cli.py)."""
    import json

    from personae.cli.main import main

    out = tmp_path / "bench"
    assert main(["world", "bench", "--out", str(out), "--methods", "textual_inversion", "--concepts", "star",
                 "--seeds", "1", "--set", "workers=1", "--set", "images=2", "--set", "prior_images=1",
                 "--set", "eval.seeds_per_prompt=1", "--set", "eval.steps=2", "--set", "eval.prior_samples=16",
                 "--set", "jobs.textual_inversion.train.steps=2", "--quiet"]) == 0
    for name in ("table.md", "table.csv", "results.json", "report.html", "grids/base-star.png",
                 "grids/textual_inversion-star-s0.png", "runs/textual_inversion-star-s0/run.json",
                 "data/textual_inversion-star-s0/00.png"):
        assert (out / name).is_file(), name
    assert not (tmp_path / "bench.partial").exists()
    (run,) = json.loads((out / "results.json").read_text())["runs"]
    assert run["method"] == "textual_inversion" and 0.0 <= run["subject_fidelity"] <= 1.0
    assert "| textual_inversion | 1 |" in (out / "table.md").read_text()
