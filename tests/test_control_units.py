"""A1111's ControlNet unit settings (sd-webui-controlnet): Resize Mode, Processor Res, Pixel Perfect, Control Mode,
Low VRAM and each unit's guidance window; written as the extension writes them and read back from A1111's PNGs by
--from-png, with the pictures given on the command line."""

import numpy as np
import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from personae.cli.main import main
from personae.config.generate import ControlRef, GenerateSettings
from personae.data.control.fit import fit_map
from personae.errors import UserError
from personae.inference.control_steps import SOFT
from personae.inference.controlnet import controlnet_for, make_map, prepare_controls
from personae.inference.txt2img import txt2img
from personae.jobs.generate import settings_from_png
from personae.jobs.png_controls import png_control_units
from personae.media.controlnet_text import UnitTextError, model_id, read_unit
from personae.media.png import parse_parameters, read_png_text

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def coffee(tmp_path_factory):
    path = tmp_path_factory.mktemp("photos") / "coffee.png"  # 600 x 400: not the picture's shape
    Image.fromarray(skimage_data.coffee()).save(path)
    return path


@pytest.fixture(scope="module")
def tiny_controlnet(tiny_model, tmp_path_factory):
    from personae.models.controlnet import write_tiny_controlnet

    return write_tiny_controlnet(tmp_path_factory.mktemp("controlnet") / "tiny-controlnet", base=tiny_model[0], seed=0)


def _settings(model, **kw):
    return GenerateSettings(**{"model": str(model), "prompt": "a photo of a cat", "steps": 3, "seed": 7,
                               "width": 64, "height": 64, **kw})


def _unit(image, model, **kw):
    return {"type": "canny", "image": str(image), "model": str(model), **kw}


def _px(image):
    return np.asarray(image, dtype=np.int16)


# --- the unit's text ------------------------------------------------------------------------------------------

def test_unit_text_in_the_extensions_forms():
    current = read_unit('"Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 0.8, Resize Mode: Just '
                        'Resize, Processor Res: 768, Threshold A: 50, Threshold B: 150, Guidance Start: 0.1, Guidance '
                        'End: 0.9, Pixel Perfect: True, Control Mode: My prompt is more important"')
    assert current == {"Module": "canny", "Model": "control_v11p_sd15_canny [d14c016b]", "Weight": "0.8",
                       "Resize Mode": "Just Resize", "Processor Res": "768", "Threshold A": "50",
                       "Threshold B": "150", "Guidance Start": "0.1", "Guidance End": "0.9", "Pixel Perfect": "True",
                       "Control Mode": "My prompt is more important"}
    legacy = read_unit("preprocessor: canny, model: control_v11p_sd15_canny [d14c016b], weight: 0.8, "
                       "starting/ending: (0.1, 0.9), resize mode: Crop and Resize, pixel perfect: False, "
                       "control mode: Balanced, preprocessor params: (512, 100, 200)")
    assert legacy == {"Module": "canny", "Model": "control_v11p_sd15_canny [d14c016b]", "Weight": "0.8",
                      "Guidance Start": "0.1", "Guidance End": "0.9", "Resize Mode": "Crop and Resize",
                      "Pixel Perfect": "False", "Control Mode": "Balanced", "Processor Res": "512",
                      "Threshold A": "100", "Threshold B": "200"}
    assert "Threshold A" not in read_unit("preprocessor: openpose, model: x, preprocessor params: (512, -1, -1)")
    for bad in ("", "Module canny", "preprocessor: canny, starting/ending: 0.5"):
        with pytest.raises(UnitTextError):
            read_unit(bad)


def test_lllyasviels_controlnets_by_their_hub_ids():
    assert model_id("control_v11p_sd15_canny [d14c016b]") == "lllyasviel/control_v11p_sd15_canny"
    assert model_id("control_v11f1p_sd15_depth [cfd03158]") == "lllyasviel/control_v11f1p_sd15_depth"
    anime = "control_v11p_sd15s2_lineart_anime"
    assert model_id(f"{anime}.fp16.safetensors") == f"lllyasviel/{anime}"
    assert model_id("control_sd15_openpose [fef5e48e]") == "lllyasviel/sd-controlnet-openpose"
    assert model_id("my_controlnet [abcdef12]") is None and model_id("diffusers_xl_canny_full") is None


# --- the map, the residuals, the window ----------------------------------------------------------------------

