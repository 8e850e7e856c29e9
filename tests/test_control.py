"""ControlNet (issue #5): control maps, ControlNet txt2img/img2img, multi-control, guidance window, CLI, recipe."""

import numpy as np
import pytest
import torch
from PIL import Image

from personae.cli.main import main
from personae.config.addons import ControlRef
from personae.config.generate import GenerateSettings
from personae.data.control import CONTROL_TYPES, detect_control
from personae.data.framing import detect_faces
from personae.errors import UserError
from personae.inference.controlnet import make_map
from personae.inference.txt2img import txt2img
from personae.jobs.generate import run_generate, settings_from_png
from personae.media.png import parse_parameters, read_png_text

pytestmark = pytest.mark.slow  # models, training or CLI subprocesses: the full tier only

skimage_data = pytest.importorskip("skimage.data")


def _px(image):
    return np.asarray(image, dtype=np.int16)


def _ink_box(control_map):
    """Bounding box (left, top, right, bottom) of the non-black pixels."""
    ys, xs = np.nonzero(np.asarray(control_map).max(axis=2))
    return xs.min(), ys.min(), xs.max(), ys.max()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    Image.fromarray(skimage_data.astronaut()).save(root / "astronaut.png")
    Image.fromarray(skimage_data.coffee()).save(root / "coffee.png")
    Image.new("RGB", (256, 256), (128, 128, 128)).save(root / "grey.png")
    return root


@pytest.fixture(scope="module")
def tiny_controlnet(tiny_model, tmp_path_factory):
    from personae.models.controlnet import write_tiny_controlnet

    return write_tiny_controlnet(tmp_path_factory.mktemp("controlnet") / "tiny-controlnet", base=tiny_model[0], seed=0)


def _settings(model, **kw):
    return GenerateSettings(**{"model": str(model), "prompt": "a photo of a cat", "steps": 4, "seed": 7,
                               "width": 64, "height": 64, **kw})


def _unit(kind, image, model, weight=1.0, **kw):
    return {"type": kind, "image": str(image), "model": str(model), "weight": weight, **kw}


# --- control maps ---------------------------------------------------------------------------------------------

def test_face_map_is_drawn_on_the_face(photos):
    photo = Image.open(photos / "astronaut.png").convert("RGB")
    face_map = detect_control("face", photo)
    assert face_map.size == photo.size and (np.asarray(face_map).max(axis=2) > 0).mean() > 0.003
    left, top, right, bottom = detect_faces(photo)[0]  # OpenCV's Haar box, an independent detector
    pad = 0.3 * (right - left)
    ink = _ink_box(face_map)
    assert left - pad <= ink[0] and top - pad <= ink[1] and ink[2] <= right + pad and ink[3] <= bottom + pad, ink
    assert ink[2] - ink[0] > 0.6 * (right - left)  # the whole face, not a dot
    colours = {tuple(c) for c in np.asarray(face_map).reshape(-1, 3)}
    assert {(10, 200, 10), (10, 180, 10)} <= colours  # face oval and lips in the MediaPipe-face ControlNet's colours


def test_pose_map_spans_the_upper_body_in_openpose_colours(photos):
    photo = Image.open(photos / "astronaut.png").convert("RGB")
    pose_map = detect_control("pose", photo)
    left, top, right, bottom = detect_faces(photo)[0]
    side = right - left
    ink = _ink_box(pose_map)
    assert ink[1] < bottom and ink[3] > bottom + side  # from the face down past the shoulders
    assert ink[2] - ink[0] > 2 * side  # shoulder to shoulder is wider than the face
    colours = {tuple(c) for c in np.asarray(pose_map).reshape(-1, 3)}
    assert (153, 0, 0) in colours and (0, 0, 153) in colours  # limbs at 60%: neck-right shoulder, neck-nose
    assert (255, 0, 0) in colours and (255, 85, 0) in colours  # joints in full colour: nose, neck


def test_canny_is_deterministic_and_thresholds_matter(photos):
    photo = Image.open(photos / "astronaut.png").convert("RGB")
    a, b = detect_control("canny", photo), detect_control("canny", photo)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    more = detect_control("canny", photo, {"low": 30, "high": 60})
    assert (np.asarray(more) > 0).sum() > 1.2 * (np.asarray(a) > 0).sum()


