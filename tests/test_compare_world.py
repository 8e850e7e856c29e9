"""`metrics: {world: ...}` in compare suites (issue #20 part 3): the shapes world's exact checker scores each image
against what its prompt asks; on known images, in the suite's validation, and through `personae compare` on the
shipped world model (report.html, metrics.json, metrics.csv and the printed ranking carry the world columns)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from personae.errors import UserError
from personae.evaluation.metric import Sample
from personae.evaluation.world_metric import check_world_suite, parse_request, rank_variants, world_metrics
from personae.world.scene import render

SUBJECT_CU = "a white {token} on a blue background, close-up"
SUBJECT_ANY = "a white {token} on a red background"
PRIOR = "a red circle on a blue background, close-up"


def sample(image, template, token="star", index=0):
    prompt = " ".join(template.replace("{token}", token).split())
    return Sample(image, "v", prompt, index, 0, " ".join(template.replace("{token}", "").split()), template)


def scores(samples, subject="star"):
    from personae.config.compare import WorldMetricSettings

    return {m.name: m.score(samples, []) for m in world_metrics(WorldMetricSettings(subject=subject))}


def test_world_metric_on_images_the_generator_drew():
    """Each column reads what its prompt asks, and only the prompts it is about (None elsewhere)."""
    cases = [
        (render("star", "white", "blue", "close-up"), SUBJECT_CU, (1.0, 1.0, None)),  # as asked
        (render("star", "red", "blue", "close-up"), SUBJECT_CU, (1.0, 0.0, None)),  # wrong colour
        (render("star", "white", "green", "close-up"), SUBJECT_CU, (1.0, 0.0, None)),  # wrong background
        (render("star", "white", "blue", "medium shot"), SUBJECT_CU, (1.0, 0.0, None)),  # wrong size
        (render("circle", "white", "blue", "close-up"), SUBJECT_CU, (0.0, 1.0, None)),  # not the taught shape
        (render("star", "white", "red", "medium shot"), SUBJECT_ANY, (1.0, 1.0, None)),  # no size asked: any size
        (render("circle", "red", "blue", "close-up"), PRIOR, (None, None, 1.0)),  # the prior kept
        (render("square", "red", "blue", "close-up"), PRIOR, (None, None, 0.0)),  # the prior lost (shape)
        (render("circle", "red", "blue", "full shot"), PRIOR, (None, None, 0.0)),  # the prior lost (size)
    ]
    got = scores([sample(image, template) for image, template, _ in cases])
    for i, (_, template, (subject, prompt, prior)) in enumerate(cases):
        assert (got["world_subject"][i], got["world_prompt"][i], got["world_prior"][i]) == (subject, prompt, prior), \
            (i, template)


def test_the_token_may_be_any_word_and_the_subject_any_shape():
    """"sks" or "<star>" stand where the shape's word stands; the subject setting says which shape that is."""
    heart = render("heart", "black", "yellow", "close-up")
    got = scores([sample(heart, "a black {token} on a yellow background", "sks"),
                  sample(heart, "a black {token} on a yellow background", "<heart>")], subject="heart")
    assert got["world_subject"] == [1.0, 1.0] and got["world_prompt"] == [1.0, 1.0]
    assert parse_request("A white sks on a red background, full shot").size == "full shot"
    assert parse_request("a white sks on a red background").size is None


def test_ranking_orders_by_subject_then_prompt_then_prior():
    table = [{"label": "a", "world_subject": 0.5, "world_prompt": 0.9, "world_prior": 1.0},
             {"label": "b", "world_subject": 0.8, "world_prompt": 0.5, "world_prior": 0.5},
             {"label": "c", "world_subject": 0.5, "world_prompt": 1.0, "world_prior": 0.1},
             {"label": "d", "world_subject": None, "world_prompt": None, "world_prior": 1.0}]
    assert [r["variant"] for r in rank_variants(table)] == ["b", "c", "a", "d"]


def test_suite_settings_and_their_errors():
    from pydantic import ValidationError

    from personae.config.compare import CompareSuite

    suite = CompareSuite.model_validate({"base_model": "m", "metrics": {"world": "star"}})
    assert suite.metrics.world.subject == "star" and CompareSuite(base_model="m").metrics.world is None
    with pytest.raises(ValidationError, match="not a shape of the shapes world"):
        CompareSuite.model_validate({"base_model": "m", "metrics": {"world": {"subject": "hexagon"}}})
    settings = suite.metrics.world
    with pytest.raises(UserError, match="prompt 2 .* is not a shapes-world prompt"):
        check_world_suite(settings, [SUBJECT_CU, "a photo of {token} {class}"], "star", "dog", {}, None, None)
    with pytest.raises(UserError, match="prior prompt, but 'dog' is not a shape"):
        check_world_suite(settings, ["a red {class} on a blue background"], "star", "dog", {}, None, None)
    with pytest.raises(UserError, match="64x64 images"):
        check_world_suite(settings, [SUBJECT_CU], "star", "", {}, 64, 64)