def _captured(tiny_session, settings, hook_on="unet"):
    """What the first UNet call receives as ControlNet residuals (hook_on="unet"), or the ControlNet's control
    picture (hook_on="controlnet")."""
    seen = []

    def grab(module, args, kwargs):
        if not seen:
            seen.append(kwargs)

    target = tiny_session.pipe.unet
    if hook_on == "controlnet":
        from personae.inference.controlnet import controlnet_for

        target = controlnet_for(tiny_session, settings.controls[0].model)
    hook = target.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        txt2img(settings, tiny_session)
    finally:
        hook.remove()
    return seen[0]


def test_control_modes_scale_the_residuals_as_a1111(tiny_model, tiny_session, coffee, tiny_controlnet):
    """Balanced: as the weight made them; My prompt is more important: residual i of n + 1 (the middle block last)
    times 0.825 ** (n - i); ControlNet is more important: that, and none on the negative prompt's rows."""
    def residuals(mode):
        got = _captured(tiny_session, _settings(tiny_model[0], controls=[_unit(coffee, tiny_controlnet, weight=0.7,
                                                                                control_mode=mode)]))
        return [*got["down_block_additional_residuals"], got["mid_block_additional_residual"]]

    balanced, prompt, control = (residuals(m) for m in ("Balanced", "My prompt is more important",
                                                         "ControlNet is more important"))
    n = len(balanced) - 1
    assert n >= 4 and all(r.shape[0] == 2 for r in balanced)  # one image: [negative, prompt]
    assert all(r.abs().max() > 0 for r in balanced[:-1])
    for i, (b, p, c) in enumerate(zip(balanced, prompt, control)):
        assert torch.allclose(p, b * SOFT ** (n - i), atol=1e-6), i
        assert (c[0] == 0).all() and torch.allclose(c[1], p[1], atol=1e-6), i
    assert SOFT ** n < 0.9 and torch.equal(prompt[-1], balanced[-1])  # the middle block keeps its full weight


def test_the_map_reaches_the_controlnet_fitted_as_the_unit_says(tiny_model, tiny_session, coffee, tiny_controlnet):
    photo = Image.open(coffee).convert("RGB")
    for mode in ("Just Resize", "Crop and Resize", "Resize and Fill"):
        settings = _settings(tiny_model[0], controls=[_unit(coffee, tiny_controlnet, resize_mode=mode,
                                                            processor_res=128)])
        ref = settings.controls[0]
        made = make_map(ref, photo, 128)
        assert made.size == (192, 128)  # the preprocessor ran on the photo at 128 on its short side
        expected = torch.from_numpy(np.asarray(fit_map(made, (64, 64), mode), dtype=np.float32) / 255)
        got = _captured(tiny_session, settings, "controlnet")["controlnet_cond"][0].permute(1, 2, 0)
        assert torch.allclose(got, expected, atol=1e-6), mode
    prepared = prepare_controls([ControlRef(**_unit(coffee, tiny_controlnet, pixel_perfect=True))])[0]
    # pixel perfect for 64 x 64, covering: the photo's 400-pixel side becomes 64, so the map is made at 64
    assert prepared.map_at((64, 64)) == fit_map(make_map(prepared.ref, photo, 64), (64, 64), "Crop and Resize")
    assert list(prepared.made) == [64]


def test_each_unit_has_its_own_guidance_window(tiny_model, tiny_session, coffee, tiny_controlnet):
    unit = _unit(coffee, tiny_controlnet)
    own = txt2img(_settings(tiny_model[0], steps=4, controls=[{**unit, "guidance_start": 0.5}]), tiny_session)[0]
    shared = txt2img(_settings(tiny_model[0], steps=4, controls=[unit], control_start=0.5), tiny_session)[0]
    full = txt2img(_settings(tiny_model[0], steps=4, controls=[unit]), tiny_session)[0]
    assert np.array_equal(_px(own.image), _px(shared.image)) and not np.array_equal(_px(own.image), _px(full.image))
    assert "Guidance Start: 0.5, Guidance End: 1" in own.parameters
    # two units: the second's own window ends before the first's
    both = txt2img(_settings(tiny_model[0], steps=4, controls=[unit, {**unit, "weight": 0.5, "guidance_end": 0.5}]),
                   tiny_session)[0]
    _, _, params = parse_parameters(both.parameters)
    assert "Guidance End: 1," in params["ControlNet 0"] and "Guidance End: 0.5," in params["ControlNet 1"]
    with pytest.raises(ValueError, match=r"controls\[0\]: its guidance start \(0.6\) must be below"):
        _settings(tiny_model[0], controls=[{**unit, "guidance_start": 0.6}], control_end=0.5)


def _controlled_calls(tiny_session, settings):
    """For each UNet call of the run, whether ControlNet residuals reached it."""
    seen = []

    def grab(module, args, kwargs):
        residuals = kwargs.get("down_block_additional_residuals")
        seen.append(int(residuals is not None and any(r.abs().max() > 0 for r in residuals)))

    hook = tiny_session.pipe.unet.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        txt2img(settings, tiny_session)
    finally:
        hook.remove()
    return seen