@pytest.mark.parametrize("kind, words", [("face", "No face was found"), ("pose", "No person was found")])
@pytest.mark.parametrize("name", ["coffee.png", "grey.png"])
def test_no_face_or_person_is_a_clear_error(photos, kind, words, name):
    with pytest.raises(UserError) as err:
        detect_control(kind, Image.open(photos / name), where=name)
    assert words in str(err.value) and name in str(err.value) and "raw:IMAGE" in str(err.value)


def test_missing_mediapipe_names_the_install_command(photos, monkeypatch):
    for name in ("mediapipe", "mediapipe.python"):
        monkeypatch.setitem(__import__("sys").modules, name, None)  # what Python sees when it is not installed
    with pytest.raises(UserError, match="need MediaPipe") as err:
        detect_control("face", Image.open(photos / "astronaut.png"))
    assert 'pip install --no-deps "mediapipe==0.10.21"' in str(err.value)
    assert detect_control("canny", Image.open(photos / "grey.png")).size == (256, 256)  # canny does not need it


@pytest.mark.parametrize("kind", ["face", "pose"])
def test_face_and_pose_maps_print_no_mediapipe_noise(photos, tmp_path, kind):
    """MediaPipe beside protobuf 6 printed an AttributeError (GetPrototype) and TF Lite / absl / glog notes that
    look like a crash; building a map prints only what personae says."""
    import subprocess
    import sys

    out = tmp_path / f"{kind}.png"
    r = subprocess.run([sys.executable, "-m", "personae", "detect", kind, str(photos / "astronaut.png"), str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for noise in ("AttributeError", "Traceback", "TfLite", "TensorFlow Lite", "INFO: Created", "absl::", "W0000",
                  "I0000"):
        assert noise not in r.stderr, r.stderr
    assert r.stderr == "" and f"wrote {kind} control map" in r.stdout
    assert np.asarray(Image.open(out)).max() > 0  # the map was still drawn


def test_native_quiet_drops_only_mediapipes_notes(capfd):
    import os

    from personae.data.control.mediapipe_models import native_quiet

    with native_quiet():
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
                    b"W0000 00:00:1796053783.002602   11728 inference_feedback_manager.cc:114] Feedback manager\n"
                    b"E0000 00:00:1796053783.002602   11728 graph.cc:1] a real failure\n")
    assert capfd.readouterr().err == "E0000 00:00:1796053783.002602   11728 graph.cc:1] a real failure\n"


def test_control_maps_do_not_import_torch():
    import subprocess
    import sys

    code = "import sys, personae.data.control; print(any(m.split('.')[0] in ('torch', 'diffusers') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # data/ sits below the model layers


def test_unknown_type_or_option_names_the_valid_ones(photos):
    photo = Image.open(photos / "grey.png")
    with pytest.raises(UserError, match='Did you mean "canny"') as err:
        detect_control("cany", photo)
    assert all(name in str(err.value) for name in CONTROL_TYPES)
    with pytest.raises(UserError, match="low, high"):
        detect_control("canny", photo, {"threshold": 3})


# --- generation -----------------------------------------------------------------------------------------------

def test_untrained_controlnet_gives_exactly_the_plain_image(tiny_model, tiny_session, photos, tmp_path):
    """Why the tiny ControlNet is perturbed: straight from_unet, its zero convolutions add nothing."""
    from diffusers import ControlNetModel

    ControlNetModel.from_unet(tiny_session.pipe.unet).save_pretrained(str(tmp_path / "untrained"))
    plain = txt2img(_settings(tiny_model[0]), tiny_session)[0]
    untrained = txt2img(_settings(tiny_model[0], controls=[_unit("canny", photos / "astronaut.png", tmp_path / "untrained")]),
                        tiny_session)[0]
    assert np.abs(_px(plain.image) - _px(untrained.image)).max() <= 1


def test_control_changes_the_image_through_the_map_and_weight_0_switches_it_off(tiny_model, tiny_session, photos,
                                                                                tiny_controlnet):
    plain = _px(txt2img(_settings(tiny_model[0]), tiny_session)[0].image)
    run = lambda **unit: _px(txt2img(_settings(tiny_model[0], controls=[_unit(model=tiny_controlnet, **unit)]),
                                     tiny_session)[0].image)
    astronaut = run(kind="canny", image=photos / "astronaut.png")
    coffee = run(kind="canny", image=photos / "coffee.png")
    off = run(kind="canny", image=photos / "astronaut.png", weight=0.0)
    print(f"mean pixel change: control {np.abs(astronaut - plain).mean():.2f}, "
          f"other control image {np.abs(astronaut - coffee).mean():.2f}, weight 0 max {np.abs(off - plain).max()}")
    assert np.abs(astronaut - plain).mean() > 1
    assert np.abs(astronaut - coffee).mean() > 1  # the control image itself steers the result
    assert np.abs(off - plain).max() <= 1
    # A1111's variation seeds reach the ControlNet pipeline's starting noise: strength 1 is the variation seed's picture
    varied = astronaut  # seed 7, no variation
    toward = _px(txt2img(_settings(tiny_model[0], seed=7, subseed=9, subseed_strength=1.0, controls=[
        _unit(model=tiny_controlnet, kind="canny", image=photos / "astronaut.png")]), tiny_session)[0].image)
    own = _px(txt2img(_settings(tiny_model[0], seed=9, controls=[
        _unit(model=tiny_controlnet, kind="canny", image=photos / "astronaut.png")]), tiny_session)[0].image)
    assert np.abs(toward - own).max() <= 1 and np.abs(toward - varied).mean() > 1


def test_multi_controlnet_and_the_guidance_window(tiny_model, tiny_session, photos, tiny_controlnet):
    astronaut = photos / "astronaut.png"

    def run(controls, **kw):
        return _px(txt2img(_settings(tiny_model[0], controls=controls, **kw), tiny_session)[0].image)

    plain = run([])
    face = run([_unit("face", astronaut, tiny_controlnet)])
    both = run([_unit("face", astronaut, tiny_controlnet), _unit("pose", astronaut, tiny_controlnet, weight=0.8)])
    late = run([_unit("face", astronaut, tiny_controlnet)], control_start=0.5)
    early = run([_unit("face", astronaut, tiny_controlnet)], control_end=0.4)  # A1111's count: steps 0-2 of 4
    assert np.abs(both - face).mean() > 1
    assert np.abs(late - face).mean() > 1 and np.abs(late - plain).max() > 0
    # the early steps set the composition: control over the first three is nearly all of its effect
    assert np.abs(early - face).max() > 0 and np.abs(early - late).mean() > 1
    assert np.abs(early - face).mean() < np.abs(late - face).mean()
    with pytest.raises(ValueError, match="control_start"):
        _settings(tiny_model[0], control_start=0.6, control_end=0.4)


def test_img2img_and_inpainting_with_control(tiny_model, tiny_session, photos, tiny_controlnet, tmp_path):
    astronaut = photos / "astronaut.png"
    img2img = dict(init_image=str(astronaut), strength=0.7)
    plain = txt2img(_settings(tiny_model[0], **img2img), tiny_session)[0]
    face = txt2img(_settings(tiny_model[0], controls=[_unit("face", astronaut, tiny_controlnet)], **img2img), tiny_session)[0]
    off = txt2img(_settings(tiny_model[0], controls=[_unit("face", astronaut, tiny_controlnet, weight=0.0)], **img2img),
                  tiny_session)[0]
    assert np.abs(_px(face.image) - _px(plain.image)).mean() > 1
    assert np.abs(_px(off.image) - _px(plain.image)).max() <= 1
    assert "Denoising strength: 0.7" in face.parameters and "ControlNet 0" in face.parameters
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    mask.save(tmp_path / "mask.png")
    inpainted = txt2img(_settings(tiny_model[0], controls=[_unit("canny", astronaut, tiny_controlnet)], strength=1.0,
                                  init_image=str(astronaut), mask=str(tmp_path / "mask.png"), mask_blur=2), tiny_session)[0]
    original = _px(Image.open(astronaut).convert("RGB").resize((64, 64), Image.Resampling.LANCZOS))
    assert np.abs(_px(inpainted.image)[:, 40:] - original[:, 40:]).max() <= 1


def test_infotext_carries_controlnet_units_and_from_png_reproduces(tiny_model, photos, tiny_controlnet, tmp_path):
    s = _settings(tiny_model[0], controls=[_unit("canny", photos / "astronaut.png", tiny_controlnet, weight=0.8,
                                                 options={"low": 50})], control_end=0.75)
    [path] = run_generate(s, tmp_path)
    _, _, params = parse_parameters(read_png_text(path)["parameters"])
    assert params["ControlNet 0"] == ("Module: canny, Model: tiny-controlnet, Weight: 0.8, Resize Mode: Crop and "
                                      "Resize, Low Vram: False, Processor Res: 512, Threshold A: 50, Threshold B: "
                                      "200, Guidance Start: 0, Guidance End: 0.75, Pixel Perfect: False, Control Mode: "
                                      "Balanced, Hr Option: Both")
    again = run_generate(GenerateSettings(**settings_from_png(path)), tmp_path / "again")[0]
    assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(again)))


