"""Shot tokens on the shapes world (issue #20, must show 1): three tokens taught by textual inversion from world
pictures sorted by framing, whose captions never say the framing, set the size of what the model draws."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

RECIPE = Path(__file__).resolve().parents[1] / "examples/storyboard-world/shots.yaml"


def test_shot_prompts_are_3_shots_by_8_combinations_by_4_seeds_with_held_out_shapes():
    from personae.world.shots import HELD_OUT, SHOT_TOKENS, shot_prompts

    plan = shot_prompts(SHOT_TOKENS)
    assert len(plan) == 96 and len({p for p in plan}) == 96
    assert sum(shape in HELD_OUT for _, _, shape, _ in plan) == 48
    assert plan[0][0] == "a blue circle on a yellow background, <cu_trg>"


@pytest.mark.slow  # trains and generates: the full tier only
def test_shot_tokens_from_rendered_folders_draw_the_right_size(tmp_path):
    """The example's recipe (examples/storyboard-world/shots.yaml: 200 steps from the neutral word "picture") on
    the example's pictures (48 circles, squares, triangles and crosses, by shot): >= 90 % of the 96 generations
    at the size their token asks for, held-out shapes (ring, diamond, star, heart) included. Measured: 96 of 96
    (docs/world.md). One torch thread, as measured."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _teach_and_score(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _teach_and_score(tmp_path):
    from personae.config.base import parse_settings
    from personae.config.prepare import PrepareSettings
    from personae.config.train import TrainJob
    from personae.data.prepare import prepare_dataset
    from personae.inference.session import open_session
    from personae.jobs.train import run_training
    from personae.world.model import write_world_model
    from personae.world.render import render_world
    from personae.world.render_settings import WorldRender
    from personae.world.shots import SHOT_TOKENS, score_shots

    # the README's commands, as calls: the model, the pictures by shot, the prepared set with the tokens
    model = write_world_model(tmp_path / "world")
    render_world(WorldRender(count=48, by="shot", shapes="circle,square,triangle,cross",
                             caption="a {colour} {shape} on a {background} background"), tmp_path / "shots")
    prepare_dataset(tmp_path / "shots", tmp_path / "prepared-shots",
                    PrepareSettings(resolution=32, min_side=32, template="{caption}, {token}",
                                    folder_tokens="close_up=<cu_trg>,medium=<ms_trg>,full=<fs_trg>"))
    job = yaml.safe_load(RECIPE.read_text(encoding="utf-8"))
    job.update(base_model=str(model), data={"path": str(tmp_path / "prepared-shots")},
               output=str(tmp_path / "runs/shots"), device="cpu")
    result = run_training(parse_settings(TrainJob, job, str(RECIPE)))
    embeddings = [(str(tmp_path / "runs/shots" / f.path), f.token) for f in result.exports if f.format == "a1111"]
    assert sorted(token for _, token in embeddings) == sorted(SHOT_TOKENS.values())
    scores = score_shots(open_session(str(model), device="cpu", embeddings=embeddings).pipe, SHOT_TOKENS)
    assert scores["share"] >= 0.9 and scores["held_out_share"] >= 0.9, scores
    assert min(scores["by_shot"].values()) >= 0.8 * scores["per_shot_total"], scores  # each token, not two of three


def test_the_command_without_tokens_or_words_says_what_to_pass(capsys):
    from personae.cli.main import main

    assert main(["world", "shots"]) == 2
    err = capsys.readouterr().err
    assert "--embedding" in err and "--words" in err and "Traceback" not in err