def test_guidance_windows_count_the_steps_as_a1111(tiny_model, tiny_session, coffee, tiny_controlnet, tmp_path):
    """The extension's window: a model call is controlled when start <= sampling_step / steps <= end, where
    sampling_step is the last step whose callback ran (step i's first call sees i - 1, step 0 sees 0; a second-order
    sampler's second call sees i). diffusers' own window, i / n >= start and (i + 1) / n <= end, differs at both ends:
    with 10 steps and end 0.3 it controls 3 steps, A1111 5."""
    def calls(**kw):
        unit = _unit(coffee, tiny_controlnet, **{k: v for k, v in kw.items() if k.startswith("guidance")})
        rest = {k: v for k, v in kw.items() if not k.startswith("guidance")}
        return _controlled_calls(tiny_session, _settings(tiny_model[0], controls=[unit], **{"steps": 10, **rest}))

    assert calls(guidance_end=0.3) == [1] * 5 + [0] * 5  # percents 0, 0, .1, .2, .3 | .4 ...
    assert calls(guidance_start=0.7) == [0] * 8 + [1] * 2  # .6 at step 7, .7 at step 8
    assert calls(guidance_end=0.3, sampler="DDIM") == [1] * 5 + [0] * 5  # A1111's DDIM calls back the same way
    # Heun, 4 steps: calls (step, percent) (0, 0) (0, 0) (1, 0) (1, .25) (2, .25) (2, .5) (3, .5), the last step single
    assert calls(guidance_end=0.25, sampler="Heun", steps=4) == [1] * 5 + [0] * 2
    assert calls(guidance_start=0.5, sampler="Heun", steps=4) == [0] * 5 + [1] * 2
    # img2img at strength 0.5 of 10 steps runs A1111's last 6 (t_enc + 1), its percents 0, 0, 1/6, 2/6 ...
    Image.open(coffee).convert("RGB").resize((64, 64)).save(tmp_path / "init.png")
    assert calls(guidance_end=0.3, init_image=str(tmp_path / "init.png"), strength=0.5) == [1] * 3 + [0] * 3
    assert calls() == [1] * 10


def _comfy_sigmas():
    """SD's training noise levels as ComfyUI's ModelSamplingDiscrete holds them (the tiny model's schedule)."""
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    alphabar = np.cumprod(1 - betas)
    return np.log(((1 - alphabar) / alphabar) ** 0.5)


def _sigma_at(log_sigmas, t: float) -> float:
    return float(np.exp(np.interp(t, np.arange(len(log_sigmas)), log_sigmas)))


def test_a_window_by_noise_level_controls_the_calls_comfyui_does(tiny_model, tiny_session, coffee, tiny_controlnet,
                                                                 tmp_path):
    """ComfyUI's start_percent / end_percent (guidance_by "noise"): percent p is the training schedule's sigma at
    step (1 - p) x 999, and a model call is controlled while its own sigma lies between the two. Each call's sigma is
    read from the UNet's timestep input and compared with bounds computed here; on a Karras schedule this differs
    from the window by steps."""
    import json

    assert json.loads((tiny_model[0] / "scheduler/scheduler_config.json").read_text())["beta_schedule"] == \
        "scaled_linear"
    log_sigmas = _comfy_sigmas()
    Image.open(coffee).convert("RGB").resize((64, 64)).save(tmp_path / "init.png")

    def run(start=0.0, end=1.0, by="noise", **rest):
        settings = _settings(tiny_model[0], controls=[_unit(coffee, tiny_controlnet, guidance_start=start,
                                                            guidance_end=end, guidance_by=by)],
                             **{"steps": 10, **rest})
        timesteps = []
        hook = tiny_session.pipe.unet.register_forward_pre_hook(
            lambda m, a, kw: timesteps.append(float((a[1] if len(a) > 1 else kw["timestep"]).reshape(-1)[0])),
            with_kwargs=True)
        try:
            controlled = _controlled_calls(tiny_session, settings)
        finally:
            hook.remove()
        high = float("inf") if start <= 0 else _sigma_at(log_sigmas, (1 - start) * 999)
        low = 0.0 if end >= 1 else _sigma_at(log_sigmas, (1 - end) * 999)
        expected = [int(low <= _sigma_at(log_sigmas, t) <= high) for t in timesteps]
        return controlled, expected

    for case in ({"end": 0.5}, {"start": 0.5}, {"start": 0.2, "end": 0.7}, {"end": 0.4, "sampler": "DDIM"},
                 {"start": 0.3, "sampler": "Heun", "steps": 4},
                 {"end": 0.6, "init_image": str(tmp_path / "init.png"), "strength": 0.5}):
        controlled, expected = run(**case)
        assert controlled == expected and 0 < sum(controlled) < len(controlled), (case, controlled, expected)
    # DPM++ 2M Karras, 10 steps: end 0.5 is sigma 1.62 (step 499.5), the schedule 14.6, 9.10, 5.48, 3.17, 1.75, 0.91
    # ...: 5 calls; by steps 7 (percents 0, 0, .1, ... .5)
    assert run(end=0.5)[0] == [1] * 5 + [0] * 5
    assert run(end=0.5, by="steps")[0] == [1] * 7 + [0] * 3


