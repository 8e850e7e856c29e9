"""A1111's model-free ControlNet preprocessors (invert, lineart_standard, scribble_xdog, threshold, tile_resample,
blur_gaussian, recolor_luminance / _intensity): each map as the extension draws it, at the size it draws it, named
in the infotext as the extension names it and read back from A1111's PNGs, older names too."""

import numpy as np
import pytest
from PIL import Image

from personae.cli.main import main
from personae.config.addons import ControlRef
from personae.config.generate import GenerateSettings
from personae.data.control import CONTROL_TYPES, detect_control
from personae.errors import UserError
from personae.inference.controlnet import make_map
from personae.jobs.png_controls import unit_settings
from personae.media.controlnet_text import read_unit
from personae.media.png import read_png_text


def _drawing(width=96, height=64) -> Image.Image:
    """Black lines on white: a horizontal line at row 20 and a vertical one at column 60, 2 px thick."""
    x = np.full((height, width, 3), 255, np.uint8)
    x[20:22, 8:88] = 0
    x[8:56, 60:62] = 0
    return Image.fromarray(x)


def _px(image):
    return np.asarray(image.convert("RGB")).astype(int)


def test_every_model_free_type_is_offered_under_the_extensions_module_name():
    modules = {t.a1111_module for t in CONTROL_TYPES.values()}
    assert {"invert (from white bg & black line)", "lineart_standard (from white bg & black line)", "scribble_xdog",
            "threshold", "tile_resample", "blur_gaussian", "recolor_luminance", "recolor_intensity"} <= modules


def test_line_maps_find_black_lines_on_white_as_white_lines_on_black():
    drawing = _drawing()
    inverted = _px(detect_control("invert", drawing))
    assert np.array_equal(inverted, 255 - _px(drawing))
    for kind in ("lineart_standard", "scribble_xdog"):
        lines = _px(detect_control(kind, drawing))[..., 0]
        assert lines[20:22, 20:50].min() > 100, kind  # on the lines
        assert lines[40:50, 10:40].max() == 0, kind  # far from them: black
    # scribble_xdog's threshold: higher keeps fewer pixels
    few = (_px(detect_control("scribble_xdog", drawing, {"threshold": 64}))[..., 0] > 0).sum()
    many = (_px(detect_control("scribble_xdog", drawing, {"threshold": 1}))[..., 0] > 0).sum()
    assert 0 < few < many


def test_threshold_tile_blur_and_recolor_as_the_extension_computes_them():
    x = np.zeros((40, 60, 3), np.uint8)
    x[:, :30] = (200, 150, 128)  # every channel above 127: white
    x[:, 30:] = (200, 126, 255)  # one channel at or below: black
    binary = _px(detect_control("threshold", Image.fromarray(x)))
    assert (binary[:, :30] == 255).all() and (binary[:, 30:] == 0).all()
    assert (_px(detect_control("threshold", Image.fromarray(x), {"threshold": 200}))[:, :30] == 0).all()

    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (81, 121, 3), dtype=np.uint8))
    assert detect_control("tile_resample", photo, {"rate": 2}).size == (60, 40)  # int(121 / 2), int(81 / 2)
    assert np.array_equal(_px(detect_control("tile_resample", photo, {"rate": 1.05})), _px(photo))  # below 1.1: as is
    blurred = _px(detect_control("blur_gaussian", photo, {"sigma": 3}))
    assert blurred.std() < 0.5 * _px(photo).std()

    # recolor_luminance reads RGB pixels through OpenCV's BGR conversion, as the extension does: pure red gets
    # blue's lightness (L* 32) and pure blue red's (L* 53), on 0..255
    red, blue = (Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 0, 255)))
    assert _px(detect_control("recolor_luminance", red))[0, 0, 0] == pytest.approx(0.323 * 255, abs=2)
    assert _px(detect_control("recolor_luminance", blue))[0, 0, 0] == pytest.approx(0.532 * 255, abs=2)
    grey = Image.new("RGB", (4, 4), (10, 128, 60))  # HSV value: the largest channel, 128, to the power gamma
    assert _px(detect_control("recolor_intensity", grey, {"gamma": 2}))[0, 0].tolist() == [64] * 3
    with pytest.raises(UserError, match=r"tile_resample's rate must lie between 1 and 8"):
        detect_control("tile_resample", photo, {"rate": 9})


def test_each_map_is_made_at_the_size_the_extension_makes_it(tmp_path):
    """lineart_standard / scribble_xdog / threshold / blur_gaussian see the photo at Processor Res; tile_resample,
    invert and recolor see it as it is."""
    photo = _drawing(300, 200)
    photo.save(tmp_path / "drawing.png")
    for kind, size in (("lineart_standard", (192, 128)), ("blur_gaussian", (192, 128)), ("invert", (300, 200)),
                       ("tile_resample", (150, 100)), ("recolor_luminance", (300, 200))):
        options = {"rate": 2.0} if kind == "tile_resample" else {}
        ref = ControlRef(type=kind, image=str(tmp_path / "drawing.png"), model="m", processor_res=128, options=options)
        assert make_map(ref, photo, 128).size == size, kind


