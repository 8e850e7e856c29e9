"""The shapes world (issue #8): generator, exact checker, tokenizer, model and a shortened pretraining."""

import json

import numpy as np
import pytest
from PIL import Image

from personae.data.world import (BACKGROUNDS, COLOURS, EVAL_PROMPTS, HELD_OUT, SHAPES, SIZES, TRAINED, caption,
                                 caption_words, parse_prompt, render, world_samples)
from personae.evaluation.world_check import accuracy, agreement, check


def test_world_covers_what_the_issue_asks():
    for name in ("red", "green", "blue", "yellow"):
        assert name in COLOURS and name in BACKGROUNDS
    assert {"circle", "square", "triangle"} <= set(TRAINED)
    assert set(HELD_OUT) == {"star", "heart"} and not set(HELD_OUT) & set(TRAINED)
    assert list(SIZES) == ["close-up", "medium shot", "full shot"]
    assert caption("circle", "red", "blue", "close-up") == "a red circle on a blue background, close-up"
    image = render("circle", "red", "blue", "close-up")
    assert image.size == (32, 32) and image.mode == "RGB"
    assert len(EVAL_PROMPTS) == 16 == len(set(EVAL_PROMPTS))
    for prompt in EVAL_PROMPTS:
        wanted = parse_prompt(prompt)
        assert wanted.shape in TRAINED and wanted.colour != wanted.background
        assert caption(wanted.shape, wanted.colour, wanted.background, wanted.size) == prompt


def test_sampler_is_seeded_and_leaves_out_held_out_shapes():
    a = [(np.asarray(i), c) for i, c, _ in world_samples(seed=5, count=40)]
    b = [(np.asarray(i), c) for i, c, _ in world_samples(seed=5, count=40)]
    assert all(np.array_equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(a, b))
    shapes = {attrs.shape for _, _, attrs in world_samples(seed=0, count=300)}
    assert shapes == set(TRAINED)


def test_checker_reads_generator_images_exactly():
    """>= 99 % on 600 images of every shape, held-out ones included (seen: 600 of 600, positions within 1 px)."""
    pairs = [(check(image), attrs) for image, _, attrs in world_samples(seed=11, count=600, shapes=SHAPES)]
    assert {w.shape for _, w in pairs} == set(SHAPES)
    scores = accuracy(pairs)
    assert scores["all"] >= 0.99, scores
    close = [agreement(f, w, position_tolerance=1 / 32)["position"] for f, w in pairs]
    assert sum(close) / len(close) >= 0.99


def test_checker_on_odd_input():
    blank = Image.new("RGB", (32, 32), COLOURS["green"])
    found = check(blank)
    assert found.background == "green" and found.shape == "none"
    big = render("heart", "white", "red", "medium shot").resize((128, 128), Image.BICUBIC)
    assert (check(big).shape, check(big).size) == ("heart", "medium shot")
    assert not agreement(check(big), parse_prompt("a white star on a red background, medium shot"))["all"]


def test_world_tokenizer(tmp_path):
    from transformers import CLIPTokenizer

    from personae.models.world_tokenizer import write_world_tokenizer

    write_world_tokenizer(tmp_path / "a")
    write_world_tokenizer(tmp_path / "b")
    for name in ("vocab.json", "merges.txt"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    tok = CLIPTokenizer.from_pretrained(str(tmp_path / "a"))  # the loader every tool uses
    vocab = json.loads((tmp_path / "a" / "vocab.json").read_text())
    assert len(tok) == len(vocab) < 1000
    assert tok.bos_token_id == vocab["<|startoftext|>"] and tok.eos_token_id == vocab["<|endoftext|>"]
    for word in caption_words():
        assert len(tok(word).input_ids) == 3, word  # start, the word, end
    ids = tok(EVAL_PROMPTS[0]).input_ids
    assert tok.convert_ids_to_tokens(ids)[1:-1] == ["a</w>", "green</w>", "square</w>", "on</w>", "a</w>", "yellow</w>",
                                                   "background</w>", ",</w>", "close</w>", "-</w>", "up</w>"]
    assert tok.convert_ids_to_tokens(tok("SKS").input_ids)[1:-1] == ["s", "k", "s</w>"]
    assert tok.convert_ids_to_tokens(tok("<star>").input_ids)[1:-1] == ["<</w>", "star</w>", "></w>"]
    assert tok.eos_token_id not in tok("zqxj").input_ids[1:-1]  # nothing unknown
