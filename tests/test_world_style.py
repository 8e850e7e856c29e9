"""A drawing style on the shapes world (issue #20 part 2): the banded style drawn by the generator and read back by
the checker (on its own pictures and after the world VAE's round trip), the measure's prompts, render and the
measure's command. The LoRA taught from banded pictures whose captions end with a trigger phrase is held to the bar
in tests/test_cli.py, on the demo's own run of the recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from personae.world.check import check, read_style
from personae.world.scene import SHAPES, SIZES, random_attributes, render, render_banded

SHOTS = ("close-up", "medium shot")  # the sizes the style is measured at (a 10 px shape is one or two bands)


def _pictures(seed: int, count: int, sizes=tuple(SIZES)):
    rng, out = np.random.default_rng(seed), []
    while len(out) < count:
        attrs, offset = random_attributes(rng, SHAPES)
        if attrs.size in sizes:
            out.append((attrs, offset))
    return out


def _content(found):
    return found.shape, found.colour, found.background, found.size


def test_the_banded_style_keeps_the_shape_on_band_rows_only():
    flat = np.asarray(render("square", "red", "blue", "close-up"))
    banded = np.asarray(render_banded("square", "red", "blue", "close-up"))
    blue, red = np.array([40, 80, 220]), np.array([220, 40, 40])
    column = banded[:, 16]
    assert (flat[:, 16] == red).all(axis=1).sum() == 24  # the flat square: 24 rows of red in the middle column
    # bands of 5 red rows with 3 rows of background between them, fixed to the picture's rows (0-4, 8-12, ...)
    assert [int((column[y] == red).all()) for y in range(4, 28)] == [1] + ([0] * 3 + [1] * 5) * 2 + [0] * 3 + [1] * 4
    assert (column[:4] == blue).all() and (column[29:] == blue).all()
    with pytest.raises(ValueError):
        render_banded("square", "red", "red", "close-up")


def test_read_style_is_exact_on_rendered_pictures_and_check_is_unchanged_on_flat_ones():
    """Flat pictures: read "flat" with check's own attributes, every size (check itself is the untouched reading).
    Banded ones at close-up and medium shot: read "banded" with shape, colour, background and size right."""
    for attrs, offset in _pictures(seed=3, count=120):
        image = render(attrs.shape, attrs.colour, attrs.background, attrs.size, offset)
        style, found = read_style(image)
        assert style == "flat" and found == check(image), attrs
        assert _content(found) == _content(attrs)
    right = 0
    pictures = _pictures(seed=4, count=120, sizes=SHOTS)
    for attrs, offset in pictures:
        style, found = read_style(render_banded(attrs.shape, attrs.colour, attrs.background, attrs.size, offset))
        assert style == "banded", attrs
        right += _content(found) == _content(attrs)
    assert right >= 0.98 * len(pictures), right  # 120 of 120 measured (and 548 of 548 with stars and hearts)
    blank = Image.new("RGB", (32, 32), (40, 170, 60))
    assert read_style(blank)[0] == "none"


def test_read_style_after_the_world_vae_round_trip():
    """What the world model can draw at best: every picture through the shipped VAE and back. The style is read
    right on every one; the content on most (the VAE rounds the bands' ends: diamonds and stars suffer)."""
    from diffusers import AutoencoderKL

    from personae.world.model import WORLD_DIR

    vae = AutoencoderKL.from_pretrained(str(WORLD_DIR / "vae")).eval()
    pictures = _pictures(seed=5, count=96, sizes=SHOTS)
    for style, paint in (("flat", render), ("banded", render_banded)):
        images = np.stack([np.asarray(paint(a.shape, a.colour, a.background, a.size, o)) for a, o in pictures])
        x = torch.tensor(images, dtype=torch.float32).permute(0, 3, 1, 2) / 127.5 - 1
        with torch.no_grad():
            y = vae.decode(vae.encode(x).latent_dist.mode()).sample
        back = ((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        readings = [read_style(image) for image in back]
        assert [s for s, _ in readings] == [style] * len(pictures)
        right = sum(_content(f) == _content(a) for (_, f), (a, _) in zip(readings, pictures))
        # measured on 548 pictures: flat 100 %; banded 94.4 % at close-up, 81.0 % at medium shot (stars, hearts and
        # diamonds lose their points; the world's trained shapes alone: 91.5 % and 89.1 %)
        assert right >= (0.97 if style == "flat" else 0.8) * len(pictures), (style, right)


def test_world_render_draws_the_style_and_the_checker_reads_every_file_back(tmp_path):
    import json

    from personae.cli.main import main
    from personae.world.render import render_world
    from personae.world.render_settings import WorldRender

    result = render_world(WorldRender(style="banded", count=24, shots="close-up,medium"), tmp_path / "ksh")
    assert json.loads((tmp_path / "ksh/render.json").read_text())["settings"]["style"] == "banded"
    for p in result.pictures:
        style, found = read_style(Image.open(tmp_path / "ksh" / p.file))
        assert style == "banded" and _content(found) == (p.shape, p.colour, p.background, p.shot), p
    with pytest.raises(SystemExit) as exit_:  # argparse names the styles there are
        main(["world", "render", str(tmp_path / "x"), "--style", "hatched", "--quiet"])
    assert exit_.value.code == 2 and not (tmp_path / "x").exists()


def test_style_prompts_are_unseen_combinations_with_and_without_the_trigger():
    from personae.demo.world_style import PICTURES
    from personae.world.render import plan
    from personae.world.render_settings import WorldRender
    from personae.world.style import HELD_OUT, NEW, SEEDS, TRIGGER, style_prompts

    plan_ = style_prompts()
    assert len(plan_) == 2 * len(HELD_OUT) * 2 * SEEDS == 128
    on = [p for p in plan_ if p[1]]
    off = [p for p in plan_ if not p[1]]
    assert [p[0] for p in on] == [p[0] + TRIGGER for p in off] and [p[3] for p in on] == [p[3] for p in off]
    assert on[0][0] == "a red circle on a green background, close-up, drawn by KSH style"
    assert style_prompts(combinations="new")[0][0] == "a red ring on a blue background, close-up, drawn by KSH style"
    # the example's training pictures (banded and flat) never show a held-out combination, yet every shape, colour
    # and background of them; the new set's shapes and colours are never drawn in the style at all
    trained = {(p.shape, p.colour, p.background) for seed in (0, 1) for p in plan(WorldRender(seed=seed, **PICTURES))}
    assert not trained & set(HELD_OUT)
    for i in range(3):
        assert {c[i] for c in HELD_OUT} == {c[i] for c in trained}
    for shape, colour, background in NEW:
        assert shape in ("ring", "diamond") or colour in ("yellow", "white"), (shape, colour)
    for combos in (HELD_OUT, NEW):  # every background twice
        assert sorted(b for _, _, b in combos) == sorted(["red", "green", "blue", "yellow"] * 2)
    assert sorted(s for s, _, _ in HELD_OUT) == sorted(["circle", "square", "triangle", "cross"] * 2)
    assert sorted(c for _, c, _ in HELD_OUT) == sorted(["red", "green", "blue", "black"] * 2)


# The LoRA learning the style with its trigger only (issue #20 part 2's bar, on 16 seeds) is held in
# tests/test_cli.py on the demo's own LoRA: the demo trains exactly this recipe, at one thread there too.


def test_style_measure_refuses_a_folder_of_the_users_before_drawing(tmp_path, capsys):
    from personae.cli.main import main

    lora = tmp_path / "ksh.safetensors"
    lora.write_bytes(b"not read: the folder is refused first")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert main(["world", "style", "--lora", str(lora), "--out", str(mine)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "personae did not write (notes.txt)" in err and "Traceback" not in err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"] and (mine / "notes.txt").read_text() == "mine"


def test_style_measure_shows_progress_and_takes_quiet(tmp_path, capsys):
    """`personae world style` draws its pictures under a progress bar (stderr) that reaches every picture, and
    `--quiet` leaves stderr empty; the four lines it prints are the same either way."""
    from personae.cli.main import main

    printed = {}
    for quiet in (False, True):
        assert main(["world", "style", "--seeds", "1"] + (["--quiet"] if quiet else [])) == 0
        out, err = capsys.readouterr()
        printed[quiet] = out
        if quiet:
            assert err == ""
        else:
            assert "pictures" in err and "32/32" in err, err[-300:]
    assert printed[False] == printed[True] and "style without the trigger (leakage) | 0 of 16" in printed[True]
