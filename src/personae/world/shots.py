"""Does a word set the framing? 3 shots x 8 shape / colour / background combinations x 4 seeds = 96 world
generations, each read back by the exact checker (world/check.py) for its size.

    scores = score_shots(pipe, SHOT_TOKENS)   # the learned tokens: "a red ring on a blue background, <cu_trg>"
    scores = score_shots(pipe, SHOT_WORDS)    # the plain size words: "... , close-up"
    scores["right"], scores["share"], scores["held_out_share"], scores["by_shot"]

Half the combinations use shapes a shot-token training set of circles, squares, triangles and crosses never
shows (ring, diamond), or that the world model never saw at all (star, heart): the held-out part.
"""

from __future__ import annotations

from personae.world.check import check
from personae.world.evaluate import generate_world
from personae.world.vocab import SIZES

SHOT_TOKENS = {"close-up": "<cu_trg>", "medium shot": "<ms_trg>", "full shot": "<fs_trg>"}
SHOT_WORDS = {size: size for size in SIZES}
COMBINATIONS = (  # (shape, colour, background): every colour and background at least once
    ("circle", "blue", "yellow"), ("square", "green", "red"), ("triangle", "black", "green"),
    ("cross", "red", "blue"), ("ring", "red", "blue"), ("diamond", "white", "green"),
    ("star", "yellow", "red"), ("heart", "black", "yellow"),
)
HELD_OUT = ("ring", "diamond", "star", "heart")  # not in the shot-token training set (star, heart: nowhere)
SEEDS = 4


def shot_prompts(words: dict[str, str], seeds: int = SEEDS) -> list[tuple[str, str, str, int]]:
    """(prompt, the size it asks for, the shape, seed) for every shot, combination and seed."""
    return [(f"a {colour} {shape} on a {background} background, {words[size]}", size, shape, seed)
            for size in SIZES for shape, colour, background in COMBINATIONS for seed in range(seeds)]


def score_shots(pipe, words: dict[str, str], seeds: int = SEEDS) -> dict:
    """How many of the generations come out at the size their shot asks for (DDIM 25, CFG 4: the world's
    evaluation settings), in all, on held-out shapes, and per shot."""
    plan = shot_prompts(words, seeds)
    images = generate_world(pipe, [p for p, _, _, _ in plan], [s for _, _, _, s in plan])
    right = [check(image).size == size for image, (_, size, _, _) in zip(images, plan)]
    held = [r for r, (_, _, shape, _) in zip(right, plan) if shape in HELD_OUT]
    by_shot = {size: sum(r for r, (_, s, _, _) in zip(right, plan) if s == size) for size in SIZES}
    return {"right": sum(right), "total": len(right), "share": sum(right) / len(right),
            "held_out_right": sum(held), "held_out_total": len(held), "held_out_share": sum(held) / len(held),
            "by_shot": by_shot, "per_shot_total": len(right) // len(SIZES)}
