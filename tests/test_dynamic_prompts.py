"""Dynamic Prompts' template syntax ({a|b}, {2$$a|b|c}, __wildcards__), drawn per image from its seed."""

import random
from collections import Counter

import numpy as np
import pytest

from personae.config.generate import GenerateSettings
from personae.data.dynamic_prompts import Wildcards, image_prompts, is_template, resolve
from personae.errors import UserError


def _draw(template, seed=0, folder=None):
    return resolve(template, random.Random(seed), Wildcards(folder))


def _wildcards(root):
    (root / "people").mkdir(parents=True)
    (root / "season.txt").write_text("# seasons\nsummer\n\nautumn\n")
    (root / "people" / "hats.txt").write_text("a red hat\na {straw|felt} hat\n")
    (root / "people" / "shoes.txt").write_text("boots\n")
    (root / "loop.txt").write_text("__loop__\n")
    return root


def test_variants_counts_weights_and_joiners_draw_as_dynamic_prompts():
    assert not is_template("masterpiece, {best quality}, [a|b], (red:1.2)")  # A1111's syntax and plain braces
    assert _draw("masterpiece, {best quality}, [a|b], (red:1.2)") == "masterpiece, {best quality}, [a|b], (red:1.2)"
    seen = Counter(_draw("a {cat|dog|fox}", seed) for seed in range(300))
    assert set(seen) == {"a cat", "a dog", "a fox"} and min(seen.values()) > 60
    for seed in range(50):
        two = _draw("{2$$red|green|blue}", seed).split(", ")
        assert len(two) == 2 and len(set(two)) == 2 and set(two) <= {"red", "green", "blue"}
        some = _draw("{1-3$$ and $$a|b|c}", seed).split(" and ")
        assert 1 <= len(some) <= 3 and len(set(some)) == len(some)
        assert _draw("{0::never|1::always}", seed) == "always"
        assert _draw("{a {big|small} {cat|dog}|nothing}", seed) in {"a big cat", "a big dog", "a small cat",
                                                                    "a small dog", "nothing"}
    assert _draw("{3$$a|b}", 1) in ("a, b", "b, a")  # at most every option once
    with pytest.raises(UserError, match="no option with a weight above 0"):  # one paragraph, no traceback
        _draw("{0::a|0::b}")
    assert _draw("{2$$1::a|0::b}") == "a"  # a weight of 0 is never drawn, even to make up a count
    assert _draw("same {x|y|z}", 7) == _draw("same {x|y|z}", 7)  # the seed decides


def test_wildcards_are_lines_of_their_files(tmp_path):
    folder = _wildcards(tmp_path / "wildcards")
    assert is_template("__season__")
    assert {_draw("__season__", s, str(folder)) for s in range(40)} == {"summer", "autumn"}  # comments, blanks out
    hats = {_draw("__people/hats__", s, str(folder)) for s in range(60)}
    assert hats == {"a red hat", "a straw hat", "a felt hat"}  # a line's own variants drawn too
    assert {_draw("__people/*__", s, str(folder)) for s in range(80)} >= {"boots", "a red hat"}  # a glob
    assert len(_draw("{2$$__season__}", 3, str(folder)).split(", ")) == 2  # a count over a wildcard's lines
    webui = tmp_path / "webui"
    _wildcards(webui / "extensions" / "sd-dynamic-prompts" / "wildcards")
    assert _draw("__people/shoes__", 0, str(webui)) == "boots"  # the webui folder
    with pytest.raises(UserError, match=r'__sesaon__ has no file sesaon.txt .* Did you mean "season"'):
        _draw("__sesaon__", 0, str(folder))
    with pytest.raises(UserError, match="no wildcards folder was given"):
        _draw("__season__")
    with pytest.raises(UserError, match="nest more than 20 deep"):
        _draw("__loop__", 0, str(folder))
    with pytest.raises(UserError, match="no file"):  # a name may not climb out of the folder
        _draw("__../secret__", 0, str(folder))
    assert image_prompts("a {cat|dog}", "{ugly|blurry}", [5, 5, 6], None)[0] == image_prompts(
        "a {cat|dog}", "{ugly|blurry}", [5], None)[0]


def test_each_image_draws_its_prompt_from_its_seed_and_reproduces_alone(tiny_model, tiny_session, tmp_path):
    from personae.inference.txt2img import txt2img
    from personae.jobs.generate import settings_from_png
    from personae.media.png import parse_parameters, save_png

    folder = _wildcards(tmp_path / "wildcards")
    template = "a photo of a {cat|dog|fox}, __season__"
    base = {"model": str(tiny_model[0]), "steps": 3, "width": 64, "height": 64, "seed": 40}
    images = txt2img(GenerateSettings(**base, prompt=template, batch_size=2, batch_count=2,
                                      wildcards_dir=str(folder)), tiny_session)
    assert [i.seed for i in images] == [40, 41, 42, 43]
    drawn = [parse_parameters(i.parameters)[0] for i in images]
    assert drawn == [p for p, _ in image_prompts(template, "", [40, 41, 42, 43], str(folder))]
    assert len(set(drawn)) > 1 and all("{" not in p and "__" not in p for p in drawn)
    for image, prompt in zip(images, drawn):
        assert parse_parameters(image.parameters)[2]["Template"] == template  # as Dynamic Prompts writes it
        alone = txt2img(GenerateSettings(**{**base, "seed": image.seed}, prompt=prompt), tiny_session)[0]
        assert np.array_equal(np.asarray(alone.image), np.asarray(image.image))
    png = tmp_path / "a1111.png"
    save_png(images[1].image, png, images[1].parameters)
    data = settings_from_png(png)  # the drawn prompt, with no wildcard folder needed
    assert data["prompt"] == drawn[1] and data["seed"] == 41


def test_a_drawn_lora_tag_applies_only_to_the_images_that_drew_it(tiny_model, tmp_path):
    from test_generate import _kohya_lora

    from personae.inference.session import open_session
    from personae.inference.txt2img import txt2img

    lora = _kohya_lora(open_session(str(tiny_model[0]), device="cpu").pipe, tmp_path / "Lora" / "ink.safetensors")
    base = {"model": str(tiny_model[0]), "steps": 3, "width": 64, "height": 64, "seed": 3, "lora_dir": str(lora.parent)}
    images = txt2img(GenerateSettings(**base, prompt="a cat{ <lora:ink:1>|}", batch_size=4))
    inked = ["<lora:ink:1>" in i.parameters.splitlines()[0] for i in images]
    assert any(inked) and not all(inked)
    assert all("<lora:ink:0>" not in i.parameters for i in images)  # a LoRA not drawn is not named
    for image, used in zip(images, inked):
        assert [(l.path, l.weight) for l in image.settings.loras] == ([(str(lora.resolve()), 1.0)] if used else [])
        again = txt2img(image.settings)[0]  # personae's own PNG settings reproduce it, LoRA included
        assert np.array_equal(np.asarray(again.image), np.asarray(image.image)), image.seed
    first = images[inked.index(True)]
    without = txt2img(first.settings.model_copy(update={"loras": []}))[0]
    assert not np.array_equal(np.asarray(without.image), np.asarray(first.image))  # the drawn LoRA acted
