"""The world ControlNet (issue #19): shapes placed by a control map, measured exactly on held-out controls."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from personae.world.check import check
from personae.world.placed import (
    CONTROL_SHAPES,
    EVAL_COMBOS,
    EVAL_SHAPES,
    TRAIN_COMBOS,
    Placed,
    centre_range,
    control_map,
    eval_placed,
    random_placed,
    silhouette,
)
from personae.world.scene import MARGIN, SIDE, SIZES, TRAINED, render


def test_placed_shapes_are_read_back_where_they_were_put():
    """Any position and size the ControlNet trains on is read back by the checker: centre within half a pixel,
    the size class of the box, the shape; the box never comes within MARGIN of the border."""
    rng = np.random.default_rng(0)
    for placed in [random_placed(rng) for _ in range(40)] + eval_placed(24):
        found = check(placed.image())
        distance = math.hypot(found.position[0] * SIDE - placed.centre[0], found.position[1] * SIDE - placed.centre[1])
        near_a_boundary = any(abs(math.log(placed.box ** 2 / (SIZES[a] * SIZES[b]))) < 0.1
                              for a, b in (("full shot", "medium shot"), ("medium shot", "close-up")))
        assert distance < 0.5 and (found.size == placed.size or near_a_boundary), (placed, found)
        assert found.colour == placed.colour and found.background == placed.background
        lo, hi = centre_range(placed.box)
        assert lo >= MARGIN + placed.box / 2 - 1e-9 and all(lo <= c <= hi for c in placed.centre)
    # a centred placement at a size class is the scene's own picture, pixel for pixel
    assert np.array_equal(np.asarray(Placed("ring", "red", "blue", SIZES["medium shot"], (16.0, 16.0)).image()),
                          np.asarray(render("ring", "red", "blue", "medium shot")))


def test_the_measured_controls_are_held_out():
    assert not set(EVAL_SHAPES) & set(CONTROL_SHAPES) and set(EVAL_SHAPES) | set(CONTROL_SHAPES) == set(TRAINED)
    assert not set(EVAL_COMBOS) & set(TRAIN_COMBOS) and len(EVAL_COMBOS) + len(TRAIN_COMBOS) == 20
    rng = np.random.default_rng(1)
    seen = {(p.shape, p.colour, p.background) for p in (random_placed(rng) for _ in range(2000))}
    assert {s for s, _, _ in seen} == set(CONTROL_SHAPES) and {(c, b) for _, c, b in seen} == set(TRAIN_COMBOS)
    controls = eval_placed(64)
    assert {p.size for p in controls} == set(SIZES) and {p.shape for p in controls} == set(EVAL_SHAPES)
    assert {(p.colour, p.background) for p in controls} == set(EVAL_COMBOS)
    assert eval_placed(64) == controls  # the same controls every time


def test_control_maps_are_what_generate_reads():
    """canny: `personae detect canny`'s map of the picture; silhouette: the exact coverage, white on black."""
    from personae.data.control import detect_control

    placed = Placed("square", "white", "yellow", 12.0, (9.5, 22.0))
    assert np.array_equal(np.asarray(control_map(placed, "canny")), np.asarray(detect_control("canny", placed.image())))
    edges = np.asarray(control_map(placed, "canny"))[..., 0]
    ys, xs = np.nonzero(edges)
    assert abs(xs.mean() + 0.5 - 9.5) < 1 and abs(ys.mean() + 0.5 - 22.0) < 1
    grey = np.asarray(silhouette(placed))
    assert grey.shape == (SIDE, SIDE, 3) and grey[22, 9].tolist() == [255] * 3 and grey[2, 2].tolist() == [0] * 3
    assert abs(grey[..., 0].sum() / 255 - 144) < 6  # a 12 px square covers 144 px (PIL fills edges: 147)
    with pytest.raises(ValueError, match="unknown control type"):
        control_map(placed, "depth")


SHORT = ["dataset_size=64", "batch_size=4", "eval.every=2", "eval.controls=2", "eval.steps=3", "warmup_steps=1"]


@pytest.fixture(scope="module")
def short_controlnet(tmp_path_factory):
    """`personae world controlnet OUT --steps 4` on 64 pairs at batch 4: the plumbing, not the learning."""
    from personae.cli.main import main

    out = tmp_path_factory.mktemp("cn") / "cn"
    assert main(["world", "controlnet", str(out), "--steps", "4", "--quiet"] + [a for s in SHORT for a in ("--set", s)]) == 0
    return out