def test_a1111_pngs_name_them_by_the_extensions_names_old_and_new():
    for module, kind in (("invert (from white bg & black line)", "invert"), ("invert", "invert"),
                         ("lineart_standard (from white bg & black line)", "lineart_standard"),
                         ("tile_resample", "tile_resample"), ("threshold", "threshold")):
        fields = read_unit(f"Module: {module}, Model: control_v11f1e_sd15_tile [a371b31b], Weight: 1, Resize Mode: "
                           "Crop and Resize, Processor Res: 512, Threshold A: 2, Guidance Start: 0, Guidance End: 1, "
                           "Pixel Perfect: False, Control Mode: Balanced")
        unit = unit_settings(fields, "x.png", "ControlNet 0")
        assert unit["type"] == kind, module
    tile = unit_settings(read_unit("Module: tile_resample, Model: control_v11f1e_sd15_tile [a371b31b], Weight: 1, "
                                   "Threshold A: 2"), "x.png", "ControlNet 0")
    assert tile["options"] == {"rate": 2.0} and tile["model"] == "lllyasviel/control_v11f1e_sd15_tile"


def test_generate_with_a_tile_unit_writes_the_extensions_unit_and_draws_again_from_its_png(tiny_model, tmp_path):
    from personae.models.controlnet import write_tiny_controlnet

    net = write_tiny_controlnet(tmp_path / "tile", base=tiny_model[0], seed=0)
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(photo)
    args = ["generate", "--model", str(tiny_model[0]), "--prompt", "a cat", "--steps", "3", "--width", "64",
            "--height", "64", "--seed", "3", "--control", f"tile_resample:{photo}", "--controlnet",
            f"tile_resample={net}", "--control-option", "tile_resample.rate=2", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    [made] = (tmp_path / "a").glob("*.png")
    assert "Module: tile_resample, Model: tile, Weight: 1" in read_png_text(made)["parameters"]
    assert "Threshold A: 2" in read_png_text(made)["parameters"]
    assert main(["generate", "--from-png", str(made), "--quiet", "--out", str(tmp_path / "b")]) == 0  # its own PNG
    [again] = (tmp_path / "b").glob("*.png")
    assert np.array_equal(_px(Image.open(again)), _px(Image.open(made)))
    # a picture typed for the PNG's unit keeps the unit's stored settings (its rate), as for an A1111 PNG's units
    assert main(["generate", "--from-png", str(made), "--control", f"tile_resample:{photo}", "--quiet",
                 "--out", str(tmp_path / "typed")]) == 0
    [typed] = (tmp_path / "typed").glob("*.png")
    assert np.array_equal(_px(Image.open(typed)), _px(Image.open(made)))
    assert main(args[:-3] + ["--control-option", "tile_resample.rate=1", "--quiet", "--out", str(tmp_path / "c")]) == 0
    [plain] = (tmp_path / "c").glob("*.png")
    assert not np.array_equal(_px(Image.open(plain)), _px(Image.open(made)))  # the shrunk map steers otherwise


def test_a_comfyui_image_invert_before_the_controlnet_is_the_invert_preprocessor(tmp_path):
    """ComfyUI's ImageInvert (1 - x on 0..1) between LoadImage and ControlNetApplyAdvanced: A1111's invert."""
    from test_comfy_png import comfy_png, controlnet_graph

    from personae.jobs.png_controls import png_control_units

    graph = controlnet_graph(name="control_v11p_sd15_lineart.pth")
    graph["23"] = {"class_type": "ImageInvert", "inputs": {"image": ["21", 0]}}
    graph["22"]["inputs"]["image"] = ["23", 0]
    [unit] = png_control_units(comfy_png(tmp_path / "invert.png", graph))
    lineart = "lllyasviel/control_v11p_sd15_lineart"
    assert (unit["type"], unit["_picture"], unit["model"]) == ("invert", "pose.png", lineart)


def test_a_black_on_white_drawing_through_invert_steers_the_world_controlnet_as_its_silhouette(tmp_path):
    """On the shipped world: a held-out shape drawn black on white, through A1111's invert preprocessor, is the
    silhouette the world ControlNet reads (white on black): the pictures equal the silhouette's pixel for pixel,
    and the checker finds the prompt's shape where the drawing put it."""
    from personae.cli.main import quiet_libraries
    from personae.inference.session import open_session
    from personae.inference.txt2img import txt2img
    from personae.world.control_eval import generate_placed, score
    from personae.world.model import write_world_controlnet, write_world_model
    from personae.world.placed import eval_placed, silhouette

    quiet_libraries()
    world, cn = write_world_model(tmp_path / "world"), write_world_controlnet(tmp_path / "cn")
    session = open_session(str(world), device="cpu")
    controls = eval_placed(64)[:8]
    as_silhouette = generate_placed(session, str(cn), controls, "silhouette", tmp_path / "raw")
    placed = 0
    for i, (shape, expected) in enumerate(zip(controls, as_silhouette)):
        drawing = tmp_path / f"drawing-{i}.png"
        Image.fromarray(255 - np.asarray(silhouette(shape).convert("RGB"))).save(drawing)
        unit = ControlRef(type="invert", image=str(drawing), model=str(cn), pixel_perfect=True)
        settings = GenerateSettings(model=str(world), prompt=shape.caption(), seed=i, controls=[unit], device="cpu")
        image = txt2img(settings, session)[0].image
        assert np.array_equal(_px(image), _px(expected)), i
        placed += score(image, shape)["placed"]
    assert placed >= 7, placed
