"""`personae compare`: the issue's minimal suite, grids, metrics, determinism, run folders, sweeps, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image
from train_helpers import TINY_LORA, write_job

from personae.config.generate import GenerateSettings
from personae.config.prepare import PrepareSettings
from personae.data.prepare import prepare_dataset
from personae.data.samples import write_sample_subject
from personae.inference.txt2img import txt2img
from personae.media.png import read_png_text

pytestmark = pytest.mark.slow  # models, training or CLI subprocesses: the full tier only


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "personae", *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def project(tiny_model, tmp_path_factory):
    """A folder laid out as the issue's suite expects: ./tiny, ./prepared, ./runs/demo (a real short LoRA run)."""
    from personae.jobs.train import load_job, run_training

    root = tmp_path_factory.mktemp("compare")
    (root / "tiny").symlink_to(tiny_model[0])
    write_sample_subject(root / "photos", count=4)
    prepare_dataset(root / "photos", root / "prepared", PrepareSettings(resolution=64))
    job = write_job(root, base_model=str(root / "tiny"), method="lora", data=root / "prepared",
                    output=root / "runs/demo", trigger="sks", lora=TINY_LORA,
                    train={"steps": 4, "batch_size": 2, "learning_rate": 3e-3, "save_every": 2, "keep_last": 2,
                           "verify_exports": False, "validation": {"steps": 2}})
    run_training(load_job(job), overwrite=True)
    return root


SUITE = """\
version: 1
base_model: ./tiny
variants:
  - {label: base}
  - {label: lora-0.5, lora: ./runs/demo/lora.safetensors, weight: 0.5}
  - {label: lora-1.0, lora: ./runs/demo/lora.safetensors, weight: 1.0}
prompts: ["a photo of {token} {class}", "{token} {class} on the beach", "a painting of {token} {class}"]
token: sks
class: dog
seeds: [0, 1]
steps: 4
width: 64
height: 64
references: ./prepared
"""


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def compared(project):
    (project / "suite.yaml").write_text(SUITE)
    r = cli("compare", "suite.yaml", "--out", "out", "--quiet", cwd=project)
    assert r.returncode == 0, r.stderr
    return project / "out"


def test_minimal_suite_as_written(compared, project):
    images = sorted((compared / "images").rglob("*.png"))
    assert len(images) == 18
    assert {p.parent.name for p in images} == {"base", "lora-0.5", "lora-1.0"}
    text = read_png_text(images[0])
    assert "sks dog" in text["parameters"] and "Steps: 4" in text["parameters"]
    assert "<lora:lora:0.5>" in read_png_text(compared / "images/lora-0.5/p00-s0.png")["parameters"]
    # one grid per seed: 3 variant rows x 3 prompt columns, big enough to read labels
    grids = sorted((compared / "grids").glob("*.png"))
    assert [g.name for g in grids] == ["seed-0.png", "seed-1.png"]
    assert Image.open(grids[0]).size[0] >= 3 * 128 + 150 and Image.open(grids[0]).size[1] >= 3 * 128
    # metrics: one row per variant; offline, DINO / CLIP are skipped with the reason
    rows = (compared / "metrics.csv").read_text().splitlines()
    assert rows[0] == "variant,settings,images,pixel,ssim,diversity"
    assert [r.split(",")[0] for r in rows[1:]] == ["base", "lora-0.5", "lora-1.0"]
    data = json.loads((compared / "metrics.json").read_text())
    assert set(data["skipped"]) == {"dino", "clip_i", "clip_t"}
    assert "HF_HUB_OFFLINE" in data["skipped"]["dino"]
    assert len(data["images"]) == 18 and all(0 <= i["scores"]["pixel"] <= 1 for i in data["images"])
    report = (compared / "report.html").read_text()
    assert "Skipped metrics" in report and report.count("<tr>") >= 3
    assert not (project / "out.partial").exists()


def test_rows_are_what_they_say(compared, tiny_model, tiny_session, project):
    """The base row equals plain generate; weight 0.5 lies between base and weight 1.0."""
    plain = txt2img(GenerateSettings(model=str(tiny_model[0]), prompt="a photo of sks dog", steps=4, seed=0,
                                     width=64, height=64), tiny_session)[0]
    base = pixels(compared / "images/base/p00-s0.png")
    # equal up to float summation order (the CLI ran in another process, possibly with another thread count)
    assert np.abs(base - np.asarray(plain.image, dtype=np.int16)).max() <= 2
    half, full = pixels(compared / "images/lora-0.5/p00-s0.png"), pixels(compared / "images/lora-1.0/p00-s0.png")
    assert 0 < np.abs(half - base).mean() < np.abs(full - base).mean()