def test_hires_fix_with_control_units(tiny_model, tiny_session, coffee, tiny_controlnet):
    """A1111's hires fix with ControlNet: each unit controls the passes its "Hires-Fix Option" names; the redraw's
    map is the first pass's (made for its size, Pixel Perfect included) fitted to the redraw's size."""
    from personae.data.control.fit import pixel_perfect_res

    def run(**unit):
        calls, maps = [], []

        def unet_call(module, args, kwargs):
            residuals = kwargs.get("down_block_additional_residuals")
            calls.append((args[0].shape[-1] * 8, int(residuals is not None and residuals[0].abs().max() > 0)))

        def controlnet_call(module, args, kwargs):
            maps.append(kwargs["controlnet_cond"][0].permute(1, 2, 0).clone())

        settings = _settings(tiny_model[0], controls=[_unit(coffee, tiny_controlnet, **unit)], hires_scale=2.0,
                             hires_denoise=0.6)
        net = controlnet_for(tiny_session, settings.controls[0].model)
        hooks = [tiny_session.pipe.unet.register_forward_pre_hook(unet_call, with_kwargs=True),
                 net.register_forward_pre_hook(controlnet_call, with_kwargs=True)]
        try:
            image = txt2img(settings, tiny_session)[0]
        finally:
            for hook in hooks:
                hook.remove()
        return image, calls, maps

    both, calls, maps = run(pixel_perfect=True)
    assert both.image.size == (128, 128)
    assert sorted(set(calls)) == [(64, 1), (128, 1)]  # both passes controlled
    photo = Image.open(coffee).convert("RGB")
    prepared = prepare_controls([ControlRef(**_unit(coffee, tiny_controlnet, pixel_perfect=True))])[0]
    made = make_map(prepared.ref, photo, pixel_perfect_res(photo.size, (64, 64), "Crop and Resize"))
    for size in (64, 128):  # the map for 64 px, and that same map fitted to 128
        expected = torch.from_numpy(np.asarray(fit_map(made, (size, size), "Crop and Resize"))).float() / 255
        assert any(m.shape[0] == size and torch.allclose(m, expected, atol=1e-6) for m in maps), size
    low, calls, _ = run(hr_option="Low res only")
    assert sorted(set(calls)) == [(64, 1), (128, 0)]
    assert "Hr Option: Low res only" in low.parameters
    high, calls, _ = run(hr_option="High res only")
    assert sorted(set(calls)) == [(64, 0), (128, 1)]
    assert len({both.image.tobytes(), low.image.tobytes(), high.image.tobytes()}) == 3
    _, _, params = parse_parameters(high.parameters)
    assert params["ControlNet 0"].endswith("Control Mode: Balanced, Hr Option: High res only")


def test_hires_fix_with_control_from_the_cli_and_an_a1111_png(tiny_model, coffee, tiny_controlnet, tmp_path):
    common = ["--model", str(tiny_model[0]), "--controlnet", f"canny={tiny_controlnet}", "--quiet"]
    assert main(["generate", "--prompt", "a photo of a cat", "--steps", "3", "--seed", "7", "--width", "64",
                 "--height", "64", "--control", f"canny:{coffee}", "--hires-scale", "2", "--hires-denoise", "0.6",
                 "--control-hr-option", "Low res only", "--out", str(tmp_path / "cli"), *common]) == 0
    [made] = (tmp_path / "cli").glob("*.png")
    assert settings_from_png(made)["controls"][0]["hr_option"] == "Low res only"
    assert main(["generate", "--from-png", str(made), "--out", str(tmp_path / "again"), *common]) == 0
    [again] = (tmp_path / "again").glob("*.png")
    assert np.array_equal(_px(Image.open(made)), _px(Image.open(again))) and Image.open(made).size == (128, 128)
    # an A1111 PNG's unit with its Hr Option and the hires fix: the picture given, the option kept
    png = _a1111_png(tmp_path / "a1111.png", "Module: canny, Model: tiny-controlnet [0123abcd], Weight: 1, Hr "
                     "Option: Low res only", extra="Denoising strength: 0.6, Hires upscale: 2, Hires upscaler: "
                     "Latent, ")
    assert main(["generate", "--from-png", str(png), "--control", f"canny:{coffee}", "--out", str(tmp_path / "a"),
                 *common]) == 0
    [drawn] = (tmp_path / "a").glob("*.png")
    assert settings_from_png(drawn)["controls"][0]["hr_option"] == "Low res only" and Image.open(drawn).size == (128,
                                                                                                                128)
    with pytest.raises(ValueError, match="hr_option"):
        ControlRef(type="canny", image=str(coffee), hr_option="Sometimes")
    assert main(["generate", "--prompt", "x", "--control-hr-option", "Both", "--out", str(tmp_path / "b"),
                 *common]) == 2  # no unit to set