def test_short_controlnet_training_writes_a_controlnet_that_generate_reads(short_controlnet, tmp_path):
    from diffusers import ControlNetModel, UNet2DConditionModel

    from personae.cli.main import main
    from personae.world.controlnet_settings import WorldControlNet
    from personae.world.model import WORLD_DIR

    for name in ("config.json", "diffusion_pytorch_model.safetensors", "training/settings.yaml", "training/losses.csv",
                 "training/summary.json", "training/samples-000002.png", "training/samples-000004.png"):
        assert (short_controlnet / name).is_file(), name
    summary = json.loads((short_controlnet / "training/summary.json").read_text())
    assert summary["steps"] == 4 and [e["step"] for e in summary["evals"]] == [2, 4]
    assert set(summary["evals"][-1]) == {"step", "canny", "silhouette"}
    controlnet = ControlNetModel.from_pretrained(str(short_controlnet))
    unet = UNet2DConditionModel.from_pretrained(str(WORLD_DIR), subfolder="unet")
    # initialised from the world UNet (its encoder copied), conditioning 32 px -> 8x8, zero convolutions trained away
    assert controlnet.config.block_out_channels == unet.config.block_out_channels
    assert list(controlnet.config.conditioning_embedding_out_channels) == list(WorldControlNet().conditioning_channels)
    assert controlnet.controlnet_mid_block.weight.abs().max() > 0
    assert 0 < (controlnet.conv_in.weight - unet.conv_in.weight).abs().max() < 0.05  # 4 small steps from the copy
    picture = tmp_path / "picture.png"
    Placed("ring", "red", "blue", 10.0, (8.0, 23.0)).image().save(picture)
    out = tmp_path / "out"
    assert main(["generate", "--model", str(WORLD_DIR), "--prompt", "a red ring on a blue background, full shot",
                 "--control", f"canny:{picture}", "--controlnet", f"canny={short_controlnet}", "--steps", "3",
                 "--seed", "1", "--out", str(out), "--quiet"]) == 0
    (png,) = out.glob("*.png")
    assert Image.open(png).size == (SIDE, SIDE) and "Module: canny" in Image.open(png).text["parameters"]


def test_controlnet_training_is_reproducible_and_refuses_bad_settings(short_controlnet, tmp_path):
    from personae.cli.main import main

    again = tmp_path / "again"
    assert main(["world", "controlnet", str(again), "--steps", "4", "--quiet"] +
                [a for s in SHORT for a in ("--set", s)]) == 0
    name = "diffusion_pytorch_model.safetensors"
    assert (again / name).read_bytes() == (short_controlnet / name).read_bytes()
    assert main(["world", "controlnet", str(tmp_path / "x"), "--set", "box_range=[2,40]"]) == 2
    assert main(["world", "controlnet", str(tmp_path / "x"), "--set", "stepz=3"]) == 2
    assert main(["world", "controlnet", str(again), "--steps", "1"]) == 2  # a used folder needs --overwrite


# ---- the shipped ControlNet ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """`personae model world` and `personae model world-controlnet`: the model and ControlNet that ship."""
    from personae.cli.main import main

    root = tmp_path_factory.mktemp("shipped")
    assert main(["model", "world", str(root / "world")]) == 0
    assert main(["model", "world-controlnet", str(root / "cn")]) == 0
    return root / "world", root / "cn"


def test_shipped_controlnet_places_held_out_shapes(shipped, tmp_path):
    """Issue #19, must show: on 64 held-out controls per type (shapes, colour pairs and positions it never trained
    on; each size class), generate's defaults: the shape's centre within 2 px of the control's and its size class
    right in >= 90 %, shape colour and background as the prompt says in >= 90 %; weight 0 is no control at all."""
    from personae.cli.main import quiet_libraries
    from personae.inference.session import open_session
    from personae.world.control_eval import generate_placed, max_difference, measure_placement

    quiet_libraries()
    world, cn = shipped
    session = open_session(str(world), device="cpu")
    controls = eval_placed(64)
    for kind in ("canny", "silhouette"):
        scores = measure_placement(session, str(cn), controls, kind, tmp_path / kind)
        assert scores.shares["placed"] >= 0.9 and scores.shares["prompt"] >= 0.9, (kind, scores.shares)
    plain = generate_placed(session, None, controls[:8], "canny", tmp_path / "plain")
    for kind in ("canny", "silhouette"):
        off = generate_placed(session, str(cn), controls[:8], kind, tmp_path / kind, weight=0.0)
        assert max_difference(off, plain) == 0, kind


def test_guidance_windows_of_the_shipped_controlnet(shipped, tmp_path):
    """A1111's Guidance Start / End on the world ControlNet (docs/world.md): control in the first 30 % of the steps
    only still puts the shape near the control (mean centre error 1.6 px over 64, against 6 px without control);
    measured on the 16 first medium and full shots (a close-up has only 2 px of room to move)."""
    from personae.cli.main import quiet_libraries
    from personae.inference.session import open_session
    from personae.world.control_eval import measure_placement

    quiet_libraries()
    world, cn = shipped
    session = open_session(str(world), device="cpu")
    controls = [p for p in eval_placed(64) if p.size != "close-up"][:16]
    own = measure_placement(session, None, controls, "canny", tmp_path / "own")
    early = measure_placement(session, str(cn), controls, "canny", tmp_path / "early", start=0.0, end=0.3)
    assert early.mean_distance < 2.5 and early.mean_distance < own.mean_distance / 2, (early.mean_distance,
                                                                                       own.mean_distance)
    assert early.shares["placed"] >= 0.5 > own.shares["placed"], (early.shares, own.shares)


def test_shipped_controlnet_was_made_by_the_default_training(shipped):
    import yaml

    from personae.world.controlnet_settings import WorldControlNet
    from personae.world.model import WORLD_CONTROLNET_DIR

    recorded = yaml.safe_load((WORLD_CONTROLNET_DIR / "training/settings.yaml").read_text())
    assert recorded == WorldControlNet().model_dump(mode="json")
    summary = json.loads((WORLD_CONTROLNET_DIR / "training/summary.json").read_text())
    assert summary["steps"] == WorldControlNet().steps and summary["seconds"]["total"] < 30 * 60
    assert (shipped[1] / "diffusion_pytorch_model.safetensors").stat().st_size < 5e6
