"""img2img on the world (issue #19): the strength curve and the face-to-animal recipe in miniature, measured
exactly through `personae generate`'s own code on the shipped model and ControlNet (docs/world.md, "img2img on
the world"). The floors are the measured numbers of the 64 cases the docs' table reports, less a case or two of
noise; never above what was measured."""

import json
import math

import numpy as np
import pytest

from personae.world.img2img_eval import (
    PAIRS,
    RECIPE_PAIRS,
    curve_cases,
    draw,
    read_back,
    recipe_cases,
    shares,
    write_inits,
)
from personae.world.scene import SIDE, SIZES, TRAINED

pytestmark = pytest.mark.slow  # the shipped model draws hundreds of pictures


def test_the_cases_are_what_the_docs_say():
    """The curve: every trained shape at each size class, the prompt another colour on another background at the
    same place; the recipe: each source -> target pair at each size class, at the init's place and box."""
    curve = curve_cases(64)
    assert curve == curve_cases(64) and {i.shape for i, _ in curve} == set(TRAINED)
    assert {i.size for i, _ in curve} == set(SIZES) and len({(i.colour, i.background) for i, _ in curve}) > 12
    for init, asked in curve:
        assert (init.colour, init.background) in PAIRS and (asked.colour, asked.background) in PAIRS
        assert asked.colour != init.colour and asked.background != init.background
        assert (asked.shape, asked.box, asked.centre) == (init.shape, init.box, init.centre)
    recipe = recipe_cases(64)
    assert {(i.shape, t.shape) for i, t in recipe} == set(RECIPE_PAIRS) and {i.size for i, _ in recipe} == set(SIZES)
    for init, target in recipe:
        assert (target.colour, target.background, target.box, target.centre) == (init.colour, init.background,
                                                                                  init.box, init.centre)
    assert len({(round(i.centre[0]), round(i.centre[1])) for i, _ in recipe}) > 40  # places all over the canvas


def test_read_back_counts_an_init_kept_and_a_prompt_followed():
    init, asked = curve_cases(1)[0]
    kept = read_back(init.image(), init, asked)
    assert kept["all"] and not kept["both"] and kept["distance"] < 0.5
    followed = read_back(asked.image(), init, asked)
    assert followed["both"] and followed["shape"] and followed["position"] and not followed["all"]
    init, target = recipe_cases(1)[0]
    assert read_back(target.image(), init, target)["recipe"] and not read_back(init.image(), init, target)["recipe"]


@pytest.fixture(scope="module")
def shipped_world(tmp_path_factory):
    """`personae model world` and `personae model world-controlnet`: the model and ControlNet that ship."""
    from personae.cli.main import main, quiet_libraries
    from personae.inference.session import open_session

    quiet_libraries()
    root = tmp_path_factory.mktemp("shipped")
    assert main(["model", "world", str(root / "world")]) == 0
    assert main(["model", "world-controlnet", str(root / "cn")]) == 0
    return open_session(str(root / "world"), device="cpu"), str(root / "cn")


def test_strength_curve_bars(shipped_world, tmp_path):
    """Issue #19, must show 2, on the 64 held-out init pictures of docs/world.md, whose prompt names another colour
    and another background: at CFG 1, strength 0.2 keeps the init's background, colour, shape and position (centre
    within 2 px) all four in >= 95 % (the bar 90 %; measured 63 of 64: a 10 px cross the world VAE turns into a
    diamond at any strength), strength 0.9 follows the prompt's background (and colour) in >= 95 % (measured 64).
    At generate's default CFG 7 the prompt takes the colours already at 0.2 (docs/world.md): there 0.9 is held."""
    session, _ = shipped_world
    cases = curve_cases(64)
    files = write_inits(cases, tmp_path)
    prompts = [asked.caption() for _, asked in cases]

    def point(strength: float, cfg: float) -> dict:
        rows = [read_back(image, init, asked) for image, (init, asked) in
                zip(draw(session, files, prompts, strength, cfg=cfg), cases)]
        return shares(rows, ("background", "colour", "shape", "position", "all", "asked_background", "both"))

    low, high = point(0.2, 1.0), point(0.9, 1.0)
    assert low["all"] >= 0.95, low
    assert high["asked_background"] >= 0.95 and high["both"] >= 0.95, high
    default_high = point(0.9, 7.0)
    assert default_high["asked_background"] >= 0.95 and default_high["both"] >= 0.95, default_high


