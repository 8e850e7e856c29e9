"""Shot tokens on the shapes world (issue #20, must show 1): three tokens taught by textual inversion from world
pictures sorted by framing, whose captions never say the framing, set the size of what the model draws."""

from __future__ import annotations


def test_shot_prompts_are_3_shots_by_8_combinations_by_4_seeds_with_held_out_shapes():
    from personae.world.shots import HELD_OUT, SHOT_TOKENS, shot_prompts

    plan = shot_prompts(SHOT_TOKENS)
    assert len(plan) == 96 and len({p for p in plan}) == 96
    assert sum(shape in HELD_OUT for _, _, shape, _ in plan) == 48
    assert plan[0][0] == "a blue circle on a yellow background, <cu_trg>"


# The measure itself (>= 90 % of the 96 at their token's size, held-out shapes included, each token >= 80 %) runs on
# the tokens that examples/storyboard-world/README.md teaches as written: tests/test_docs.py::
# test_world_storyboard_example_runs_as_written_and_every_panel_is_right (one training serves both checks).


def test_the_command_without_tokens_or_words_says_what_to_pass(capsys):
    from personae.cli.main import main

    assert main(["world", "shots"]) == 2
    err = capsys.readouterr().err
    assert "--embedding" in err and "--words" in err and "Traceback" not in err