def test_a_model_that_is_not_a_world_model_is_refused(tiny_model, shipped_world):
    from personae.config.compare import WorldMetricSettings

    settings = WorldMetricSettings(subject="star")
    check_world_suite(settings, [SUBJECT_CU, PRIOR], "star", "", {"base": str(shipped_world)}, None, None)
    with pytest.raises(UserError, match='variant "tiny" uses .* not a shapes-world model .*64 px'):
        check_world_suite(settings, [SUBJECT_CU], "star", "", {"base": str(shipped_world), "tiny": str(tiny_model[0])},
                          None, None)


@pytest.fixture(scope="module")
def shipped_world(tmp_path_factory):
    from personae.world.model import write_world_model

    return write_world_model(tmp_path_factory.mktemp("world") / "world")


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "personae", *map(str, args)], capture_output=True, text=True, cwd=cwd)


SUITE = """\
version: 1
base_model: ./world
variants:
  - {label: base}
  - {label: base cfg 2, cfg: 2}
prompts: ["a white {token} on a blue background, close-up", "a white {token} on a red background",
          "a red circle on a blue background, close-up", "a blue square on a yellow background, medium shot"]
token: star
seeds: [0, 1]
references: ./stars
metrics: {world: {subject: star}, clip: null, dino: null}
"""


def test_compare_with_the_world_metric_through_the_cli(shipped_world, tmp_path):
    """The shipped world model keeps its prior (the checker reads the ordinary prompts right), never draws the
    untaught star, and every output names the world columns: metrics.json per variant, prompt and image, the
    ranking, metrics.csv, report.html, and the ranking printed."""
    (tmp_path / "world").symlink_to(shipped_world)
    (tmp_path / "stars").mkdir()
    for i, background in enumerate(["blue", "green"]):
        render("star", "white", background, "close-up").save(tmp_path / "stars" / f"{i:02d}.png")
    (tmp_path / "suite.yaml").write_text(SUITE)
    r = cli("compare", "suite.yaml", "--out", "out", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "ranking (world checker" in r.stdout and "1. base" in r.stdout
    result = json.loads((tmp_path / "out/metrics.json").read_text())
    world = ["world_subject", "world_prompt", "world_prior"]
    assert result["metrics"] == ["pixel", "ssim", "diversity"] + world
    base = result["variants"][0]
    assert base["label"] == "base" and base["world_subject"] == 0.0  # the untaught word draws no star
    assert base["world_prior"] >= 0.75  # the checker reads the base model's ordinary pictures right
    assert 0.0 <= base["world_prompt"] <= 1.0 and base["pixel"] is not None and base["ssim"] is not None
    assert [r["variant"] for r in result["ranking"]] and {r["variant"] for r in result["ranking"]} == {"base",
                                                                                                       "base cfg 2"}
    per_prompt = [p for p in result["prompts"] if p["variant"] == "base"]
    assert [p["images"] for p in per_prompt] == [2, 2, 2, 2]
    assert per_prompt[0]["prompt"] == "a white star on a blue background, close-up"
    assert per_prompt[0]["world_prior"] is None and per_prompt[2]["world_subject"] is None
    assert per_prompt[2]["world_prior"] is not None
    image = result["images"][0]
    assert set(world) <= set(image["scores"]) and image["scores"]["world_prior"] is None
    assert result["images"][4]["scores"]["world_subject"] is None and result["images"][4]["prompt_index"] == 2
    assert (tmp_path / "out/metrics.csv").read_text().splitlines()[0].endswith("world_subject,world_prompt,world_prior")
    html = (tmp_path / "out/report.html").read_text()
    for text in ["world: subject fidelity", "world: prompt fidelity", "world: prior", "id='ranking'",
                 "id='per-prompt'", "SSIM", "pixel sim."]:
        assert text in html, text


def test_compare_refuses_the_world_metric_on_another_model(tiny_model, tmp_path):
    (tmp_path / "suite.yaml").write_text(f"version: 1\nbase_model: {tiny_model[0]}\n" + """\
prompts: ["a white {token} on a blue background"]
token: star
metrics: {world: star, clip: null, dino: null}
""")
    r = cli("compare", "suite.yaml", "--out", "out", "--quiet", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "not a shapes-world model (it draws 64 px images" in " ".join(r.stderr.split())
    assert not (tmp_path / "out").exists()
