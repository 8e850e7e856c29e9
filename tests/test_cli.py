"""The command line as users run it: exit codes, one-paragraph errors, no tracebacks (issue #2's must-shows)."""

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from personae.media.png import read_png_text

pytestmark = pytest.mark.slow  # models, training or CLI subprocesses: the full tier only


def personae(*args, env_extra=None, drop_env=(), timeout=300):
    env = {k: v for k, v in os.environ.items() if k not in drop_env}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "personae", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def only_png(folder):
    pngs = sorted(folder.glob("*.png"))
    assert len(pngs) == 1, pngs
    return pngs[0]


def test_model_tiny_then_generate_reproducibly(tmp_path):
    assert personae("model", "tiny", tmp_path / "T").returncode == 0
    common = ["--model", tmp_path / "T", "--prompt", "a photo of a cat", "--steps", 4, "--width", 64, "--height", 64]
    runs = {}
    for name, seed in [("a", 7), ("b", 7), ("c", 8)]:
        r = personae("generate", *common, "--seed", seed, "--out", tmp_path / name)
        assert r.returncode == 0, r.stderr
        runs[name] = only_png(tmp_path / name)
    assert "wrote 1 image to" in r.stderr
    params = read_png_text(runs["a"])["parameters"]
    assert "Steps: 4" in params and "Seed: 7" in params and "Size: 64x64" in params
    a, b, c = (np.asarray(Image.open(runs[k])) for k in "abc")
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # --from-png reproduces, and other options override what it stored
    r = personae("generate", "--from-png", runs["a"], "--out", tmp_path / "d")
    assert r.returncode == 0, r.stderr
    assert np.array_equal(a, np.asarray(Image.open(only_png(tmp_path / "d"))))


def test_single_file_and_folder_give_identical_pixels(tmp_path):
    assert personae("model", "tiny", tmp_path / "T2", "--single-file", tmp_path / "T2.safetensors").returncode == 0
    common = ["--prompt", "a photo of a cat", "--steps", 4, "--seed", 3, "--width", 64, "--height", 64]
    for name, model in [("folder", tmp_path / "T2"), ("file", tmp_path / "T2.safetensors")]:
        r = personae("generate", "--model", model, *common, "--out", tmp_path / name)
        assert r.returncode == 0, r.stderr
    assert np.array_equal(np.asarray(Image.open(only_png(tmp_path / "folder"))),
                          np.asarray(Image.open(only_png(tmp_path / "file"))))


def test_hub_id_offline_fails_fast_and_names_the_id(tmp_path):
    """No HF_HUB_OFFLINE here: the real path with no network must still answer within seconds."""
    start = time.monotonic()
    r = personae("generate", "--model", "stable-diffusion-v1-5/stable-diffusion-v1-5", "--prompt", "x", "--out", tmp_path,
                 drop_env=("HF_HUB_OFFLINE",), timeout=120)
    assert time.monotonic() - start < 60
    assert r.returncode != 0
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in r.stderr and "Traceback" not in r.stderr
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("args,expected", [
    (["--model", "{ckpt}", "--prompt", "x"], "arbitrary code"),
    (["--model", "{missing}", "--prompt", "x"], "not found"),
    (["--model", "{tiny}", "--prompt", "x", "--sampler", "Eulr a"], 'Did you mean "Euler a"'),
    (["--model", "{tiny}", "--prompt", "x", "--width", "65"], "multiple of 8"),
    (["--model", "{tiny}", "--prompt", "x", "--dtype", "fp16", "--device", "cpu"], "fp16"),
    (["--model", "{tiny}"], "--prompt is required"),
    (["--model", "{tiny}", "--prompt", "x", "--mask", "{missing}"], "needs --init-image"),
    (["--model", "{tiny}", "--prompt", "x", "--init-image", "{missing}"], "does not exist"),
    (["--model", "{tiny}", "--prompt", "x", "--init-image", "{tiny}"], "is a folder, not a picture"),
])
def test_bad_input_is_one_paragraph_and_a_nonzero_exit(tmp_path, tiny_model, args, expected):
    (tmp_path / "model.ckpt").write_bytes(b"\x80\x02pickle")
    values = {"ckpt": tmp_path / "model.ckpt", "missing": tmp_path / "nope", "tiny": tiny_model[0]}
    r = personae("generate", *[a.format(**values) for a in args], "--out", tmp_path / "out")
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and expected in r.stderr.replace("\n", " ")
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()


