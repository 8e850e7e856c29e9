"""A drawing style on the shapes world (issue #20 part 2): the banded style drawn by the generator and read back by
the checker (on its own pictures and after the world VAE's round trip), then taught by a LoRA from banded pictures
whose captions end with a trigger phrase, and measured: the style with the trigger on combinations the training set
lacks, its absence without the trigger, the content still right."""

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
    # bands of 7 red rows with 3 rows of background between them, fixed to the picture's rows
    assert [int((column[y] == red).all()) for y in range(4, 28)] == [1] * 5 + [0] * 3 + [1] * 7 + [0] * 3 + [1] * 6
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
    assert right >= 0.98 * len(pictures), right  # 120 of 120 measured (and 99.6 % of 548 with stars and hearts)
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
        # measured on 548 pictures: flat 100 %; banded 99.3 % at close-up, 86.7 % at medium shot (stars: half)
        assert right >= (0.97 if style == "flat" else 0.85) * len(pictures), (style, right)


def test_style_prompts_are_unseen_combinations_with_and_without_the_trigger():
    from personae.world.style import COMBINATIONS, SEEDS, TRIGGER, style_prompts

    plan = style_prompts()
    assert len(plan) == 2 * len(COMBINATIONS) * 2 * SEEDS == 128
    on = [p for p in plan if p[1]]
    off = [p for p in plan if not p[1]]
    assert [p[0] for p in on] == [p[0] + TRIGGER for p in off] and [p[3] for p in on] == [p[3] for p in off]
    assert on[0][0] == "a red ring on a blue background, close-up, drawn by KSH style"
    for shape, colour, background in COMBINATIONS:  # none in the example's training set
        assert shape in ("ring", "diamond") or colour in ("yellow", "white"), (shape, colour)
    assert sorted(b for _, _, b in COMBINATIONS) == sorted(["red", "green", "blue", "yellow"] * 2)