def test_single_file_controlnet_matches_the_folder(tiny_model, tiny_session, photos, tmp_path):
    """A1111 users download ControlNets as one original-layout file (control_model.*)."""
    from personae.models.controlnet import write_tiny_controlnet

    folder = write_tiny_controlnet(tmp_path / "cn", base=tiny_model[0], seed=1, single_file=tmp_path / "cn.safetensors")
    run = lambda model: txt2img(_settings(tiny_model[0], controls=[_unit("canny", photos / "astronaut.png", model)]),
                                tiny_session)[0]
    from_folder, from_file = run(folder), run(tmp_path / "cn.safetensors")
    assert np.array_equal(_px(from_folder.image), _px(from_file.image))
    assert "Model: cn [" in from_file.parameters  # A1111 shows a file's short hash after its name
    with pytest.raises(UserError, match="pickle"):
        torch.save({"control_model.x": torch.zeros(1)}, tmp_path / "cn.pth")  # a pickle: refused without the flag
        txt2img(_settings(tiny_model[0], controls=[_unit("canny", photos / "astronaut.png", tmp_path / "cn.pth")]))


def test_a_controlnet_in_diffusers_layout_as_one_file_draws_as_its_folder(tiny_model, tiny_session, photos, tmp_path):
    """A folder's diffusion_pytorch_model.safetensors alone, as A1111's extension and ComfyUI read it: its config from
    its shapes over SD-1.5's (heads, GroupNorm groups), so a ControlNet with SD-1.5's groups draws as its folder;
    a tensor it has no place for stops the load, naming it."""
    from diffusers import ControlNetModel
    from safetensors.torch import load_file, save_file

    from personae.models.controlnet import build_tiny_controlnet, load_controlnet, resolve_controlnet

    tiny = build_tiny_controlnet(tiny_session.pipe.unet, seed=2)
    net = ControlNetModel.from_config({**tiny.config, "norm_num_groups": 32})  # SD-1.5's groups, tiny widths
    net.load_state_dict(tiny.state_dict())
    net.save_pretrained(tmp_path / "folder")
    file = tmp_path / "control_sd15_diffusers.safetensors"
    file.write_bytes((tmp_path / "folder" / "diffusion_pytorch_model.safetensors").read_bytes())
    run = lambda model: txt2img(_settings(tiny_model[0], controls=[_unit("canny", photos / "astronaut.png", model)]),
                                tiny_session)[0]
    from_folder, from_file = run(tmp_path / "folder"), run(file)
    assert np.array_equal(_px(from_folder.image), _px(from_file.image))
    assert not np.array_equal(_px(from_folder.image), _px(txt2img(_settings(tiny_model[0]), tiny_session)[0].image))
    assert load_controlnet(resolve_controlnet(str(file))).config.down_block_types == list(net.config.down_block_types)

    weights = load_file(file)
    save_file({**weights, "add_embedding.linear_1.weight": torch.zeros(4, 4)}, tmp_path / "sdxl_like.safetensors")
    with pytest.raises(UserError, match="1 tensors a ControlNet for SD 1.x has no place for "
                                        r"\(add_embedding.linear_1.weight\)"):
        load_controlnet(resolve_controlnet(str(tmp_path / "sdxl_like.safetensors")))
    del weights["controlnet_mid_block.bias"]
    save_file(weights, tmp_path / "cut.safetensors")
    with pytest.raises(UserError, match=r"1 missing \(controlnet_mid_block.bias\)"):
        load_controlnet(resolve_controlnet(str(tmp_path / "cut.safetensors")))