# --- A1111's PNGs through --from-png --------------------------------------------------------------------------

def _a1111_png(path, unit_text, size=64, extra=""):
    info = PngInfo()
    info.add_text("parameters", "a photo of a cat\nNegative prompt: \nSteps: 3, Sampler: Euler a, CFG scale: 7, "
                                f"Seed: 7, Size: {size}x{size}, Model: tiny, {extra}ControlNet 0: \"{unit_text}\"")
    Image.new("RGB", (size, size)).save(path, pnginfo=info)
    return path


def test_from_png_takes_the_units_settings_with_the_picture_given(tiny_model, coffee, tiny_controlnet, tmp_path,
                                                                  capsys):
    png = _a1111_png(tmp_path / "a1111.png", "Module: canny, Model: tiny-controlnet [0123abcd], Weight: 0.6, Resize "
                     "Mode: Just Resize, Processor Res: 256, Threshold A: 50, Threshold B: 150, Guidance Start: 0.25, "
                     "Guidance End: 1, Pixel Perfect: False, Control Mode: My prompt is more important")
    args = ["generate", "--from-png", str(png), "--model", str(tiny_model[0]), "--quiet"]
    assert main(args + ["--control", f"canny:{coffee}", "--controlnet", f"canny={tiny_controlnet}",
                        "--out", str(tmp_path / "with")]) == 0
    err = capsys.readouterr().err
    assert "ControlNet 0" not in err, err  # nothing of the unit is left out
    [made] = (tmp_path / "with").glob("*.png")
    unit = settings_from_png(made)["controls"][0]
    assert unit == {"type": "canny", "image": str(coffee), "weight": 0.6, "model": str(tiny_controlnet),
                    "options": {"low": 50.0, "high": 150.0}, "resize_mode": "Just Resize", "processor_res": 256,
                    "pixel_perfect": False, "control_mode": "My prompt is more important", "guidance_start": 0.25,
                    "guidance_end": 1.0, "guidance_by": "steps", "low_vram": False, "hr_option": "Both",
                    "mask": None}
    _, _, params = parse_parameters(read_png_text(made)["parameters"])
    assert params["ControlNet 0"].startswith("Module: canny, Model: tiny-controlnet, Weight: 0.6, Resize Mode: Just "
                                             "Resize, Low Vram: False, Processor Res: 256, Threshold A: 50, Threshold "
                                             "B: 150")
    direct = txt2img(GenerateSettings(**{**settings_from_png(made), "model": str(tiny_model[0])}))[0]
    assert np.array_equal(np.asarray(Image.open(made).convert("RGB")), _px(direct.image).astype(np.uint8))
    # a weight typed after the picture wins over the PNG's
    assert main(args + ["--control", f"canny:{coffee}:0.9", "--controlnet", f"canny={tiny_controlnet}",
                        "--out", str(tmp_path / "typed")]) == 0
    [typed] = (tmp_path / "typed").glob("*.png")
    assert settings_from_png(typed)["controls"][0]["weight"] == 0.9
    assert settings_from_png(typed)["controls"][0]["control_mode"] == "My prompt is more important"
    # without a picture the unit cannot run: drawn without it, and said
    assert main(args + ["--out", str(tmp_path / "without")]) == 0
    err = capsys.readouterr().err
    assert "ControlNet 0 (Module canny, Model tiny-controlnet [0123abcd]) (no picture: pass it with --control" in err
    assert settings_from_png(next((tmp_path / "without").glob("*.png")))["controls"] == []