def test_help_has_examples_for_every_command():
    for command in (["generate"], ["demo"], ["model", "tiny"], ["prepare"]):
        r = personae(*command, "--help")
        assert r.returncode == 0 and "example" in r.stdout


def test_help_and_version_come_up_without_the_model_libraries():
    # the parser of every command (with its samplers, recipes and style trigger) is built from names alone: help,
    # --version and a mistyped option answer at once instead of after seconds of importing torch and diffusers
    probe = ("import sys; from personae.cli.main import build_parser; parser = build_parser(); "
             "[parser.parse_known_args([c, '--sampler', 'x']) for c in ('generate', 'animate')]; "
             "heavy = ('torch', 'diffusers', 'transformers', 'peft', 'accelerate'); "
             "print(','.join(m for m in heavy if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "", (r.stdout, r.stderr)
    from personae.inference.sampler_names import SAMPLER_NAMES
    from personae.inference.samplers import SAMPLERS, get_sampler

    assert tuple(SAMPLERS) == SAMPLER_NAMES  # the help lists exactly the samplers there are
    assert all(get_sampler(name).name == name for name in SAMPLER_NAMES)
    assert SAMPLERS["DPM++ 2M Karras"].options == {"sampler": "DPM++ 2M", "schedule": "Karras"}
    assert SAMPLERS["UniPC"].scheduler.__name__ == "UniPCMultistepScheduler"


def test_demo_runs_offline_and_writes_an_index(tmp_path):
    # one thread, as under CI's workers (the drawing style's worker takes one thread in any case: its LoRA below is
    # the one docs/world.md measured). On CI's two cores the style runs in that worker beside the other sections
    # (demo/beside.py). About 11 min on this project's machines; on 7 December one ran about 2.5x slower than usual
    # and needed more than 30
    r = personae("demo", "--out", tmp_path / "demo", "--quiet", timeout=3600,
                 env_extra={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    index = (tmp_path / "demo" / "index.md").read_text()
    assert "## Prepared training set" in index and (tmp_path / "demo/prepared/manifest.jsonl").is_file()
    assert "identical pixels to the folder: True" in index and "identical pixels: True" in index
    # the everyday flow on the world: what came out read back by the checker (demo/world_flow.py)
    flow = " ".join(index[index.index("## Text to image"):index.index("## Reproduce from PNG")].split())
    reads = [int(m) for m in re.findall(r"The checker reads (\d+) of", flow)] + [
        int(re.search(r"the checker reads (\d+) of 4 as prompted, star included", flow).group(1))]
    assert reads[0] >= 4 and reads[1] >= 3 and reads[2] >= 3, flow  # of 5, 4, 4: 5, 4, 4 measured
    assert "each reloaded and compared: a1111 0e+00, diffusers 0e+00" in flow, flow
    # A1111's samplers, k-diffusion's steps, on the world: 11 of 11 measured
    samplers = re.search(r"Read back by the checker: (\d+) of 11 as prompted", flow)
    assert samplers and int(samplers.group(1)) >= 10, flow
    # A1111's prompt editing on the world: the switch decides what is drawn (8 of 8 both ways measured, 8 seeds)
    edited = re.search(r"Switched at 2, the checker reads (\d+) of 4 as the second prompt; at 18, (\d+) of 4", flow)
    assert edited and int(edited.group(1)) >= 3 and int(edited.group(2)) >= 3, flow
    # A1111's AND on the world: the weights pick the shape (helper's measure: 24 of 24 both ways, 24 seeds)
    composed = re.search(r"At 0.8 / 0.2 the checker reads (\d+) of 4 as circles; at 0.2 / 0.8, (\d+) of 4", flow)
    assert composed and int(composed.group(1)) >= 3 and int(composed.group(2)) >= 3, flow
    # Dynamic Prompts on the world: each picture drew its own prompt, and is that prompt (4 of 4 measured)
    dynamic = re.search(r"read against its own prompt, the checker finds (\d+) of 4 as drawn", flow)
    assert dynamic and int(dynamic.group(1)) >= 3, flow
    # the LoRA baked into the world model (personae merge): the merged model alone draws the star as the LoRA did
    baked = re.search(r"LoRA baked into the model .* the checker reads (\d+) of 4 as prompted, star included; the "
                      r"largest pixel difference from the pictures with the LoRA: (\d+) of 255", flow)
    assert baked and int(baked.group(1)) >= reads[2] - 1 and int(baked.group(2)) <= 2, flow
    # the comparison on the world: base, the DreamBooth star and the LoRA star, every image read back by the checker
    compared = json.loads((tmp_path / "demo/world-compare/metrics.json").read_text())
    table = {v["label"]: v for v in compared["variants"]}
    assert table["base"]["world_subject"] == 0.0 and table["base"]["world_prior"] >= 0.75, table["base"]
    assert table["DreamBooth"]["world_subject"] >= 0.5 and table["LoRA r8"]["world_subject"] >= 0.5, table  # 62 %, 69 %
    assert compared["ranking"][-1]["variant"] == "base", compared["ranking"]
    assert "Ranking" in (tmp_path / "demo/world-compare/report.html").read_text()
    section = index[index.index("## Compare on the world"):index.index("## World ControlNet")]
    assert "1. " in section and "subject" in section and "3. base: subject 0 %" in section, section
    assert "## World motion" in index and "## Animated clip" not in index  # the world clip replaced the tiny one
    # the demo opens on the shapes-world model: its prompts read back exactly, and a star is learnt
    assert index.index("## Shapes-world model") < index.index("## Teach a star") < index.index("## Single-file")
    right = int(re.search(r"the exact checker finds (\d+) of 16 right", index).group(1))
    assert right >= 13, index
    # the DreamBooth star as a LoRA (personae extract): drawn on the world model with it (3 of 4, as the DreamBooth
    # model itself draws them, measured)
    extracted = " ".join(index[index.index("## A LoRA extracted"):].split())
    drawn = re.search(r"the checker reads (\d+) of 4 as prompted, star included \(the DreamBooth model itself: "
                      r"(\d+) of 4", extracted)
    assert drawn and int(drawn.group(1)) >= max(2, int(drawn.group(2)) - 1), extracted[:600]
    assert (tmp_path / "demo/world/star-extracted.safetensors").is_file()
    # the demo's bench run: DreamBooth, the star, one seed, the default recipe, on the shipped model; the taught
    # word draws the star where the untaught one never does, on backgrounds it never saw
    bench_out = tmp_path / "demo/world-bench"
    for name in ("table.md", "table.csv", "results.json", "report.html", "grids/base-star.png",
                 "grids/dreambooth-star-s0.png", "runs/dreambooth-star-s0/run.json",
                 "runs/dreambooth-star-s0/model/model_index.json",
                 "data/dreambooth-star-s0/00.png"):
        assert (bench_out / name).is_file(), name
    bench = json.loads((bench_out / "results.json").read_text())
    (run,) = bench["runs"]
    base = bench["base"]["star"]
    assert base["subject_fidelity"] == 0.0
    assert run["subject_fidelity"] >= 0.6, run  # 83 % in docs/world.md's table (3 seeds, 8 images per prompt)
    assert run["subject_unseen_bg"] >= 0.5 and run["prompt_fidelity"] >= 0.6, run
    assert abs(run["prior_after"] - base["prior_after"]) <= 0.1, (run, base)
    # the storyboard on the world: shot tokens and the star taught, every panel read back by the checker
    section = index[index.index("## Shot tokens and a storyboard on the world"):index.index("## Compare on the world")]
    tokens = re.search(r"set the size in (\d+) of 96 generations", section)
    assert tokens and int(tokens.group(1)) >= 87, section  # >= 90 %; 96 of 96 measured (docs/world.md)
    board = re.search(r"shot right on (\d+) of 6 panels, the star exactly where cast on (\d+), colours right on (\d+)",
                      section)
    assert board and [int(g) for g in board.groups()] == [6, 6, 6], section
    assert (tmp_path / "demo/world-board/storyboard/sheet.pdf").is_file()
    # the drawing style on the world: banded pictures with the trigger appended -> a LoRA; the style with the trigger
    # on held-out combinations, not without; floors under what the recipe gives over training seeds and thread counts
    # (83-91 %, 0 %, 91 % at weight 1.1 on three seeds: docs/world.md; _style_holds_the_bar below holds this LoRA,
    # seed 0 at one thread, to the bar on 16 seeds)
    # made in a worker beside the sections before it (two cores), in its place in the index all the same
    assert index.index("## img2img on the world") < index.index("## A drawing style on the world") \
        < index.index("## World motion"), index
    section = index[index.index("## A drawing style on the world"):index.index("## Prepared training set")]
    style = re.search(r"the style with the trigger in (\d+) of 64, without it in (\d+) of 64, shape, colour, "
                      r"background and size right in (\d+) of 64 with the trigger", section)
    assert style, section
    present, leak, content = (int(g) for g in style.groups())
    assert present >= 0.7 * 64 and leak <= 0.1 * 64 and content >= 0.8 * 64, section
    record = json.loads((tmp_path / "demo/world-style/style-check/style.json").read_text())
    assert record["present"] == present / 64 and len(record["pictures"]) == 128
    from personae.demo.world_style import WEIGHT

    assert record["settings"]["lora"][0].endswith(f"lora.safetensors:{WEIGHT}"), record["settings"]
    assert (tmp_path / "demo/world-style/style-check/sheet.png").is_file()
    assert "| dreambooth | 1 |" in (bench_out / "table.md").read_text()
    assert len(list((tmp_path / "demo/world/taught").glob("*.png"))) == 4
    # the world ControlNet: held-out shapes placed where the control says, the DreamBooth star too (docs/world.md)
    section = index[index.index("## World ControlNet"):index.index("## img2img on the world")]
    counts = re.search(r"placed (\d+) of 8 .*colour and background as prompted (\d+) of 8; the same seeds without "
                       r"control placed (\d+) of 8.*invert preprocessor.*placed (\d+) of 8\. The DreamBooth star.*"
                       r"placed (\d+) of 8, a star (\d+) of 8", " ".join(section.split()))
    assert counts, section
    placed, prompted, own, drawn, star_placed, star = (int(g) for g in counts.groups())
    assert placed >= 7 and prompted >= 7 and own < placed and drawn >= 7, section
    assert (tmp_path / "demo/world-control/sheet.png").is_file()
    # img2img on the world: the strength curve's ends and the recipe in miniature, 8 cases (docs/world.md: 64)
    section = " ".join(index[index.index("## img2img on the world"):index.index("## A drawing style")].split())
    found = re.search(r"all kept in (\d+) of 8; at 0.9 the prompt's background in (\d+) of 8.* size and background "
                      r"in (\d+) of 8; the prompt alone in (\d+) of 8", section)
    assert found, section
    kept, followed, recipe, alone = (int(g) for g in found.groups())
    assert kept >= 7 and followed >= 7 and recipe >= 7, section  # 8, 8, 8 measured (64 cases: 98 %, 100 %, 91 %)
    # world motion: the shipped adapter on six held-out clips and on the taught star (demo/world_motion.py)
    start = index.index("## World motion")
    section = " ".join(index[start:index.index("\n## ", start)].split())
    found = re.search(r"every frame in (\d+) of 6; the track moves as asked: .* \((\d+) of 6;.* jitter ([\d.]+) px, "
                      r"against ([\d.]+) px .* a star in (\d+) of 96 frames; it moves as asked: .* \((\d+) of 6;"
                      r".* the model it was taught on draws a star in (\d+) of 16", section)
    assert found, section
    identity, direction, smooth, loose, star, star_moves, base_star = (float(g) for g in found.groups())
    assert identity >= 5 and direction >= 5 and smooth < loose / 3, section
    # the taught star animates as a star, and moves (92 of 96 frames, 3 of 6 measured: up, down, still); the base
    # draws none
    assert star >= 86 and star_moves >= 2 and base_star <= 2, section
    assert all((tmp_path / f"demo/animate/clip.{suffix}").is_file() for suffix in ("gif", "mp4", "webp", "webm"))
    # the same clip drawn again from the GIF's settings alone (`personae animate --from-png`)
    assert re.search(r"drew animate/again.gif from the GIF's settings alone: 16 of 16 frames the same", section)
    # prompt travel with that adapter: each of three travels starts as its first keyframe and ends as its last, its
    # control (the first prompt alone) ends as the first (demo/world_travel.py; 3-4 and 4 of 4 measured)
    start = index.index("## Prompt travel on the world")
    section = " ".join(index[start:index.index("\n## ", start)].split())
    travels = re.findall(r"(shape|colour|background): (\d) of 4 as the first keyframe at the start, (\d) of 4 as the "
                         r"last at the end \(its control: (\d) of 4 still the first at the end\)", section)
    assert [t[0] for t in travels] == ["shape", "colour", "background"], section
    assert all(int(a) >= 3 and int(b) >= 3 and int(c) >= 3 for _, a, b, c in travels), section
    with Image.open(tmp_path / "demo/world-travel/travel.gif") as gif:
        assert gif.n_frames == 16
    # the world ControlNet steering a clip along a map per frame while the prompt says "still"
    # (demo/world_clip_control.py; 16 of 16 frames, 0.2-1.0 px, 5-9 px without the unit, measured)
    start = index.index("## ControlNet for a clip on the world")
    section = " ".join(index[start:index.index("\n## ", start)].split())
    steered = re.findall(r"maps moving (\w+): the shape right in (\d+) of 16 frames, ([\d.]+) px from each map's "
                         r"centre on average, moving as the maps (do|do not) \(without the unit: ([\d.]+) px\)",
                         section)
    assert [s[0] for s in steered] == ["right", "down", "left", "up"], section
    assert all(int(n) >= 14 and float(px) <= 1.5 and do == "do" and float(free) > 3 for _, n, px, do, free in steered)
    assert (tmp_path / "demo/world-clip-control/steered.gif").is_file()
    # and the same clips' frames as --init-image, redrawn in the colour the prompt names (0.4-0.9 px, measured)
    start = index.index("## A clip started from another on the world")
    section = " ".join(index[start:index.index("\n## ", start)].split())
    started = re.findall(r"(\d+) of 16 frames in the new colour, ([\d.]+) px from the rendered track \(from noise: "
                         r"([\d.]+) px\)", section)
    assert len(started) == 4 and all(int(n) >= 14 and float(px) <= 1.5 for n, px, _ in started), section
    # and one picture per clip (A1111's img2gif): the clips start at the picture and move (4 of 4 measured; 2 of 4
    # with the picture kept in every frame)
    start = index.index("## A clip from one picture on the world")
    section = " ".join(index[start:index.index("\n## ", start)].split())
    pictured = re.findall(r"starts ([\d.]+) px from the picture's shape, the shape right in (\d+) of 16 frames, "
                          r"(moves|does not move) as asked", section)
    assert len(pictured) == 4 and all(float(px) <= 4.5 and int(n) >= 14 for px, n, _ in pictured), section
    assert sum(m == "moves" for _, _, m in pictured) >= 3, section
    # a kohya config and its dataset_config of two subsets, trained as they are (demo/world_kohya.py)
    section = " ".join(index[index.index("## A kohya config, trained as it is"):index.index("## Single-file")].split())
    kohya = re.search(r"close 4 images x 2, medium 4 images x 1 = 12 per epoch, author \"the personae demo\".* the "
                      r"exact checker reads (\d+) of 4 as prompted", section)
    assert kohya and int(kohya.group(1)) >= 3, section
    for line in index.splitlines():
        if line.startswith("![]("):
            assert (tmp_path / "demo" / line[4:-1]).is_file()
    _every_picture_loads_and_none_is_noise(tmp_path / "demo/index.html")
    _style_holds_the_bar(tmp_path / "demo")


def _style_holds_the_bar(demo):
    """Issue #20 part 2 on the demo's style LoRA (the recipe of examples/style-world: 200 banded pictures, captions
    ending with the trigger phrase, a rank-8 LoRA beside 200 flat pictures of plain captions), measured on 64
    generations with the trigger and 64 without per seed, 16 seeds, on combinations the training set lacks.

    Four seeds (the demo's 64) are too few to hold a bar with: the same LoRA reads 51, 55, 59 and 56 of 64 on seeds
    0-3, 4-7, 8-11 and 12-15, so a machine whose floating point differs (this one against session 20's, which read 53
    of 64 on seeds 0-3) can move it across 80 %. On 256 at one thread: 221 (86 %) with the style, 0 without, 221 (86 %)
    right in content (docs/world.md, "A drawing style"); trained at two threads the same recipe read 88 %, 0 %, 84 %.
    The demo trains exactly what tests/test_world_style.py once trained again for this (a 5-minute run)."""
    import torch

    from personae.demo.world_style import TRIGGER, WEIGHT
    from personae.inference.session import open_session
    from personae.world.style import score_style

    session = open_session(str(demo / "models/world"), device="cpu",
                           loras=[(str(demo / "world-style/runs/ksh/lora.safetensors"), WEIGHT)])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            scores = score_style(session.pipe, TRIGGER, seeds=16)
    finally:
        torch.set_num_threads(threads)
    summary = {k: scores[k] for k in ("present", "leak", "content", "content_plain")}
    assert scores["present"] >= 0.8, summary
    assert scores["leak"] <= 0.1, summary
    assert scores["content"] >= 0.85 and scores["content_plain"] >= 0.9, summary


def speckle(path) -> float:
    """The share of pixels that differ (by more than 24 of 255) from 3 or 4 of their neighbours: about 0.6 in a random
    model's picture; at most about 0.2 in the world's (a close-up diamond's edges), its sheets and plots."""
    a = np.asarray(Image.open(path).convert("RGB"), np.int16)
    centre = a[1:-1, 1:-1]
    around = (a[:-2, 1:-1], a[2:, 1:-1], a[1:-1, :-2], a[1:-1, 2:])
    return float((sum((np.abs(centre - x).max(-1) > 24).astype(int) for x in around) >= 3).mean())


def test_speckle_tells_a_random_model_from_the_world(tiny_model, tmp_path):
    from personae.world.model import write_world_model

    world = write_world_model(tmp_path / "world")
    r = personae("generate", "--model", tiny_model[0], "--prompt", "a cat", "--width", 64, "--height", 64, "--steps", 4,
                 "--out", tmp_path / "tiny")
    assert r.returncode == 0, r.stderr
    r = personae("generate", "--model", world, "--prompt", "a white diamond on a red background, close-up", "--out",
                 tmp_path / "world-out")
    assert r.returncode == 0, r.stderr
    assert speckle(only_png(tmp_path / "tiny")) > 0.4 > 0.3 > speckle(only_png(tmp_path / "world-out"))


def _every_picture_loads_and_none_is_noise(page_file):
    """Issue #19: a browser opens the demo's index.html, every image loads, and none is a random model's noise."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                    args=["--no-sandbox", "--disable-background-networking", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(page_file.as_uri())
            page.wait_for_load_state("load")
            images = page.eval_on_selector_all("img", "els => els.map(e => [e.getAttribute('src'), e.complete, "
                                                      "e.naturalWidth])")
        finally:
            browser.close()
    named = [line[4:-1] for line in (page_file.parent / "index.md").read_text().splitlines() if line.startswith("![](")]
    assert [src for src, _, _ in images] == named and len(named) >= 25  # 33 (session 16), in 14 of the 15 sections
    assert [src for src, complete, width in images if not complete or width == 0] == []
    noisy = {src: round(speckle(page_file.parent / src), 2) for src, _, _ in images}
    assert {src: s for src, s in noisy.items() if s > 0.4} == {}, noisy


def test_prepare_command_reports_and_fails_clearly(tmp_path):
    from personae.data.samples import write_sample_subject

    write_sample_subject(tmp_path / "photos", count=3)
    (tmp_path / "photos" / "broken.png").write_text("not an image")
    r = personae("prepare", tmp_path / "photos", tmp_path / "set", "--resolution", 64, "--trigger", "sks")
    assert r.returncode == 0, r.stderr
    assert "3 images" in r.stdout and "1 rejected" in r.stdout
    r = personae("prepare", tmp_path / "nothing", tmp_path / "set2")
    assert r.returncode == 2 and "not a folder" in " ".join(r.stderr.split()) and "Traceback" not in r.stderr
    r = personae("prepare", tmp_path / "photos", tmp_path / "set3", "--crop", "sideways")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_the_demo_style_is_the_world_style_example():
    """demo/world_style.py runs examples/style-world as calls: its job is the example's style.yaml, its pictures the
    README's `personae world render` options, its trigger what the README's `personae prepare --append` writes."""
    from pathlib import Path

    import yaml

    from personae.demo.world_style import PICTURES, STYLE_JOB, TRIGGER, WEIGHT

    example = Path(__file__).resolve().parents[1] / "examples/style-world"
    job = yaml.safe_load((example / "style.yaml").read_text(encoding="utf-8"))
    job["dreambooth"].pop("class_data_dir")
    job["data"].pop("path")
    assert {k: v for k, v in job.items() if k not in ("version", "base_model", "output")} == STYLE_JOB
    readme = " ".join((example / "README.md").read_text(encoding="utf-8").replace("\\\n", " ").split())
    options = " ".join(f'--{k} "{v}"' if " " in v else f"--{k} {v}" for k, v in PICTURES.items() if k != "count")
    assert f"personae world render ksh --style banded --count {PICTURES['count']} {options}" in readme
    assert f'--append "{TRIGGER}"' in readme
    assert f"personae world style --model ./world --lora runs/ksh/lora.safetensors:{WEIGHT} --out style-check" in readme


def test_the_demo_board_is_the_world_storyboard_example():
    """demo/world_board.py runs examples/storyboard-world as calls: its jobs and scenes are the example's files."""
    from pathlib import Path

    import yaml

    from personae.demo.world_board import BOARD, SCENES, SHOTS_JOB, STAR_JOB

    example = Path(__file__).resolve().parents[1] / "examples/storyboard-world"

    def read(name):
        data = yaml.safe_load((example / name).read_text(encoding="utf-8"))
        return {k: v for k, v in data.items() if k not in ("version", "base_model", "data", "output", "model",
                                                           "shot_embeddings", "characters", "scenes")}, data

    assert read("shots.yaml")[0] == SHOTS_JOB and read("star.yaml")[0] == STAR_JOB
    board, scenes = read("scenes.yaml")
    assert scenes["scenes"] == SCENES and {**board, "use_shot_tokens": "yes"} == BOARD
