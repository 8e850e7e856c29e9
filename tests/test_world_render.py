"""`personae world render OUT`: world pictures with captions, read back by the exact checker (issue #20)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from personae.errors import UserError
from personae.world.check import check
from personae.world.render import plan, render_world
from personae.world.render_settings import WorldRender

RUN = [sys.executable, "-m", "personae", "world", "render"]


def test_the_grid_is_every_combination_once_and_the_checker_reads_each_file_back(tmp_path):
    settings = WorldRender(shapes="circle,star", colours="red,white", backgrounds="blue,red", shots="close-up,medium")
    result = render_world(settings, tmp_path / "out")
    # 2 shapes x (red on blue, white on blue, white on red) x 2 shots; never red on red
    assert len(result.pictures) == 12
    assert {(p.shape, p.colour, p.background, p.shot) for p in result.pictures} == {
        (s, c, b, z) for s in ("circle", "star") for c, b in (("red", "blue"), ("white", "blue"), ("white", "red"))
        for z in ("close-up", "medium shot")}
    record = json.loads((tmp_path / "out/render.json").read_text())
    assert len(record["pictures"]) == 12 and record["settings"]["shapes"] == ["circle", "star"]
    for p in result.pictures:
        found = check(Image.open(tmp_path / "out" / p.file))
        assert (found.shape, found.colour, found.background, found.size) == (p.shape, p.colour, p.background, p.shot)
        assert abs(found.position[0] - p.position[0]) < 0.02 and abs(found.position[1] - p.position[1]) < 0.02
        caption = (tmp_path / "out" / p.file).with_suffix(".txt").read_text()
        assert caption == f"a {p.colour} {p.shape} on a {p.background} background, {p.shot}\n"


def test_by_shot_writes_the_folders_folder_tokens_maps_and_captions_follow_the_template(tmp_path):
    settings = WorldRender(count=30, by="shot", caption="a {colour} {shape} on a {background} background", seed=3)
    render_world(settings, tmp_path / "shots")
    folders = sorted(p.name for p in (tmp_path / "shots").iterdir() if p.is_dir())
    assert folders == ["close_up", "full", "medium"]
    pngs = sorted((tmp_path / "shots").rglob("*.png"))
    assert len(pngs) == 30
    sizes = {"close_up": "close-up", "medium": "medium shot", "full": "full shot"}
    for png in pngs:
        assert check(Image.open(png)).size == sizes[png.parent.name]
        text = png.with_suffix(".txt").read_text()
        assert text.endswith(" background\n") and "shot" not in text and "close" not in text  # never the framing


def test_same_settings_same_bytes_another_seed_other_pictures(tmp_path):
    settings = WorldRender(count=10, seed=7)
    render_world(settings, tmp_path / "a")
    render_world(settings, tmp_path / "b")
    render_world(WorldRender(count=10, seed=8), tmp_path / "c")
    for name in ["render.json", *(p.file for p in plan(settings))]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert [p.file for p in plan(settings)] != [p.file for p in plan(WorldRender(count=10, seed=8))]
    centred = plan(WorldRender(count=4, jitter=False))
    assert all(p.offset == (0.0, 0.0) and p.position == (0.5, 0.5) for p in centred)


def test_a_folder_it_did_not_make_is_refused_and_its_own_is_replaced_only_when_asked(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "holiday.png").write_bytes(b"not personae's")
    with pytest.raises(UserError):
        render_world(WorldRender(count=2), mine, overwrite=True)
    assert [p.name for p in mine.iterdir()] == ["holiday.png"]
    render_world(WorldRender(count=2), tmp_path / "out")
    with pytest.raises(UserError):
        render_world(WorldRender(count=3), tmp_path / "out")
    render_world(WorldRender(count=3), tmp_path / "out", overwrite=True)
    assert len(list((tmp_path / "out").glob("*.png"))) == 3


def test_the_command_writes_pictures(tmp_path):
    done = subprocess.run([*RUN, str(tmp_path / "stars"), "--shapes", "star", "--colours", "white", "--backgrounds",
                           "blue,green", "--shots", "close_up,medium", "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "4 pictures" in done.stdout and len(list((tmp_path / "stars").glob("*.png"))) == 4


def test_excluded_combinations_are_never_drawn_and_the_rest_still_are(tmp_path):
    """--exclude holds combinations out of a training set (examples/style-world measures the style on them)."""
    settings = WorldRender(shapes="circle,square", colours="red,blue", backgrounds="blue,yellow",
                           shots="close-up,medium", exclude="red circle on blue, a blue square on a yellow background")
    assert settings.exclude == ["red circle on blue", "blue square on yellow"]
    full = {(p.shape, p.colour, p.background, p.shot) for p in plan(settings.model_copy(update={"exclude": []}))}
    drawn = {(p.shape, p.colour, p.background, p.shot) for p in plan(settings)}
    assert drawn == {c for c in full if c[:3] not in {("circle", "red", "blue"), ("square", "blue", "yellow")}}
    assert len(full) == 12 and len(drawn) == 8
    many = plan(settings.model_copy(update={"count": 100}))  # a random draw never falls on them either
    assert len(many) == 100 and {(p.shape, p.colour, p.background, p.shot) for p in many} == drawn
    record = render_world(settings, tmp_path / "out")
    assert json.loads((tmp_path / "out/render.json").read_text())["settings"]["exclude"] == settings.exclude
    assert len(record.pictures) == 8


@pytest.mark.parametrize("bad, word", [(["--shapes", "blob"], "blob"), (["--shots", "extreme close-up"], "extreme"),
                                       (["--colours", "red", "--backgrounds", "red"], "invisible"),
                                       (["--caption", "a {color} {shape}"], "color"),
                                       (["--exclude", "red blob on blue"], "blob"),
                                       (["--exclude", "red circle blue"], "COLOUR SHAPE on BACKGROUND"),
                                       (["--shapes", "circle", "--exclude", "red star on blue"],
                                        "nothing to leave out"),
                                       (["--shapes", "circle", "--colours", "red", "--backgrounds", "blue",
                                         "--exclude", "red circle on blue"], "every combination")])
def test_bad_input_is_one_paragraph(bad, word, tmp_path, capsys):
    from personae.cli.main import main

    assert main(["world", "render", str(tmp_path / "bad"), *bad]) == 2
    err = capsys.readouterr().err
    said = " ".join(err.split())  # the paragraph as read, whatever the terminal width wrapped
    assert word in said and "Traceback" not in err and err.strip().startswith("error:"), err
    assert not (tmp_path / "bad").exists()