def test_a_controlnet_for_another_base_model_is_refused_before_drawing(tiny_model, tiny_session, photos, tmp_path):
    """Its residuals would not fit the UNet's skip connections (other down blocks), or it would read another text
    width: said as such, not as a tensor error."""
    from diffusers import ControlNetModel

    from personae.models.controlnet import build_tiny_controlnet

    tiny = dict(build_tiny_controlnet(tiny_session.pipe.unet).config)
    for name, change, said in (("blocks", {"block_out_channels": (32, 64), "down_block_types": (
            "CrossAttnDownBlock2D", "DownBlock2D")}, "down blocks of 1 layers per block, 32, 64 wide, this model's of "
                                                     "1 layers per block, 32, 32, 64, 64 wide"),
                               ("text", {"cross_attention_dim": 48}, "cross-attention width 48, this model's is 32")):
        ControlNetModel.from_config({**tiny, **change}).save_pretrained(tmp_path / name)
        with pytest.raises(UserError, match="was made for another base model") as err:
            txt2img(_settings(tiny_model[0], controls=[_unit("canny", photos / "grey.png", tmp_path / name)]),
                    tiny_session)
        assert said in str(err.value)


# --- command line ---------------------------------------------------------------------------------------------

def test_cli_detect_writes_the_map_and_names_valid_types(photos, tmp_path, capsys):
    assert main(["detect", "canny", str(photos / "astronaut.png"), str(tmp_path / "edges.png"), "--option", "low=50"]) == 0
    expected = detect_control("canny", Image.open(photos / "astronaut.png"), {"low": 50})
    assert np.array_equal(np.asarray(Image.open(tmp_path / "edges.png").convert("RGB")), np.asarray(expected))
    # --res: the map a unit of that Processor Res hands the ControlNet, before it is fitted to the picture
    assert main(["detect", "canny", str(photos / "astronaut.png"), str(tmp_path / "at-128.png"), "--res", "128"]) == 0
    unit = ControlRef(type="canny", image=str(photos / "astronaut.png"), model="m", processor_res=128)
    made = make_map(unit, Image.open(photos / "astronaut.png"), 128)
    assert made.size == (128, 128) and np.array_equal(np.asarray(Image.open(tmp_path / "at-128.png").convert("RGB")),
                                                      np.asarray(made))
    assert main(["detect", "canny", str(photos / "astronaut.png"), str(tmp_path / "r.png"), "--res", "8"]) == 2
    assert "Processor Res goes from 64" in capsys.readouterr().err
    assert main(["detect", "depth", str(photos / "astronaut.png"), str(tmp_path / "d.png")]) == 2
    message = capsys.readouterr().err
    assert 'Unknown control type "depth"' in message and "canny, face, pose, raw, shuffle, invert" in message
    assert not (tmp_path / "d.png").exists()
    # a wrong type is said first, before a missing photo (the arguments in their order)
    assert main(["detect", "cany", str(tmp_path / "no-photo.png"), str(tmp_path / "d.png")]) == 2
    assert 'Unknown control type "cany"' in capsys.readouterr().err