def test_from_png_names_what_it_cannot_place(tiny_model, coffee, tiny_controlnet, tmp_path, capsys):
    args = ["generate", "--model", str(tiny_model[0]), "--quiet"]
    # lllyasviel's canny ControlNet named by the PNG: a hub model a file asks for is never downloaded
    png = _a1111_png(tmp_path / "hub.png", "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1")
    assert main(args + ["--from-png", str(png), "--control", f"canny:{coffee}", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "(--controlnet canny=lllyasviel/control_v11p_sd15_canny)" in err
    assert not (tmp_path / "a").exists()
    # a preprocessor personae lacks: a ready map given as raw runs with the unit's other settings, and it is said
    png = _a1111_png(tmp_path / "depth.png", "Module: depth_midas, Model: my_depth [0123abcd], Weight: 0.5, "
                     "Control Mode: ControlNet is more important")
    assert main(args + ["--from-png", str(png), "--control", f"raw:{coffee}", "--controlnet", f"raw={tiny_controlnet}",
                        "--out", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert "ControlNet 0 (Module depth_midas, Model my_depth [0123abcd]) (a preprocessor personae lacks" in err
    unit = settings_from_png(next((tmp_path / "b").glob("*.png")))["controls"][0]
    assert unit["type"] == "raw" and unit["weight"] == 0.5 and unit["control_mode"] == "ControlNet is more important"
    # another type given replaces the unit, and it is said
    assert main(args + ["--from-png", str(png), "--control", f"canny:{coffee}", "--controlnet",
                        f"canny={tiny_controlnet}", "--out", str(tmp_path / "c")]) == 0
    assert "(a preprocessor personae lacks: the picture is read as --control canny)" in capsys.readouterr().err
    # a setting personae has not (an older extension's Guess Mode) is named; what is off, or only says whether the
    # extension showed the map, is not
    png = _a1111_png(tmp_path / "guess.png", "preprocessor: canny, model: tiny-controlnet [0123abcd], weight: 1, "
                     "guess mode: True, save detected map: True, low vram: False, mask: None")
    assert main(args + ["--from-png", str(png), "--control", f"canny:{coffee}", "--controlnet",
                        f"canny={tiny_controlnet}", "--out", str(tmp_path / "g")]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "ControlNet 0 (Module canny, Model tiny-controlnet [0123abcd]) (Guess Mode: True: not a setting personae " \
           "has)" in err and "Save Detected Map" not in err and "Mask" not in err, err
    # a unit's text personae cannot read: one paragraph, nothing written
    png = _a1111_png(tmp_path / "bad.png", "Module canny")
    assert main(args + ["--from-png", str(png), "--out", str(tmp_path / "d")]) == 2
    assert '"ControlNet 0" in a form personae cannot read' in capsys.readouterr().err
    # the unit flags without a unit
    assert main(args + ["--prompt", "a cat", "--control-mode", "Balanced", "--out", str(tmp_path / "e")]) == 2
    assert "--control-mode sets the --control units; no --control is given" in capsys.readouterr().err


def test_cli_unit_flags_reach_every_unit(tiny_model, coffee, tiny_controlnet, tmp_path):
    assert main(["generate", "--model", str(tiny_model[0]), "--prompt", "a cat", "--steps", "2", "--width", "64",
                 "--height", "64", "--quiet", "--control", f"canny:{coffee}", "--control", f"canny:{coffee}:0.5",
                 "--controlnet", f"canny={tiny_controlnet}", "--control-resize", "Resize and Fill", "--control-mode",
                 "ControlNet is more important", "--control-res", "256", "--pixel-perfect",
                 "--out", str(tmp_path)]) == 0
    units = settings_from_png(next(tmp_path.glob("*.png")))["controls"]
    assert [(u["weight"], u["resize_mode"], u["control_mode"], u["processor_res"], u["pixel_perfect"]) for u in units] \
        == [(1.0, "Resize and Fill", "ControlNet is more important", 256, True),
            (0.5, "Resize and Fill", "ControlNet is more important", 256, True)]
    with pytest.raises(SystemExit):  # a mode A1111 does not have: argparse's one line, exit 2
        main(["generate", "--model", str(tiny_model[0]), "--prompt", "a cat", "--control", f"canny:{coffee}",
              "--control-mode", "Strict", "--out", str(tmp_path / "bad")])
    with pytest.raises(UserError, match=r"controls\.0\.resize_mode.*Crop and Resize"):
        from personae.config.base import parse_settings

        parse_settings(GenerateSettings, {"model": "m", "prompt": "p", "controls": [
            {"type": "canny", "image": "x.png", "resize_mode": "Stretch"}]}, "the test's settings")


def test_a_units_low_vram_has_its_controlnet_on_the_device_for_each_call_only(tiny_model, coffee, tiny_controlnet,
                                                                              tmp_path):
    """A1111's per-unit "Low VRAM" (sd-webui-controlnet moves the unit's ControlNet to the GPU for each call and back
    to main memory after it): inside each of the ControlNet's calls it goes to the session's device and back to the
    CPU (the CPU stands for the GPU here, so the moves are seen as its .to calls); the same pixels; a later
    generation without it takes the hook away; the PNG says "Low Vram: True", which --from-png and the CLI flag give
    back."""
    from personae.inference.session import open_session

    session = open_session(str(tiny_model[0]), "cpu")
    plain = txt2img(_settings(tiny_model[0], controls=[_unit(coffee, tiny_controlnet)]), session)[0]
    net = session.controlnets[str(tiny_controlnet)][1]
    assert not hasattr(net, "_hf_hook") and "Low Vram: False" in plain.parameters
    events, to = [], net.to
    net.to = lambda *args, **kwargs: events.append(("to", str(args[0]))) or to(*args, **kwargs)
    net.register_forward_pre_hook(lambda *_: events.append("call"))
    net.register_forward_hook(lambda *_: events.append("done"))
    low = txt2img(_settings(tiny_model[0], controls=[_unit(coffee, tiny_controlnet, low_vram=True)]), session)[0]
    assert type(net._hf_hook).__name__ == "OnDeviceForEachCall"
    # the hook puts it in main memory, then each call (one per step: the CFG rows in one batch) moves it there and back
    assert events == [("to", "cpu")] + ["call", ("to", str(session.device)), ("to", "cpu"), "done"] * 3, events
    assert np.array_equal(_px(plain.image), _px(low.image))
    _, _, params = parse_parameters(low.parameters)
    assert "Resize Mode: Crop and Resize, Low Vram: True, Processor Res: 512" in params["ControlNet 0"]
    events.clear()
    again = txt2img(_settings(tiny_model[0], controls=[_unit(coffee, tiny_controlnet)]), session)[0]
    assert not hasattr(net, "_hf_hook") and np.array_equal(_px(plain.image), _px(again.image))
    assert [e for e in events if e != ("to", "cpu")] == ["call", "done"] * 3  # on the device throughout
    # an A1111 PNG's unit with Low Vram: True, and the flag for every unit
    png = _a1111_png(tmp_path / "a1111.png", "Module: canny, Model: tiny-controlnet [0123abcd], Weight: 1, Resize "
                     "Mode: Crop and Resize, Low Vram: True, Processor Res: 512, Guidance Start: 0, Guidance End: 1, "
                     "Pixel Perfect: False, Control Mode: Balanced, Hr Option: Both, Save Detected Map: True")
    assert png_control_units(png)[0]["low_vram"] is True
    common = ["--model", str(tiny_model[0]), "--controlnet", f"canny={tiny_controlnet}", "--quiet"]
    assert main(["generate", "--from-png", str(png), "--control", f"canny:{coffee}", "--steps", "2", "--out",
                 str(tmp_path / "png"), *common]) == 0
    assert settings_from_png(next((tmp_path / "png").glob("*.png")))["controls"][0]["low_vram"] is True
    assert main(["generate", "--prompt", "a cat", "--steps", "2", "--width", "64", "--height", "64", "--control",
                 f"canny:{coffee}", "--control-low-vram", "--out", str(tmp_path / "flag"), *common]) == 0
    assert settings_from_png(next((tmp_path / "flag").glob("*.png")))["controls"][0]["low_vram"] is True


def test_img2img_resize_modes_with_a_unit(tiny_model, tiny_session, coffee, tiny_controlnet, tmp_path):
    """The ControlNet img2img pipeline takes the init as its Resize mode makes it: an init of the picture's size gives
    the same pixels with the latent mode as with Just resize; the 3:2 photo cut by "Crop and resize" (as the unit's
    default cuts its map) gives the pixels of that cut passed as the init."""
    square = tmp_path / "square.png"
    Image.open(coffee).convert("RGB").resize((64, 64), Image.Resampling.LANCZOS).save(square)
    unit = _unit(coffee, tiny_controlnet)
    kw = dict(controls=[unit], strength=0.6, batch_size=2)
    plain = txt2img(_settings(tiny_model[0], init_image=str(square), **kw), tiny_session)
    latent = txt2img(_settings(tiny_model[0], init_image=str(square), resize_mode="Just resize (latent upscale)", **kw),
                     tiny_session)
    assert all((_px(a.image) == _px(b.image)).all() for a, b in zip(plain, latent))
    cut = tmp_path / "cut.png"
    photo = Image.open(coffee).convert("RGB")  # 600x400 -> 96x64 -> columns 16-80
    photo.resize((96, 64), Image.Resampling.LANCZOS).crop((16, 0, 80, 64)).save(cut)
    cropped = txt2img(_settings(tiny_model[0], init_image=str(coffee), resize_mode="Crop and resize", **kw),
                      tiny_session)
    by_hand = txt2img(_settings(tiny_model[0], init_image=str(cut), **kw), tiny_session)
    assert all((_px(a.image) == _px(b.image)).all() for a, b in zip(cropped, by_hand))
    assert cropped[0].image.size == (64, 64)


def test_a_comfyui_pictures_controlnet_runs_with_the_picture_given(tiny_model, coffee, tiny_controlnet, tmp_path,
                                                                  capsys):
    """--from-png of a ComfyUI picture whose conditioning goes through ControlNetApplyAdvanced and a Canny node:
    the unit runs with the picture given by --control, its weight, window and thresholds the graph's; its PNG
    draws the same pixels again; without --control it is drawn without the unit, and said."""
    from test_comfy_png import comfy_png, controlnet_graph, default_graph

    graph = controlnet_graph(default_graph(steps=3, seed=5), canny=True, strength=0.7, end=0.8,
                             name="tiny-controlnet.safetensors")
    graph["5"]["inputs"].update(width=64, height=64)
    png = comfy_png(tmp_path / "ComfyUI_00001_.png", graph)
    args = ["generate", "--from-png", str(png), "--model", str(tiny_model[0]), "--quiet"]
    assert main(args + ["--control", f"canny:{coffee}", "--controlnet", f"canny={tiny_controlnet}",
                        "--out", str(tmp_path / "with")]) == 0
    err = capsys.readouterr().err
    assert "no picture" not in err and "Canny node 23 makes its map with kornia's canny" in err
    [made] = (tmp_path / "with").glob("*.png")
    unit = settings_from_png(made)["controls"][0]
    assert (unit["type"], unit["weight"], unit["options"], unit["guidance_start"], unit["guidance_end"]) == \
        ("canny", 0.7, {"low": 102.0, "high": 204.0}, 0.0, 0.8)
    direct = txt2img(GenerateSettings(**{**settings_from_png(made), "model": str(tiny_model[0])}))[0]
    assert np.array_equal(np.asarray(Image.open(made).convert("RGB")), _px(direct.image).astype(np.uint8))
    assert main(args + ["--out", str(tmp_path / "without")]) == 0
    assert '(ComfyUI read "pose.png")' in capsys.readouterr().err
    assert settings_from_png(next((tmp_path / "without").glob("*.png")))["controls"] == []


def test_ngms_and_skip_early_cfg_leave_the_negative_prompt_out_of_the_controlnet_too(tiny_model, tiny_session, coffee,
                                                                                   tiny_controlnet):
    """Where NGMS / Skip Early CFG run the UNet on the prompt's rows alone, the ControlNet before it runs on those
    rows alone too (A1111's ControlNet runs inside that UNet call); every call skipped, the picture is CFG 1's."""
    net = controlnet_for(tiny_session, str(tiny_controlnet))
    seen: dict[str, list[int]] = {"unet": [], "controlnet": []}
    hooks = [module.conv_in.register_forward_pre_hook(lambda m, args, name=name: seen[name].append(args[0].shape[0]))
             for name, module in (("unet", tiny_session.pipe.unet), ("controlnet", net))]
    unit = [_unit(coffee, tiny_controlnet)]
    try:
        txt2img(_settings(tiny_model[0], controls=unit, steps=4, skip_early_cfg=0.5), tiny_session)
        assert seen["controlnet"] == seen["unet"] == [1, 1, 1, 2]  # calls 0-2 of 4: call / calls <= 0.5
        seen["unet"].clear(), seen["controlnet"].clear()
        skipped = txt2img(_settings(tiny_model[0], controls=unit, steps=4, ngms=15.0, ngms_all_steps=True,
                                    sampler="Euler"), tiny_session)[0]
        assert seen["controlnet"] == seen["unet"] == [1] * 4
        seen["unet"].clear(), seen["controlnet"].clear()  # with AND: the negative prompt and two parts, then the parts
        txt2img(_settings(tiny_model[0], prompt="a cat AND a dog", controls=unit, steps=4, skip_early_cfg=0.5),
                tiny_session)
        assert seen["controlnet"] == seen["unet"] == [2, 2, 2, 3]
    finally:
        for hook in hooks:
            hook.remove()
    plain = txt2img(_settings(tiny_model[0], controls=unit, steps=4, cfg=1.0, sampler="Euler"), tiny_session)[0]
    assert np.array_equal(_px(skipped.image), _px(plain.image))