def test_same_suite_twice_is_identical(compared, project):
    r = cli("compare", "suite.yaml", "--out", "again", "--quiet", cwd=project)
    assert r.returncode == 0, r.stderr
    for first in sorted((compared / "images").rglob("*.png")):
        second = project / "again" / first.relative_to(compared)
        assert first.read_bytes() == second.read_bytes()
    assert (compared / "metrics.json").read_text() == (project / "again/metrics.json").read_text()
    assert (compared / "metrics.csv").read_text() == (project / "again/metrics.csv").read_text()


def test_run_folder_and_sweep(project, tmp_path):
    from personae.jobs.compare import run_compare
    from personae.jobs.compare_plan import load_suite

    suite = yaml.safe_load(SUITE)
    suite.update(variants=[{"label": "demo", "run": "./runs/demo"}], sweep={"cfg": [2, 7]}, seeds=[0],
                 prompts=["a photo of {token} {class}"])
    (project / "sweep.yaml").write_text(yaml.safe_dump(suite))
    result = run_compare(load_suite(project / "sweep.yaml"), tmp_path / "out")
    labels = [v["label"] for v in result["variants"]]
    # the last step's checkpoint holds no separate export: the run's final files are that step
    assert labels == ["demo step 2 · cfg 2", "demo step 2 · cfg 7", "demo final · cfg 2", "demo final · cfg 7"]
    final = pixels(tmp_path / "out/images/demo-final-cfg-7/p00-s0.png")
    assert not np.array_equal(final, pixels(tmp_path / "out/images/demo-step-2-cfg-7/p00-s0.png"))
    assert not np.array_equal(final, pixels(tmp_path / "out/images/demo-final-cfg-2/p00-s0.png"))
    assert "CFG scale: 2" in read_png_text(tmp_path / "out/images/demo-final-cfg-2/p00-s0.png")["parameters"]
    assert (tmp_path / "out/runs/demo/loss.png").is_file()
    assert "runs/demo/loss.png" in (tmp_path / "out/report.html").read_text()


def test_builtin_prompt_set(project, tmp_path):
    from personae.evaluation.suites import PROMPT_SETS
    from personae.jobs.compare_plan import load_suite

    (project / "builtin.yaml").write_text("version: 1\nbase_model: ./tiny\nclass: dog\nprompt_set: live\n")
    suite = load_suite(project / "builtin.yaml")
    assert suite.prompts == [] and suite.class_word == "dog"
    assert len(PROMPT_SETS["live"]) == 25 and len(PROMPT_SETS["object"]) == 20
    assert all("{token} {class}" in p for s in PROMPT_SETS.values() for p in s)


@pytest.mark.parametrize("text, expected", [
    ("version: 1\nbase_model: ./tiny\nprompt: [x]\n", 'unknown key "prompt" (did you mean "prompts"?)'),
    ("version: 1\nbase_model: ./tiny\nsweep: {seed: [1]}\n", 'cannot sweep "seed"'),
    ("version: 1\nbase_model: ./tiny\nvariants: [{label: a}, {label: a}]\n", "repeated: ['a']"),
    ("version: 1\nbase_model: ./tiny\nvariants: [{label: r, run: ./prepared}]\n", "not a personae training run"),
    ("version: 1\nbase_model: ./tiny\nvariants: [{label: r, run: ./runs/demo, checkpoints: [3]}]\n",
     "no checkpoint at step(s) [3]"),
    ("version: 1\nbase_model: ./tiny\nreferences: ./nowhere\n", "is not a folder"),
])
def test_bad_suites_fail_clearly(project, text, expected):
    (project / "bad.yaml").write_text(text)
    r = cli("compare", "bad.yaml", "--out", "bad-out", cwd=project)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert expected in " ".join(r.stderr.split())
    assert not (project / "bad-out").exists() and not (project / "bad-out.partial").exists()