def test_cli_generate_with_control_end_to_end(tiny_model, photos, tiny_controlnet, tmp_path, capsys):
    args = ["generate", "--model", str(tiny_model[0]), "--prompt", "a cat", "--steps", "3", "--seed", "5",
            "--width", "64", "--height", "64", "--quiet"]
    assert main(args + ["--control", f"canny:{photos / 'astronaut.png'}:0.9", "--control", f"pose:{photos / 'astronaut.png'}",
                        "--controlnet", f"canny={tiny_controlnet}", "--controlnet", f"pose={tiny_controlnet}",
                        "--control-option", "canny.high=150", "--control-start", "0.25", "--out", str(tmp_path)]) == 0
    [path] = tmp_path.glob("*.png")
    stored = settings_from_png(path)
    assert [(c["type"], c["weight"]) for c in stored["controls"]] == [("canny", 0.9), ("pose", 1.0)]
    assert stored["controls"][0]["options"] == {"high": 150.0} and stored["control_start"] == 0.25
    # offline, a default hub ControlNet fails before the base model loads, saying what to pass instead
    assert main(args + ["--control", f"canny:{photos / 'astronaut.png'}", "--out", str(tmp_path / "hub")]) == 2
    message = capsys.readouterr().err
    assert "lllyasviel/control_v11p_sd15_canny" in message and "--controlnet" in message
    assert main(args + ["--control", f"edges:{photos / 'astronaut.png'}", "--out", str(tmp_path / "bad")]) == 2
    assert "Valid types: canny, face, pose, raw, shuffle, invert" in capsys.readouterr().err