def test_the_recipe_in_miniature(shipped_world, tmp_path):
    """A picture of one shape, the silhouette of another drawn at its place, a prompt naming the other shape, at
    generate's defaults (strength 0.75, CFG 7): the other shape at the init's place (centre within 2 px), size
    class and background in >= 85 % of 64 (measured 58 of 64, 91 %: 5 of the 6 misses are 10 px crosses read as
    diamonds); the prompt alone, without the silhouette, in far fewer (measured 28 of 64: the shape moves)."""
    session, controlnet = shipped_world
    cases = recipe_cases(64)
    files = write_inits(cases, tmp_path, control=True)
    prompts = [target.caption() for _, target in cases]
    keys = ("recipe", "target", "position", "size", "background")
    with_control = shares([read_back(image, init, target) for image, (init, target) in
                           zip(draw(session, files, prompts, 0.75, controlnet), cases)], keys)
    assert with_control["recipe"] >= 0.85 and with_control["background"] >= 0.95, with_control
    alone = shares([read_back(image, init, target) for image, (init, target) in
                    zip(draw(session, files, prompts, 0.75), cases)], keys)
    assert alone["recipe"] < with_control["recipe"] - 0.25 and alone["position"] < 0.7, (alone, with_control)


def test_img2img_eval_writes_its_record_and_refuses_a_users_folder(shipped_world, tmp_path, capsys):
    from PIL import Image

    from personae.cli.main import main

    world = str(shipped_world[0].source.location)
    out = tmp_path / "curve"
    assert main(["world", "img2img-eval", "--out", str(out), "--model", world, "--controlnet", shipped_world[1],
                 "--cases", "2", "--cfg", "1"]) == 0
    printed = capsys.readouterr().out
    assert "| 0.2 |" in printed and "| silhouette | 0.75 |" in printed
    record = json.loads((out / "results.json").read_text())
    assert record["cases"] == 2 and [c["cfg"] for c in record["curves"]] == [1.0]
    assert [p["strength"] for p in record["curves"][0]["points"]] == [round(0.1 * i, 1) for i in range(11)]
    assert record["curves"][0]["points"][0]["kept"]["all"] == 1.0  # strength 0: the init as the VAE gives it back
    assert all(math.isfinite(p["mean_distance"]) for p in record["curves"][0]["points"])
    assert len(record["recipe"]["rows"]) == 9 and (out / "table.md").is_file()
    for name, columns in (("curve-cfg1.png", 12), ("recipe.png", 11)):
        sheet = Image.open(out / "sheets" / name)
        assert sheet.size == (columns * (SIDE + 1) - 1, 2 * (SIDE + 1) - 1), name
        assert np.asarray(sheet).std() > 10
    assert sorted(p.name for p in (out / "inits" / "recipe").iterdir()) == [
        "init-00.png", "init-01.png", "silhouette-00.png", "silhouette-01.png", "target-00.png", "target-01.png"]
    # again: a folder it wrote needs --overwrite; a user's folder is refused before anything is drawn
    assert main(["world", "img2img-eval", "--out", str(out), "--cases", "1"]) == 2
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert main(["world", "img2img-eval", "--out", str(mine), "--model", world, "--cases", "1"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "personae did not write (notes.txt)" in err and "Traceback" not in err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"] and (mine / "notes.txt").read_text() == "mine"
    for bad in (["--cases", "0"], ["--cfg", "1,x"], ["--cfg", "0.5"], ["--controlnet", str(tmp_path / "none")]):
        assert main(["world", "img2img-eval", "--out", str(tmp_path / "x")] + bad) == 2, bad
        assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