def test_report_opens_in_a_browser_with_every_image(compared):
    """Headless Debian chromium through Playwright: every image loads, the table sorts by a clicked column."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                    args=["--no-sandbox", "--disable-background-networking", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto((compared / "report.html").as_uri())
            page.wait_for_load_state("load")
            images = page.eval_on_selector_all("img", "els => els.map(e => [e.getAttribute('src'), e.complete, e.naturalWidth])")
            assert len(images) >= 18 + 2  # every generated image and both grids
            broken = [src for src, complete, width in images if not complete or width == 0]
            assert broken == []
            column = "pixel sim. ↑"
            values = lambda: page.eval_on_selector_all(
                "#metrics tbody tr", "rows => rows.map(r => parseFloat(r.cells[3].dataset.value))")
            page.click(f"#metrics th:has-text('{column}')")
            assert values() == sorted(values(), reverse=True)
            page.click(f"#metrics th:has-text('{column}')")
            assert values() == sorted(values())
        finally:
            browser.close()


def test_embedding_and_checkpoint_variants(project, tiny_model, tmp_path):
    """An embedding row fills {token} with its token and gets a session of its own; a checkpoint row loads that file."""
    import torch
    from safetensors.torch import save_file

    from personae.jobs.compare import run_compare
    from personae.jobs.compare_plan import load_suite

    torch.manual_seed(0)
    save_file({"emb_params": torch.randn(2, 32)}, str(tmp_path / "shiny.safetensors"))  # A1111 layout, 2 vectors
    suite = yaml.safe_load(SUITE)
    suite.update(seeds=[0], prompts=["a photo of {token} {class}"], variants=[
        {"label": "base"}, {"label": "ti", "embedding": str(tmp_path / "shiny.safetensors")},
        {"label": "single", "model": str(tiny_model[1])}])
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    (tmp_path / "prepared").symlink_to(project / "prepared")
    (tmp_path / "tiny").symlink_to(tiny_model[0])
    result = run_compare(load_suite(tmp_path / "suite.yaml"), tmp_path / "out")
    prompts = {i["variant"]: i["prompt"] for i in result["images"]}
    assert prompts == {"base": "a photo of sks dog", "ti": "a photo of shiny dog", "single": "a photo of sks dog"}
    assert 'TI hashes: "shiny: ' in read_png_text(tmp_path / "out/images/ti/p00-s0.png")["parameters"]
    base = pixels(tmp_path / "out/images/base/p00-s0.png")
    assert np.array_equal(base, pixels(tmp_path / "out/images/single/p00-s0.png"))  # same weights, other file
    assert not np.array_equal(base, pixels(tmp_path / "out/images/ti/p00-s0.png"))


# --- ControlNet variants, long prompts, captions (#17 item 10) -------------------------------------------------

LONG_PROMPT = ("a highly detailed photograph of {token} {class} sitting in a sunlit meadow full of wild flowers, "
               "soft morning light, shallow depth of field, bokeh, golden hour, shot on a medium format camera with "
               "an 80mm lens, award winning composition, ultra sharp focus on the eyes, gentle breeze in the fur")


@pytest.fixture(scope="module")
def controlnet(project):
    """The tiny ControlNet (perturbed, so control acts) and a drawing to take canny edges from, inside the project."""
    from PIL import ImageDraw

    from personae.models.controlnet import write_tiny_controlnet

    write_tiny_controlnet(project / "tiny-controlnet", base=project / "tiny", seed=0)
    shapes = Image.new("RGB", (64, 64), "black")
    draw = ImageDraw.Draw(shapes)
    draw.rectangle((8, 8, 40, 30), fill="white")
    draw.ellipse((24, 28, 58, 60), fill=(200, 200, 200))
    shapes.save(project / "shapes.png")
    return project / "tiny-controlnet"


CONTROL_SUITE = """\
version: 1
base_model: ./tiny
variants:
  - {label: no control}
  - {label: canny 0, controls: [{type: canny, image: shapes.png, weight: 0.0, model: ./tiny-controlnet}]}
  - {label: canny 1, controls: [{type: canny, image: shapes.png, weight: 1.0, model: ./tiny-controlnet}]}
  - label: canny 1 first half
    controls: [{type: canny, image: shapes.png, model: ./tiny-controlnet}]
    control_end: 0.2