def test_face_to_animal_recipe(tiny_model, photos, tiny_controlnet, tmp_path, capsys):
    args = ["generate", "--model", str(tiny_model[0]), "--recipe", "face-to-animal", "--animal", "dog",
            "--controlnet", f"face={tiny_controlnet}", "--steps", "3", "--width", "64", "--height", "64", "--seed", "2",
            "--quiet"]
    assert main(args + ["--init-image", str(photos / "astronaut.png"), "--out", str(tmp_path)]) == 0
    [path] = tmp_path.glob("*.png")
    stored = settings_from_png(path)
    assert stored["prompt"].startswith("dog, close up, face portrait")
    assert stored["sampler"] == "DPM++ 2S a" and stored["cfg"] == 7.0 and stored["steps"] == 3  # explicit --steps wins
    crop = Image.open(stored["init_image"])
    assert crop.size == (512, 512) and stored["controls"][0]["image"] == stored["init_image"]
    assert stored["controls"][0]["type"] == "face" and stored["controls"][0]["weight"] == 1.0
    assert "warning" not in capsys.readouterr().err.lower()  # the recipe's own choices never warn
    assert detect_faces(crop)  # the crop holds the face
    assert main(args + ["--init-image", str(photos / "coffee.png"), "--out", str(tmp_path / "none")]) == 2
    assert "No face was found" in capsys.readouterr().err


def test_face_to_animal_draws_at_the_models_size_and_keeps_its_control_map(tiny_model, photos, tiny_controlnet,
                                                                          tmp_path, capsys):
    """No --width / --height: the model's own size (the tiny model's 64 px, not a fixed 512); the face map that
    steered the picture is saved beside it, named, and listed."""
    out = tmp_path / "dog"
    assert main(["generate", "--model", str(tiny_model[0]), "--recipe", "face-to-animal", "--init-image",
                 str(photos / "astronaut.png"), "--controlnet", f"face={tiny_controlnet}", "--steps", "3", "--seed",
                 "2", "--out", str(out)]) == 0
    [path] = out.glob("*.png")
    assert Image.open(path).size == (64, 64)
    stored = settings_from_png(path)
    assert (stored["width"], stored["height"]) == (64, 64)
    assert Image.open(stored["init_image"]).size == (512, 512)  # the crop stays large enough to find the face in
    face_map = out / "inputs" / "astronaut-face-control-map.png"
    assert Image.open(face_map).size == (64, 64) and np.asarray(Image.open(face_map)).max() > 0
    expected = detect_control("face", Image.open(stored["init_image"])).resize((64, 64), Image.Resampling.BILINEAR)
    assert np.array_equal(np.asarray(Image.open(face_map)), np.asarray(expected))  # the map the ControlNet saw
    printed = " ".join(capsys.readouterr().err.split())
    assert f"face-to-animal: face control map: {face_map}" in printed
    assert f"face-to-animal: face crop (init image and control image): {stored['init_image']}" in printed
    # a size the user sets wins, and the crop keeps its aspect
    assert main(["generate", "--model", str(tiny_model[0]), "--recipe", "face-to-animal", "--init-image",
                 str(photos / "astronaut.png"), "--controlnet", f"face={tiny_controlnet}", "--steps", "3", "--width",
                 "96", "--height", "64", "--quiet", "--out", str(tmp_path / "wide")]) == 0
    [wide] = (tmp_path / "wide").glob("*.png")
    assert Image.open(wide).size == (96, 64)
    assert Image.open(settings_from_png(wide)["init_image"]).size == (768, 512)
    assert Image.open(tmp_path / "wide/inputs/astronaut-face-control-map.png").size == (96, 64)