prompts: ["a photo of {token} {class}", "%s"]
token: sks
class: dog
seeds: [0]
steps: 4
width: 64
height: 64
metrics: {clip: null, dino: null}
""" % LONG_PROMPT


@pytest.fixture(scope="module")
def control_compared(project, controlnet):
    (project / "control.yaml").write_text(CONTROL_SUITE)
    r = cli("compare", "control.yaml", "--out", "control-out", "--quiet", cwd=project)
    assert r.returncode == 0, r.stderr
    return project / "control-out"


def test_controlnet_variants_in_one_suite(control_compared):
    """Weight 0 gives exactly the no-control image (the ControlNet's residuals are scaled to zero before they are
    added); weight 1 changes it; a shorter guidance window changes it less (end 0.2 of 4 steps: A1111's window
    controls the first two, whose sampling percents are 0 and 0); the PNGs carry the units."""
    image = lambda label: pixels(control_compared / "images" / label / "p00-s0.png")
    none, zero, one, half = image("no-control"), image("canny-0"), image("canny-1"), image("canny-1-first-half")
    assert np.array_equal(zero, none)
    assert np.abs(one - none).mean() > 1.0
    assert 0 < np.abs(half - none).mean() < np.abs(one - none).mean()
    text = read_png_text(control_compared / "images/canny-1-first-half/p00-s0.png")["parameters"]
    assert 'ControlNet 0: "Module: canny, Model: tiny-controlnet' in text and "Guidance End: 0.2" in text
    assert "ControlNet" not in read_png_text(control_compared / "images/no-control/p00-s0.png")["parameters"]


def test_report_names_each_unit_and_shows_the_control_map_once(control_compared, project):
    from personae.config.addons import ControlRef
    from personae.inference.controlnet import make_map

    # one map for three units that share image and type; it is the map generate makes (A1111's: at Processor Res)
    assert [p.name for p in (control_compared / "controls").iterdir()] == ["canny-shapes.png"]
    unit = ControlRef(type="canny", image=str(project / "shapes.png"))
    expected = make_map(unit, Image.open(project / "shapes.png").convert("RGB"), unit.processor_res)
    assert np.array_equal(pixels(control_compared / "controls/canny-shapes.png"), np.asarray(expected, dtype=np.int16))
    report = (control_compared / "report.html").read_text()
    assert "<h2>ControlNet units</h2>" in report and report.count("src='controls/canny-shapes.png'") >= 3 + 3
    for unit in ("canny weight 0 model tiny-controlnet", "canny weight 1 model tiny-controlnet",
                 "canny weight 1 model tiny-controlnet steps 0-0.2"):
        assert unit in report
    assert "<td>no control</td><td>no ControlNet</td>" in report
    settings = {r.split(",")[0]: r for r in (control_compared / "metrics.csv").read_text().splitlines()[1:]}
    assert "control canny weight 0 model tiny-controlnet" in settings["canny 0"]
    assert "control" not in settings["no control"].split(",", 1)[1]
    variants = {v["label"]: v for v in json.loads((control_compared / "metrics.json").read_text())["variants"]}
    assert variants["canny 1 first half"]["controls"][0]["end"] == 0.2 and "controls" not in variants["no control"]


def test_long_prompt_shown_whole_in_grid_and_report(control_compared):
    from personae.media.grid import LINE, wrapped

    long_prompt = LONG_PROMPT.format(token="sks", **{"class": "dog"})
    lines = wrapped(long_prompt, 128 - 8)
    assert " ".join(lines) == long_prompt and len(lines) >= 10  # wrapped, nothing cut
    grid = Image.open(control_compared / "grids/seed-0.png")
    assert grid.height >= 24 + len(lines) * LINE + 4 * (128 + 4)  # the header grew to every line
    report = (control_compared / "report.html").read_text()
    # A1111-style captions: the prompt (whole), seed and variant under every image
    assert report.count(f"<span class='prompt'>{long_prompt}</span><br>seed 0, ") == 4
    assert "<span class='prompt'>a photo of sks dog</span><br>seed 0, canny 1 first half" in report


def test_grid_headers_wrap_and_grow():
    from personae.media.grid import labelled_grid, wrapped

    cells = [[Image.new("RGB", (64, 64), "gray")] * 2] * 2
    short = labelled_grid(cells, ["a", "b"], ["short", "short"], title="seed 0")
    long = labelled_grid(cells, ["a", "b"], ["short", LONG_PROMPT], title="seed 0")
    assert long.width == short.width
    assert long.height - short.height == (len(wrapped(LONG_PROMPT, 120)) - 1) * 16 > 8 * 16
    long_row = "lora-0.5 · cfg 7 · steps 30 · sampler DPM++ 2M Karras · a very long variant name indeed"
    tall = labelled_grid(cells, [long_row * 2, "b"], ["short", "short"], title="seed 0")
    assert tall.height > short.height and " ".join(wrapped(long_row, 140)) == long_row


def test_grid_and_contact_sheet_labels_draw_korean_and_russian_not_boxes(tmp_path):
    """A prompt in Hangul used to be drawn with DejaVu Sans, which has no Hangul: every syllable the same box, so
    two different prompts gave the same header. Now a font that covers the label is found (media.fonts)."""
    import numpy as np

    from personae.media.fonts import missing_characters
    from personae.media.grid import labelled_grid
    from personae.media.sheet import contact_sheet, font

    assert not missing_characters(font(13, "버스가 왜 안 오지? Спасибо!").path, "버스가 왜 안 오지? Спасибо!")
    assert font(13, "a plain prompt").path.endswith("DejaVuSans.ttf")
    cells = [[Image.new("RGB", (64, 64), "gray")]]

    def header(label):
        return np.asarray(labelled_grid(cells, [""], [label]))[:24].astype(int)

    assert np.abs(header("버스가") - header("오지요")).sum() > 0  # as boxes the two were pixel-identical
    assert np.abs(header("Спасибо") - header("Пожалуй")).sum() > 0
    pictures = []
    for name, colour in (("a.png", "red"), ("b.png", "blue")):
        Image.new("RGB", (32, 32), colour).save(tmp_path / name)
        pictures.append(tmp_path / name)
    one = contact_sheet(pictures, ["버스", "역"], tmp_path / "one.png")  # same lengths: only the glyphs differ
    two = contact_sheet(pictures, ["눈비", "비"], tmp_path / "two.png")
    assert np.abs(np.asarray(Image.open(one), int) - np.asarray(Image.open(two), int)).sum() > 0


@pytest.mark.parametrize("unit, expected", [
    ("{type: canny, image: nowhere.png, model: ./tiny-controlnet}", 'Variant "c", controls[0].image: The control '
                                                                    'image'),
    ("{type: cany, image: shapes.png, model: ./tiny-controlnet}", 'Variant "c", controls[0].type: Unknown control type '
                                                                  '"cany". Did you mean "canny"?'),
    ("{type: canny, image: shapes.png, model: ./no-controlnet}", 'Variant "c", controls[0].model:'),
    ("{type: canny, image: shapes.png, model: ./tiny-controlnet, options: {lo: 3}}", 'controls[0].options: Control '
                                                                                     'type "canny" has no option "lo"'),
    ("{type: canny, image: shapes.png, weight: 3}", "variants.1.controls.0.weight"),
    ("canny:shapes.png", 'controls[0].model: Cannot load ControlNet "lllyasviel/control_v11p_sd15_canny"'),
])
def test_bad_control_unit_names_variant_and_field(project, controlnet, unit, expected):
    """Every unit is checked before anything loads or is written (the CLI's exit 2: test_bad_suites_fail_clearly)."""
    from personae.errors import UserError
    from personae.jobs.compare import run_compare
    from personae.jobs.compare_plan import load_suite

    text = f"version: 1\nbase_model: ./tiny\nvariants: [{{label: ok}}, {{label: c, controls: [{unit}]}}]\n"
    (project / "bad-unit.yaml").write_text(text)
    with pytest.raises(UserError) as err:
        run_compare(load_suite(project / "bad-unit.yaml"), project / "bad-unit-out")
    assert expected in " ".join(str(err.value).split())
    if "model" in expected:
        assert "model: ./path/to/controlnet" in err.value.fix  # said for a suite file, not only as a CLI flag
    assert not (project / "bad-unit-out").exists() and not (project / "bad-unit-out.partial").exists()


def test_suite_units_are_every_variants_unless_it_sets_its_own(tmp_path):
    """Suite-level `controls` reach each variant without its own; `controls: []` opts out; paths are the file's."""
    from personae.errors import UserError
    from personae.jobs.compare_plan import expand, load_suite

    (tmp_path / "edges.png").write_bytes(b"")
    (tmp_path / "cn").mkdir()
    (tmp_path / "suite.yaml").write_text(
        "version: 1\nbase_model: m\ncontrol_end: 0.8\ncontrols: [{type: canny, image: edges.png, model: cn}]\n"
        "variants: [{label: a}, {label: plain, controls: []}, {label: half, controls: ['raw:edges.png:0.5'], "
        "control_start: 0.2}]\n")
    rows = {r.label: r for r in expand(load_suite(tmp_path / "suite.yaml"))}
    assert [(u.type, u.image, u.model) for u in rows["a"].controls] == [("canny", str(tmp_path / "edges.png"),
                                                                        str(tmp_path / "cn"))]
    assert rows["a"].control_settings() == {"controls": list(rows["a"].controls), "control_start": 0.0,
                                            "control_end": 0.8}
    assert rows["plain"].controls == () and rows["plain"].settings == {"control": "none"}
    assert rows["half"].controls[0].weight == 0.5
    assert (rows["half"].control_start, rows["half"].control_end) == (0.2, 0.8)
    assert rows["half"].settings == {"control": "raw weight 0.5 steps 0.2-0.8"}
    (tmp_path / "bad.yaml").write_text("version: 1\nbase_model: m\nvariants: [{label: w, controls: ['raw:e.png'], "
                                       "control_start: 0.9, control_end: 0.5}]\n")
    with pytest.raises(UserError, match=r'Variant "w": control_start \(0.9\) must be below control_end \(0.5\)'):
        expand(load_suite(tmp_path / "bad.yaml"))
