"""txt2img: seeds, samplers, sizes, LoRAs and embeddings by file, PNG metadata and --from-png."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from personae.config.generate import GenerateSettings
from personae.errors import UserError
from personae.inference.samplers import SAMPLERS, get_sampler
from personae.inference.txt2img import txt2img
from personae.jobs.generate import run_generate, settings_from_png
from personae.media.png import parse_parameters, read_png_text


def pixels(result):
    return np.asarray(result.image, dtype=np.int16)


def settings(model, **kw):
    return GenerateSettings(**{"model": str(model), "prompt": "a photo of a cat", "steps": 4, "seed": 7,
                               "width": 64, "height": 64, **kw})


def test_same_seed_same_pixels_new_seed_new_pixels(tiny_model, tiny_session):
    a = txt2img(settings(tiny_model[0]), tiny_session)[0]
    b = txt2img(settings(tiny_model[0]), tiny_session)[0]
    c = txt2img(settings(tiny_model[0], seed=8), tiny_session)[0]
    assert np.array_equal(pixels(a), pixels(b))
    assert np.abs(pixels(a) - pixels(c)).mean() > 1


def test_default_size_is_the_models_native_size(tiny_model, tiny_session):
    out = txt2img(settings(tiny_model[0], width=None, height=None, steps=2), tiny_session)
    assert out[0].image.size == (64, 64) and "Size: 64x64" in out[0].parameters
    wide = txt2img(settings(tiny_model[0], width=96, height=64, steps=2), tiny_session)
    assert wide[0].image.size == (96, 64)
    # read from the configs before any load (a recipe prepares its inputs at it), for a folder and a single file
    from personae.models.resolve import native_size, resolve_model

    assert [native_size(resolve_model(str(m))) for m in tiny_model] == [tiny_session.native_size] * 2 == [64, 64]


def test_batches_continue_the_seeds_and_each_image_reproduces_alone(tiny_model, tiny_session):
    out = txt2img(settings(tiny_model[0], seed=10, batch_size=2, batch_count=2, steps=3), tiny_session)
    assert [r.seed for r in out] == [10, 11, 12, 13]
    alone = txt2img(settings(tiny_model[0], seed=12, steps=3), tiny_session)[0]
    assert np.abs(pixels(alone) - pixels(out[2])).max() <= 1  # batched matmuls may differ in the last bit


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_runs_and_is_deterministic(tiny_model, tiny_session, name, monkeypatch):
    from personae.inference.session import Session

    used, build = [], Session.pipeline  # each call's pipeline is built with the sampler's scheduler
    monkeypatch.setattr(Session, "pipeline", lambda self, *a, **kw: used.append(kw["scheduler"]) or build(self, *a, **kw))
    own = tiny_session.pipe.scheduler
    s = settings(tiny_model[0], sampler=name, steps=3)
    a, b = txt2img(s, tiny_session)[0], txt2img(s, tiny_session)[0]
    assert len(used) == 2 and all(type(x) is SAMPLERS[name].scheduler for x in used)
    assert tiny_session.pipe.scheduler is own  # the session's own is left as it was
    assert np.array_equal(pixels(a), pixels(b)) and pixels(a).std() > 0
    assert f"Sampler: {name}," in a.parameters


def test_karras_variant_changes_the_sigmas(tiny_session):
    config = tiny_session.base_scheduler
    plain, karras = get_sampler("DPM++ 2M").make(config), get_sampler("dpm++  2m karras").make(config)
    plain.set_timesteps(10), karras.set_timesteps(10)
    assert not torch.equal(plain.timesteps, karras.timesteps)
    # a model that ships Karras sigmas on does not turn plain "DPM++ 2M" into the Karras variant
    again = get_sampler("DPM++ 2M").make(karras.config)
    again.set_timesteps(10)
    assert torch.equal(again.timesteps, plain.timesteps)


def test_unknown_sampler_lists_the_valid_names():
    with pytest.raises(UserError) as err:
        get_sampler("Euler b")
    assert "Euler a" in str(err.value) and "UniPC" in str(err.value)


def test_the_torch_free_name_check_agrees_with_the_samplers():
    """The command line checks a sampler's name before any library loads (inference/sampler_names.py); it must
    refuse exactly the names get_sampler calls unknown. Every name, with every schedule type and ComfyUI's forms,
    in other cases and spacing, and near misses."""
    import subprocess
    import sys

    from personae.inference import sampler_names as names
    from personae.inference.sigmas import SCHEDULES as K_SCHEDULES

    assert names.K_SCHEDULE_NAMES == tuple(K_SCHEDULES)  # the names the code has, in its order
    schedules = [*names.K_SCHEDULE_NAMES, *names.DEFAULT_SCHEDULES, "Nope", "Karras Exponential", ""]
    candidates = [f"{n} {s}" for n in [*names.SAMPLER_NAMES, "Euler b", "DPM++"] for s in schedules]
    candidates += [f"{c}{sep}{s}" for c in [*names.COMFY_SAMPLERS, "eulr"] for sep in (" ", " + ", "_")
                   for s in [*names.COMFY_SCHEDULERS, "kl_optimal", ""]]
    candidates += [c.upper() for c in candidates[::7]] + ["  dpm++   2m  karras ", "", "x", "+", "Euler a a"]
    for name in candidates:
        try:
            get_sampler(name)
            unknown = False
        except UserError as err:
            unknown = str(err).startswith("Unknown sampler")
        assert names.is_sampler_name(name) is not unknown, name
    # and the check runs with no torch in the process
    code = "import sys; from personae.inference.sampler_names import check_sampler_names; " \
           "check_sampler_names('DPM++ 2M Karras', 'dpmpp_2m_sde_karras'); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_wrong_sampler_on_the_command_line_is_said_before_the_model_loads(tmp_path, capsys):
    from personae.cli.main import main

    assert main(["generate", "--model", str(tmp_path / "nowhere"), "--prompt", "x", "--sampler", "Euler b",
                 "--out", str(tmp_path / "out")]) == 2  # the sampler is said first: the missing model comes later
    err = capsys.readouterr().err
    assert 'Unknown sampler "Euler b"' in err and "Euler a" in err and not (tmp_path / "out").exists()
    assert main(["generate", "--model", str(tmp_path / "nowhere"), "--prompt", "x", "--hires-scale", "2",
                 "--hires-sampler", "Nope", "--out", str(tmp_path / "out")]) == 2
    assert 'Unknown sampler "Nope"' in capsys.readouterr().err


def test_png_carries_a1111_parameters_and_from_png_reproduces(tiny_model, tmp_path):
    s = settings(tiny_model[0], negative="blurry, (lowres:1.2)", clip_skip=2, sampler="Euler a")
    [path] = run_generate(s, tmp_path)
    prompt, negative, params = parse_parameters(read_png_text(path)["parameters"])
    assert prompt == "a photo of a cat" and negative == "blurry, (lowres:1.2)"
    assert params["Steps"] == "4" and params["Seed"] == "7" and params["Size"] == "64x64"
    assert params["Sampler"] == "Euler a" and params["CFG scale"] == "7" and params["Clip skip"] == "2"
    assert params["Model"] == "tiny"
    again = run_generate(GenerateSettings(**settings_from_png(path)), tmp_path / "again")[0]
    assert np.array_equal(np.asarray(__import__("PIL.Image").Image.open(path)), np.asarray(__import__("PIL.Image").Image.open(again)))


def test_a1111_infotext_is_read_including_schedule_type(tmp_path):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    text = ("masterpiece, (red fox:1.2), <lora:me:0.8>\nNegative prompt: lowres, bad hands\n"
            'Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234, Size: 512x768, '
            'Model hash: abcdef1234, Model: majicmix, Clip skip: 2, Lora hashes: "me: 0123456789ab", Version: v1.10.1')
    info = PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (8, 8)).save(tmp_path / "a1111.png", pnginfo=info)
    data = settings_from_png(tmp_path / "a1111.png")
    assert data == {"prompt": "masterpiece, (red fox:1.2), <lora:me:0.8>", "negative": "lowres, bad hands", "steps": 30,
                    "cfg": 6.5, "seed": 1234, "width": 512, "height": 768, "clip_skip": 2, "sampler": "DPM++ 2M Karras",
                    "rng": "GPU", "pad_conds": "off"}  # A1111's defaults: noise drawn on the GPU, no padding


def _lora_file(path, seed=0):
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from personae.models.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    torch.manual_seed(seed)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                     init_lora_weights=False))
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    StableDiffusionPipeline.save_lora_weights(str(path.parent), unet_lora_layers=layers, weight_name=path.name)
    return path


def test_a_lora_made_for_another_base_model_is_one_short_error(tiny_model, tmp_path):
    """A LoRA trained on a UNet of other sizes (here: a tiny UNet with 48-wide text features and other block widths,
    as an SDXL LoRA is to SD 1.x) is refused in one line naming the first misfit, not pages of tensor sizes."""
    import subprocess
    import sys

    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from personae.models.tiny import TINY_UNET

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**{**TINY_UNET, "cross_attention_dim": 48, "block_out_channels": (16, 32, 32, 48)})
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                init_lora_weights="gaussian"))
    StableDiffusionPipeline.save_lora_weights(str(tmp_path), unet_lora_layers=get_peft_model_state_dict(unet),
                                              weight_name="other.safetensors")
    r = subprocess.run([sys.executable, "-m", "personae", "generate", "--model", str(tiny_model[0]), "--prompt", "x",
                        "--steps", "2", "--lora", f"{tmp_path / 'other.safetensors'}:0.8", "--out",
                        str(tmp_path / "out"), "--quiet"], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert r.stdout == "" and len(r.stderr) < 800, r.stderr
    one_line = " ".join(r.stderr.split())
    assert one_line.count("was made for another base model") == 1 and one_line.startswith("error: LoRA ")
    assert " of 80 layers have other shapes, first: unet.down_blocks.0.attentions.0" in one_line
    assert "expected (32, 32) got (16, 16). Use a LoRA trained for this model." in one_line
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_lora_by_file_and_weight(tiny_model, tiny_session, tmp_path):
    lora = _lora_file(tmp_path / "style.safetensors")
    base = pixels(txt2img(settings(tiny_model[0]), tiny_session)[0])
    full = txt2img(settings(tiny_model[0], loras=[{"path": str(lora), "weight": 1.0}]))[0]
    off = txt2img(settings(tiny_model[0], loras=[{"path": str(lora), "weight": 0.0}]))[0]
    assert np.abs(pixels(full) - base).mean() > 1
    assert np.abs(pixels(off) - base).max() <= 1
    assert "<lora:style:1>" in full.parameters and "Lora hashes: \"style: " in full.parameters


def test_embeddings_in_a1111_and_diffusers_formats(tiny_model, tiny_session, tmp_path):
    torch.manual_seed(0)
    save_file({"emb_params": torch.randn(2, 32)}, str(tmp_path / "shiny-style.safetensors"))
    save_file({"<toy>": torch.randn(1, 32)}, str(tmp_path / "learned_embeds.safetensors"))
    base = pixels(txt2img(settings(tiny_model[0], prompt="a photo of a cat"), tiny_session)[0])
    s = settings(tiny_model[0], prompt="a photo of a cat, shiny-style, <toy>",
                 embeddings=[{"path": str(tmp_path / "shiny-style.safetensors")},
                             {"path": str(tmp_path / "learned_embeds.safetensors")}])
    out = txt2img(s)[0]
    assert 'TI hashes: "shiny-style: ' in out.parameters and "<toy>: " in out.parameters
    assert np.abs(pixels(out) - base).mean() > 1
    renamed = settings(tiny_model[0], prompt="a photo of a cat, mytok",
                       embeddings=[{"path": str(tmp_path / "shiny-style.safetensors"), "token": "mytok"}])
    assert "mytok: " in txt2img(renamed)[0].parameters


def test_missing_addon_files_and_cpu_fp16_are_clear_errors(tiny_model, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        txt2img(settings(tiny_model[0], loras=[{"path": str(tmp_path / "nope.safetensors")}]))
    with pytest.raises(UserError, match="fp16"):
        txt2img(settings(tiny_model[0], device="cpu", dtype="fp16"))


def test_a_generation_leaves_the_session_it_was_handed_as_it_was(tiny_model, tmp_path, photo):
    """Scheduler, LoRA weights, add-on lists: per-call choices (sampler, img2img, this call's LoRA weights) are
    made in a pipeline of the call's own; the session's pipeline, scheduler and adapter weights stay put, and a
    later call with the defaults gives the same pixels as before."""
    from personae.inference.session import open_session

    lora = _lora_file(tmp_path / "style.safetensors")
    session = open_session(str(tiny_model[0]), device="cpu", loras=[(str(lora), 0.7)])
    scheduler, pipe, loras = session.pipe.scheduler, session.pipe, list(session.loras)
    scale = lambda: sorted({float(m.scaling[a]) for m in session.pipe.unet.modules()  # noqa: E731
                            if hasattr(m, "scaling") for a in m.scaling})
    before_scale = scale()
    first = txt2img(settings(tiny_model[0], steps=3), session)[0]
    other = txt2img(settings(tiny_model[0], steps=3, sampler="Euler a"), session, loras=[])[0]  # LoRA off, other sampler
    assert other.parameters.count("<lora:") == 0 and "<lora:style:0.7>" in first.parameters
    txt2img(settings(tiny_model[0], steps=4, init_image=str(photo), strength=0.5, sampler="DDIM"), session,
            loras=[replace(loras[0], weight=1.5)])
    assert session.pipe is pipe and session.pipe.scheduler is scheduler and session.loras == loras
    assert type(scheduler).__name__ == type(session.pipe.scheduler).__name__ and scale() == before_scale
    again = txt2img(settings(tiny_model[0], steps=3), session)[0]
    assert np.array_equal(pixels(first), pixels(again))
    assert not np.array_equal(pixels(first), pixels(other))


def _kohya_lora(pipe, path, seed=0):
    """A kohya / A1111 layout LoRA on the UNet's self-attention queries, as shared on model sites."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in pipe.unet.named_modules():
        if name.endswith("attn1.to_q"):
            key = "lora_unet_" + name.replace(".", "_")
            tensors |= {f"{key}.lora_down.weight": torch.randn(2, module.in_features, generator=g),
                        f"{key}.lora_up.weight": torch.randn(module.out_features, 2, generator=g),
                        f"{key}.alpha": torch.tensor(2.0)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def test_lora_tag_in_the_prompt_is_found_in_lora_dir_and_applied(tiny_model, tiny_session, tmp_path, capsys):
    """<lora:name:0.8> (A1111) was passed to the tokenizer as text and the LoRA ignored."""
    from personae.cli.main import main

    webui = tmp_path / "stable-diffusion-webui"
    lora = _kohya_lora(tiny_session.pipe, webui / "models" / "Lora" / "styles" / "watercolor.safetensors")
    base = pixels(txt2img(settings(tiny_model[0]), tiny_session)[0])
    by_file = txt2img(settings(tiny_model[0], loras=[{"path": str(lora), "weight": 0.8}]))[0]
    for folder in (webui, webui / "models" / "Lora"):  # the webui folder or its models/Lora
        tagged = txt2img(settings(tiny_model[0], prompt="a photo of <lora:watercolor:0.8> a cat", lora_dir=str(folder)))[0]
        assert np.array_equal(pixels(tagged), pixels(by_file)) and np.abs(pixels(tagged) - base).mean() > 1
    assert tagged.settings.prompt == "a photo of a cat" and tagged.settings.loras[0].path == str(lora.resolve())
    assert tagged.parameters.splitlines()[0] == "a photo of a cat <lora:watercolor:0.8>"
    with pytest.raises(UserError, match=r"holds no file named watercolour.safetensors. Did you mean \"watercolor\"") as err:
        txt2img(settings(tiny_model[0], prompt="a cat <lora:watercolour:0.8>", lora_dir=str(webui)))
    assert "It holds: watercolor." in str(err.value)
    with pytest.raises(UserError, match="Pass --lora-dir DIR"):
        txt2img(settings(tiny_model[0], prompt="a cat <lora:watercolor>"))
    code = main(["generate", "--model", str(tiny_model[0]), "--prompt", "a cat <lora:styles/watercolor:0.5>", "--steps",
                 "1", "--lora-dir", str(webui), "--quiet", "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    [png] = (tmp_path / "out").glob("*.png")
    assert "<lora:watercolor:0.5>" in read_png_text(png)["parameters"]


def test_lora_tag_with_a_session_picks_the_weight_of_a_loaded_lora(tiny_model, tiny_session, tmp_path):
    from personae.inference.session import open_session

    lora = _kohya_lora(tiny_session.pipe, tmp_path / "ink.safetensors")
    session = open_session(str(tiny_model[0]), device="cpu", loras=[(str(lora), 1.0)])
    half = txt2img(settings(tiny_model[0], prompt="a photo of a cat <lora:ink:0.5>"), session)[0]
    again = txt2img(settings(tiny_model[0]), session, loras=[replace(session.loras[0], weight=0.5)])[0]
    assert np.array_equal(pixels(half), pixels(again)) and "<lora:ink:0.5>" in half.parameters
    with pytest.raises(UserError, match="not among the LoRAs loaded"):
        txt2img(settings(tiny_model[0], prompt="a cat <lora:other:1>"), session)


def _a1111_png(path, parameters):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", parameters)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def test_from_png_of_an_a1111_png_applies_lora_tags_and_names_what_it_does_not_apply(tiny_model, tiny_session,
                                                                                     tmp_path, capsys):
    """LoRA tags were dropped and Hires fix, ADetailer, embeddings ignored without a word."""
    from personae.cli.main import main

    _kohya_lora(tiny_session.pipe, tmp_path / "Lora" / "watercolor.safetensors")
    png = _a1111_png(tmp_path / "a1111.png", (
        "a photo of a cat, <lora:watercolor:0.8>, easynegative\nNegative prompt: lowres\n"
        "Steps: 2, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6, Seed: 3, Size: 64x64, "
        "Model hash: abcdef1234, Model: majicmix, Face restoration: CodeFormer, ADetailer model: face_yolov8n.pt, "
        'ADetailer confidence: 0.3, Denoising strength: 0.4, TI hashes: "easynegative: 0123", '
        'Lora hashes: "watercolor: 0123456789ab", Version: v1.10.1'))
    code = main(["generate", "--from-png", str(png), "--model", str(tiny_model[0]), "--lora-dir", str(tmp_path / "Lora"),
                 "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    [warning] = [line for line in captured.err.splitlines() if "not applied" in line]
    for name in ('Face restoration "CodeFormer"', 'ADetailer model "face_yolov8n.pt"', "ADetailer confidence",
                 "TI hashes easynegative (pass --embeddings-dir", "Denoising strength", "(no --init-image)",
                 'Model "majicmix" [abcdef1234]'):
        assert name in warning, (name, warning)
    for applied in ("Steps", "Sampler", "Schedule type", "Lora hashes", "Size", "Seed"):
        assert applied + " " not in warning.split("apply")[-1]
    [out] = (tmp_path / "out").glob("*.png")
    _, _, params = parse_parameters(read_png_text(out)["parameters"])
    assert params["Sampler"] == "DPM++ 2M Karras" and "watercolor: " in params["Lora hashes"]
    assert read_png_text(out)["parameters"].startswith("a photo of a cat, , easynegative <lora:watercolor:0.8>")


def test_model_hash_and_absolute_paths_in_the_png(tiny_model, tiny_session, tmp_path, monkeypatch):
    """A1111's "Model hash" (sha256 of the file, 10 hex) for a single file, none for a folder; the stored settings
    name the model and add-ons by absolute path, so --from-png works from another working folder."""
    import hashlib
    import os

    lora = _kohya_lora(tiny_session.pipe, tmp_path / "ink.safetensors")
    monkeypatch.chdir(tiny_model[1].parent)
    [single] = run_generate(settings(tiny_model[1].name, steps=1), tmp_path / "single")
    expected = hashlib.sha256(tiny_model[1].read_bytes()).hexdigest()[:10]
    assert parse_parameters(read_png_text(single)["parameters"])[2]["Model hash"] == expected
    monkeypatch.chdir(tmp_path)  # the model and the LoRA given relative to this folder
    relative = settings(os.path.relpath(tiny_model[0]), steps=1, loras=[{"path": "ink.safetensors", "weight": 0.5}])
    [folder] = run_generate(relative, tmp_path / "folder")
    assert "Model hash" not in read_png_text(folder)["parameters"]
    monkeypatch.chdir(tmp_path / "folder")  # elsewhere: the stored paths still name the files
    data = settings_from_png(folder)
    assert data["loras"][0]["path"] == str(lora.resolve()) and data["model"] == str(tiny_model[0].resolve())
    assert settings_from_png(single)["model"] == str(tiny_model[1].resolve())


@pytest.mark.parametrize("upscaler,a1111", [("latent", "Latent"), ("image", "Lanczos")])
def test_hires_fix_upscales_redraws_and_round_trips_through_a1111_infotext(tiny_model, tiny_session, tmp_path,
                                                                           upscaler, a1111):
    """A1111's "Hires upscale", "Hires steps", "Denoising strength", "Hires upscaler": base size, upscale, redraw."""
    s = settings(tiny_model[0], steps=3, hires_scale=1.5, hires_steps=4, hires_denoise=0.6, hires_upscaler=upscaler)
    out = txt2img(s, tiny_session)[0]
    assert out.image.size == (96, 96) and out.settings.width == 64  # the base size is what reproduces it
    _, _, params = parse_parameters(out.parameters)
    assert (params["Size"], params["Hires upscale"], params["Hires steps"], params["Denoising strength"],
            params["Hires upscaler"]) == ("64x64", "1.5", "4", "0.6", a1111)
    plain = np.asarray(txt2img(settings(tiny_model[0], steps=3), tiny_session)[0].image.resize((96, 96)), np.int16)
    assert np.abs(pixels(out) - plain).mean() > 1  # redrawn, not only resized
    # an A1111-style PNG (no personae chunk) gives the same settings back, and the same picture
    png = tmp_path / "a1111.png"
    from personae.media.png import save_png
    save_png(out.image, png, out.parameters)
    data = settings_from_png(png)
    assert {k: data[k] for k in ("hires_scale", "hires_steps", "hires_denoise", "hires_upscaler")} == {
        "hires_scale": 1.5, "hires_steps": 4, "hires_denoise": 0.6, "hires_upscaler": upscaler}
    again = txt2img(GenerateSettings(**{**data, "model": str(tiny_model[0])}), tiny_session)[0]
    assert np.array_equal(pixels(again), pixels(out))


def test_hires_resize_covers_the_size_and_crops_the_overhang_as_a1111():
    """A1111's "Hires resize" arithmetic (calculate_target_resolution, sample_hr_pass): scale to cover the size at
    the picture's aspect ratio, then cut the overhang in latent cells, the odd cell at the end."""
    from personae.inference.hires import crop_overhang, resize_plan

    assert resize_plan(512, 768, (1024, 1024)) == ((1024, 1536), (0, 64))  # tall picture: rows cut
    assert resize_plan(768, 512, (1024, 1024)) == ((1536, 1024), (64, 0))  # wide: columns cut
    assert resize_plan(512, 768, (1024, 0)) == ((1024, 1536), (0, 0))  # a 0 side follows the other
    assert resize_plan(512, 768, (0, 1024)) == ((682, 1024), (0, 0))
    assert resize_plan(512, 512, (1024, 1024)) == ((1024, 1024), (0, 0))
    latents = torch.arange(12 * 10.0).reshape(1, 1, 12, 10)
    cut = crop_overhang(latents, (3, 3), 8)
    assert cut.shape[-2:] == (9, 7)
    assert cut[0, 0, 0, 0] == latents[0, 0, 1, 1] and cut[0, 0, -1, -1] == latents[0, 0, 9, 7]
    from PIL import Image
    [picture] = crop_overhang([Image.new("RGB", (80, 96))], (3, 0), 8)
    assert picture.size == (56, 96)
    with pytest.raises(ValueError, match="needs a side between 1 and 8192"):
        GenerateSettings(model="m", prompt="a cat", hires_resize="0x0")
    with pytest.raises(ValueError, match="should match pattern"):
        GenerateSettings(model="m", prompt="a cat", hires_resize="big")
    on = GenerateSettings(model="m", prompt="a cat", hires_resize=" 1024 x 768")  # the size alone turns the fix on
    assert on.hires_scale == 1.0 and on.hires_resize == "1024x768" and on.hires_target == (1024, 768)


@pytest.mark.parametrize("upscaler", ["latent", "image"])
def test_hires_resize_draws_the_size_asked_and_round_trips_through_a1111_infotext(tiny_model, tiny_session, tmp_path,
                                                                                   upscaler):
    s = settings(tiny_model[0], steps=3, height=96, hires_resize="96x96", hires_steps=3, hires_denoise=0.6,
                 hires_upscaler=upscaler)
    out = txt2img(s, tiny_session)[0]
    assert out.image.size == (96, 96)  # 64x96 scaled to 96x144, 3 latent rows cut at the top and 3 at the bottom
    _, _, params = parse_parameters(out.parameters)
    assert params["Hires resize"] == "96x96" and "Hires upscale" not in params and params["Size"] == "64x96"
    png = tmp_path / "a1111.png"
    from personae.media.png import save_png
    save_png(out.image, png, out.parameters)  # A1111's text alone: "Hires resize" carries the fix and its keys
    data = settings_from_png(png)
    assert (data["hires_resize"], data["hires_steps"], data["hires_denoise"]) == ("96x96", 3, 0.6)
    again = txt2img(GenerateSettings(**{**data, "model": str(tiny_model[0])}), tiny_session)[0]
    assert np.array_equal(pixels(again), pixels(out))
    from personae.jobs.generate import png_not_applied
    assert png_not_applied(png, GenerateSettings(**{**data, "model": str(tiny_model[0])}),
                           tiny_session.model_hash) == []


def test_hires_fix_with_a_model_upscaler_and_an_a1111_png_of_it(tiny_model, tiny_session, tmp_path):
    """--hires-upscaler FILE: an ESRGAN-family network (models/upscalers.py, checked against spandrel in
    tests/test_upscalers.py) upscales the decoded picture; A1111's name for it goes in the infotext, and an A1111 PNG
    naming it finds the file in --upscaler-dir and gives the same picture."""
    from personae.jobs.generate import png_not_applied, png_references, png_upscaler
    from personae.media.png import save_png
    from personae.models.upscalers import RRDBNet

    torch.manual_seed(0)
    net = RRDBNet(3, 3, 8, 1, 4, 2, 1)  # 4x, BasicSR's names, as RealESRGAN_x4plus is written
    folder = tmp_path / "webui" / "models" / "RealESRGAN"
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "RealESRGAN_x4plus.safetensors"))
    s = settings(tiny_model[0], steps=3, hires_scale=1.5, hires_steps=4, hires_denoise=0.3,
                 hires_upscaler=str(folder / "RealESRGAN_x4plus.safetensors"))
    events = []
    out = txt2img(s, tiny_session, on_event=events.append)[0]
    tiles = [(e.done, e.total) for e in events if getattr(e, "stage", None) == "upscale"]
    assert tiles == [(1, 1)], tiles  # 64 px: one A1111 tile of 192, padded; a progress bar for the slow part
    lanczos = txt2img(s.model_copy(update={"hires_upscaler": "image"}), tiny_session)[0]
    assert out.image.size == (96, 96) and np.abs(pixels(out) - pixels(lanczos)).mean() > 1  # the network drew
    assert parse_parameters(out.parameters)[2]["Hires upscaler"] == "R-ESRGAN 4x+"  # A1111's name for that file
    assert out.settings.hires_upscaler == str(folder.resolve() / "RealESRGAN_x4plus.safetensors")
    png = tmp_path / "a1111.png"  # as A1111 would write it: infotext only, the upscaler by name
    save_png(out.image, png, out.parameters)
    data = settings_from_png(png)
    assert data["hires_upscaler"] == "R-ESRGAN 4x+"
    found = png_upscaler(GenerateSettings(**{**data, "model": str(tiny_model[0]), "upscaler_dir": str(tmp_path / "webui")}),
                         data)
    assert png_not_applied(png, found) == [] and "hires upscaler: " + str(folder.resolve() / "RealESRGAN_x4plus"
                                                                        ".safetensors") in png_references(found, data)
    assert np.array_equal(pixels(txt2img(found, tiny_session)[0]), pixels(out))
    with pytest.raises(UserError, match='no --upscaler-dir is given'):  # typed by the user: an error, not Lanczos
        txt2img(s.model_copy(update={"hires_upscaler": "R-ESRGAN 4x+"}), tiny_session)
    with pytest.raises(UserError, match="is a pickle file"):  # checked before anything is drawn
        torch.save(net.state_dict(), tmp_path / "4x.pth")
        txt2img(s.model_copy(update={"hires_upscaler": str(tmp_path / "4x.pth")}), tiny_session)


def test_variation_seeds_bend_the_noise_toward_another_seed_as_a1111(tiny_model, tiny_session, tmp_path, photo):
    """A1111's "Variation seed" / "Variation seed strength": 0 is the seed's picture, 1 the variation seed's, a batch
    keeps the seed and counts the variation seed up, and the PNG (A1111's keys) gives each picture back."""
    from personae.inference.variation import seed_noise, slerp
    from personae.media.png import save_png

    low, high = seed_noise(7, (4, 8, 8)), seed_noise(9, (4, 8, 8))
    assert torch.equal(slerp(0.0, low, high), low) and torch.allclose(slerp(1.0, low, high), high, atol=1e-5)
    assert torch.equal(slerp(0.3, low, low), low * 0.3 + low * 0.7)  # A1111's plain mix when nearly parallel
    own = txt2img(settings(tiny_model[0], seed=9), tiny_session)[0]
    toward = txt2img(settings(tiny_model[0], seed=7, subseed=9, subseed_strength=1.0), tiny_session)[0]
    assert np.abs(pixels(toward) - pixels(own)).max() <= 1  # strength 1: the variation seed's picture
    plain = txt2img(settings(tiny_model[0], seed=7), tiny_session)[0]
    batch = txt2img(settings(tiny_model[0], seed=7, subseed=9, subseed_strength=0.3, batch_size=2), tiny_session)
    assert [b.seed for b in batch] == [7, 7] and [b.settings.subseed for b in batch] == [9, 10]
    near = np.abs(pixels(batch[0]) - pixels(plain)).mean()
    assert 0 < near < np.abs(pixels(own) - pixels(plain)).mean(), near  # between the two
    params = parse_parameters(batch[1].parameters)[2]
    assert (params["Seed"], params["Variation seed"], params["Variation seed strength"]) == ("7", "10", "0.3")
    assert "Variation seed" not in parse_parameters(plain.parameters)[2]
    png = tmp_path / "a1111.png"
    save_png(batch[1].image, png, batch[1].parameters)  # as A1111 writes it: the second picture of the batch
    data = settings_from_png(png)
    assert (data["seed"], data["subseed"], data["subseed_strength"]) == (7, 10, 0.3)
    again = txt2img(GenerateSettings(**{**data, "model": str(tiny_model[0])}), tiny_session)[0]
    assert np.abs(pixels(again) - pixels(batch[1])).max() <= 1  # alone, not in a batch of 2: the last bits differ
    hires = txt2img(settings(tiny_model[0], seed=7, subseed=9, subseed_strength=0.3, hires_scale=1.5,
                             hires_denoise=0.5), tiny_session)[0]
    assert hires.image.size == (96, 96)
    with pytest.raises(UserError, match="img2img starts from --init-image"):
        txt2img(settings(tiny_model[0], init_image=str(photo), subseed_strength=0.3), tiny_session)


def test_seed_resize_keeps_the_seeds_noise_in_the_middle_of_a_new_size(tiny_model, tiny_session, tmp_path):
    """A1111's "Resize seed from": the noise of the old size centred in the new size's noise from the same seed."""
    from pydantic import ValidationError

    from personae.inference.variation import seed_noise, start_latents

    wider = start_latents([5], [None], 0.0, (4, 8, 12), drawn_at=(4, 6, 8))[0]
    small, own = seed_noise(5, (4, 6, 8)), seed_noise(5, (4, 8, 12))
    assert torch.equal(wider[:, 1:7, 2:10], small)  # centred
    assert torch.equal(wider[:, 0], own[:, 0]) and torch.equal(wider[:, :, :2], own[:, :, :2])  # the rest: the seed's
    narrower = start_latents([5], [None], 0.0, (4, 4, 4), drawn_at=(4, 6, 8))[0]
    assert torch.equal(narrower, small[:, 1:5, 2:6])  # larger noise: its middle
    plain = txt2img(settings(tiny_model[0], width=80), tiny_session)[0]
    same = txt2img(settings(tiny_model[0], width=80, seed_resize_from_w=80, seed_resize_from_h=64), tiny_session)[0]
    assert np.array_equal(pixels(plain), pixels(same))  # from its own size: nothing moves
    resized = txt2img(settings(tiny_model[0], width=80, seed_resize_from_w=64, seed_resize_from_h=64), tiny_session)[0]
    assert np.abs(pixels(resized) - pixels(plain)).mean() > 1
    assert parse_parameters(resized.parameters)[2]["Seed resize from"] == "64x64"
    png = _a1111_png(tmp_path / "a1111.png", "a photo of a cat\nSteps: 4, Sampler: DPM++ 2M Karras, Seed: 7, "
                                             "Size: 80x64, Seed resize from: 64x64, RNG: CPU")
    data = settings_from_png(png)
    assert (data["seed_resize_from_w"], data["seed_resize_from_h"], data["width"]) == (64, 64, 80)
    again = txt2img(GenerateSettings(**{**data, "model": str(tiny_model[0]), "cfg": 7.0}), tiny_session)[0]
    redo = txt2img(settings(tiny_model[0], width=80, cfg=7.0, seed_resize_from_w=64, seed_resize_from_h=64),
                   tiny_session)[0]
    assert np.array_equal(pixels(again), pixels(redo))
    from personae.jobs.generate import png_not_applied

    assert png_not_applied(png, GenerateSettings(**{**data, "model": "m"})) == []
    with pytest.raises(ValidationError, match="go together"):
        settings(tiny_model[0], seed_resize_from_w=64)


def test_the_hires_redraw_has_its_own_prompt_sampler_and_cfg_as_in_a1111(tiny_model, tiny_session, tmp_path):
    """A1111 1.6+'s "Hires prompt", "Hires negative prompt", "Hires sampler" (with "Hires schedule type") and 1.9's
    "Hires CFG Scale": the base pass is conditioned on the prompt, the redraw on the hires prompt; all read back."""
    from pydantic import ValidationError

    from personae.media.png import save_png

    seen = []
    hook = tiny_session.pipe.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["encoder_hidden_states"]), with_kwargs=True)
    s = settings(tiny_model[0], steps=3, hires_scale=1.5, hires_steps=4, hires_denoise=0.5, hires_prompt="a red house",
                 hires_negative="blurry", hires_sampler="euler", hires_cfg=3.0, cfg=5.0)
    try:
        out = txt2img(s, tiny_session)[0]
    finally:
        hook.remove()
    base, redraw = tiny_session.encoder.encode_pair("a photo of a cat", "", 1), \
        tiny_session.encoder.encode_pair("a red house", "blurry", 1)
    assert len(seen) == 3 + 4  # 3 base steps, then the 4 of the redraw (A1111's: the last 4 of 4 / 0.5 = 8)
    assert all(torch.equal(e, torch.cat([base[1].embeds, base[0].embeds])) for e in seen[:3])
    assert all(torch.equal(e, torch.cat([redraw[1].embeds, redraw[0].embeds])) for e in seen[3:])
    params = parse_parameters(out.parameters)[2]
    assert (params["Hires prompt"], params["Hires negative prompt"], params["Hires sampler"],
            params["Hires CFG Scale"]) == ("a red house", "blurry", "Euler", "3")
    plain = txt2img(s.model_copy(update={"hires_prompt": "", "hires_negative": "", "hires_sampler": "",
                                         "hires_cfg": None}), tiny_session)[0]
    assert np.abs(pixels(out) - pixels(plain)).mean() > 1
    png = tmp_path / "a1111.png"
    save_png(out.image, png, out.parameters)
    data = settings_from_png(png)
    assert (data["hires_prompt"], data["hires_negative"], data["hires_sampler"], data["hires_cfg"]) == (
        "a red house", "blurry", "Euler", 3.0)
    again = txt2img(GenerateSettings(**{**data, "model": str(tiny_model[0])}), tiny_session)[0]
    assert np.array_equal(pixels(again), pixels(out))
    karras = _a1111_png(tmp_path / "k.png", "a cat\nSteps: 4, Seed: 1, Size: 64x64, Denoising strength: 0.5, "
                                            "Hires upscale: 2, Hires sampler: DPM++ 2M, Hires schedule type: Karras")
    assert settings_from_png(karras)["hires_sampler"] == "DPM++ 2M Karras"
    with pytest.raises(ValidationError, match="need hires_scale"):
        settings(tiny_model[0], hires_prompt="a red house")
    with pytest.raises(UserError, match="LoRA tags other than the prompt's"):
        txt2img(s.model_copy(update={"hires_prompt": "a red house <lora:other:1>"}), tiny_session)


def test_hires_fix_refuses_img2img_and_a_redraw_of_no_steps(tiny_model, photo):
    with pytest.raises(UserError, match="--hires-scale cannot be combined with --init-image"):
        txt2img(settings(tiny_model[0], hires_scale=2, init_image=str(photo)))
    with pytest.raises(UserError, match="leaves no step of the redraw"):  # diffusers' DDIM runs steps x denoise
        txt2img(settings(tiny_model[0], hires_scale=2, hires_denoise=0.1, steps=4, sampler="DDIM"))


def test_an_a1111_png_made_with_dynamic_prompts_is_read_whole(tmp_path):
    """The Dynamic Prompts extension appends "Template:" and "Negative Template:" lines after A1111's parameters
    line: read as two keys (the prompts as written), not as the end of the negative prompt swallowing the
    settings; the picture's own prompts are the drawn ones, and nothing is said to be left out."""
    from personae.jobs.generate import png_not_applied
    from personae.media.png import parse_parameters

    text = ("a cat, autumn\nNegative prompt: ugly\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512\n"
            "Template: a cat, {summer|autumn}\nNegative Template: ugly")
    prompt, negative, params = parse_parameters(text)
    assert (prompt, negative, params["Steps"], params["Template"]) == ("a cat, autumn", "ugly", "20",
                                                                       "a cat, {summer|autumn}")
    assert params["Negative Template"] == "ugly"
    png = _a1111_png(tmp_path / "dynamic.png", text)
    data = settings_from_png(png)
    assert (data["prompt"], data["negative"], data["steps"], data["seed"]) == ("a cat, autumn", "ugly", 20, 1)
    assert png_not_applied(png, GenerateSettings(model="m", **data)) == []
    # a prompt that merely starts with "Template:" is a prompt
    assert parse_parameters("Template: a photo\nNegative Template: x")[0] == "Template: a photo\nNegative Template: x"


@pytest.mark.parametrize("suffix, encoding", [("jpg", "utf-16-be"), ("webp", "utf-16-be"), ("jpg", "utf-16-le"),
                                              ("jpg", "ascii")])
def test_an_a1111_jpeg_or_webp_is_read_from_its_exif_comment(tmp_path, suffix, encoding):
    """A1111 saves JPEG and WebP pictures with the infotext in EXIF's UserComment (piexif's UNICODE: UTF-16
    big-endian), as Civitai serves them; some tools write it little-endian or as ASCII."""
    from PIL import Image

    from personae.jobs.generate import png_not_applied

    text = ("a red fox, (masterpiece:1.2)\nNegative prompt: blurry, ugly\nSteps: 24, Sampler: DPM++ 2M Karras, "
            "CFG scale: 6.5, Seed: 77, Size: 512x768, Clip skip: 2")
    code = b"ASCII\x00\x00\x00" if encoding == "ascii" else b"UNICODE\x00"
    exif = Image.Exif()
    exif[0x8769] = {0x9286: code + text.encode("utf-8" if encoding == "ascii" else encoding)}
    path = tmp_path / f"civitai.{suffix}"
    Image.new("RGB", (16, 16)).save(path, exif=exif.tobytes())
    data = settings_from_png(path)
    assert (data["prompt"], data["negative"], data["steps"], data["seed"], data["width"], data["height"],
            data["clip_skip"], data["sampler"]) == ("a red fox, (masterpiece:1.2)", "blurry, ugly", 24, 77, 512, 768,
                                                   2, "DPM++ 2M Karras")
    assert png_not_applied(path, GenerateSettings(model="m", **data)) == []
    plain = tmp_path / f"plain.{suffix}"
    Image.new("RGB", (16, 16)).save(plain)
    with pytest.raises(UserError, match="carries no generation settings"):
        settings_from_png(plain)
    with pytest.raises(UserError, match="not a picture whose settings can be read .it is not a PNG, JPEG or WebP"):
        (tmp_path / "notes.txt").write_text("Steps: 20")
        settings_from_png(tmp_path / "notes.txt")


def test_a1111_hires_with_a_model_upscaler_is_read_and_the_difference_named(tmp_path):
    from personae.jobs.generate import png_not_applied, png_upscaler

    png = _a1111_png(tmp_path / "hires.png", "a cat\nSteps: 20, Sampler: Euler a, Seed: 1, Size: 512x512, "
                     "Denoising strength: 0.45, Hires upscale: 2, Hires steps: 10, Hires upscaler: R-ESRGAN 4x+")
    data = settings_from_png(png)
    assert (data["hires_scale"], data["hires_steps"], data["hires_denoise"], data["hires_upscaler"]) == (2, 10, 0.45,
                                                                                                         "R-ESRGAN 4x+")
    applied = png_upscaler(GenerateSettings(model="m", **data), data)  # no --upscaler-dir: resized with Lanczos
    assert applied.hires_upscaler == "image"
    assert png_not_applied(png, applied) == ['Hires upscaler "R-ESRGAN 4x+" (upscaled as image here; --upscaler-dir '
                                             "with the folder holding its file would apply it)"]
    def read_back(name: str, params: str) -> tuple[dict, list[str]]:
        png = _a1111_png(tmp_path / name, f"a cat\nSteps: 20, Seed: 1, Size: 512x512, {params}")
        data = settings_from_png(png)
        return data, png_not_applied(png, GenerateSettings(model="m", **data))

    data, notes = read_back("nearest.png", "Denoising strength: 0.45, Hires upscale: 2, Hires upscaler: Nearest")
    assert data["hires_upscaler"] == "image" and notes == ['Hires upscaler "Nearest" (upscaled as image here)']
    data, notes = read_back("ays.png", "Sampler: DPM++ 2M, Schedule type: Align Your Steps, "
                                       "VAE: vae-ft-mse-840000-ema-pruned.safetensors")
    assert data["sampler"] == "DPM++ 2M Align Your Steps"  # k-diffusion's samplers take every schedule type
    assert notes == ["VAE (pass it with --vae)"]
    data, notes = read_back("ddim.png", "Sampler: DDIM, Schedule type: Align Your Steps")
    assert data["sampler"] == "DDIM"
    assert notes == ['Schedule type "Align Your Steps" (the sampler\'s own schedule is used)']


def test_vae_from_a_diffusers_folder_or_an_a1111_single_file_replaces_the_models(tiny_model, tiny_session, tmp_path):
    import json

    from personae.models.original_layout import CONFIG_METADATA_KEY, VAE_PREFIX, vae_to_original
    from personae.models.tiny import build_tiny_pipeline

    vae = build_tiny_pipeline(seed=1).vae  # other weights than the model's own
    vae.save_pretrained(tmp_path / "my-vae")
    state = {k.removeprefix(VAE_PREFIX): v.contiguous() for k, v in vae_to_original(vae.state_dict(),
                                                                                     dict(vae.config)).items()}
    single = tmp_path / "my-vae.safetensors"  # A1111's layout: LDM names without the first_stage_model. prefix
    save_file(state, str(single), metadata={CONFIG_METADATA_KEY: json.dumps({"vae": dict(vae.config)})})
    base = txt2img(settings(tiny_model[0], steps=2), tiny_session)[0]
    by_folder = txt2img(settings(tiny_model[0], steps=2, vae=str(tmp_path / "my-vae")))[0]
    by_file = txt2img(settings(tiny_model[0], steps=2, vae=str(single)))[0]
    assert np.abs(pixels(by_folder) - pixels(base)).mean() > 1
    assert np.abs(pixels(by_folder) - pixels(by_file)).max() <= 1
    assert "VAE: my-vae," in by_folder.parameters and "VAE hash" not in by_folder.parameters
    params = parse_parameters(by_file.parameters)[2]
    assert params["VAE"] == "my-vae.safetensors" and len(params["VAE hash"]) == 10
    assert by_file.settings.vae == str(single.resolve())
    save_file({"decoder.conv_in.weight": torch.zeros(2, 2, 3, 3)}, str(tmp_path / "broken.safetensors"))
    with pytest.raises(UserError, match="could not be loaded as an SD-1.x VAE"):
        txt2img(settings(tiny_model[0], steps=1, vae=str(tmp_path / "broken.safetensors")))
    with pytest.raises(UserError, match="holds no VAE decoder weights"):
        txt2img(settings(tiny_model[0], steps=1, vae=str(_kohya_lora(tiny_session.pipe, tmp_path / "l.safetensors"))))



def test_a_vae_named_after_a_single_file_model_beside_it_draws_as_a1111s_automatic(tiny_model, tmp_path):
    """A1111's SD VAE "Automatic" (its default) draws a checkpoint NAME.safetensors with NAME.vae.safetensors
    (.vae.pt, .vae.ckpt) when one lies beside it; "None" with the model's own."""
    import json
    import shutil

    from personae.jobs.generate import png_not_applied
    from personae.models.original_layout import CONFIG_METADATA_KEY, vae_to_original
    from personae.models.tiny import build_tiny_pipeline

    model = tmp_path / "m.safetensors"
    shutil.copyfile(tiny_model[1], model)
    vae = build_tiny_pipeline(seed=1).vae  # other weights than the model's own
    near = tmp_path / "m.vae.safetensors"
    save_file({k: v.contiguous() for k, v in vae_to_original(vae.state_dict(), dict(vae.config)).items()}, str(near),
              metadata={CONFIG_METADATA_KEY: json.dumps({"vae": dict(vae.config)})})
    said = []
    automatic = txt2img(settings(model, steps=2), on_event=said.append)[0]
    asked = txt2img(settings(tiny_model[1], steps=2, vae=str(near)))[0]
    own = txt2img(settings(model, steps=2, vae="None"))[0]
    assert np.array_equal(pixels(automatic), pixels(asked)) and np.abs(pixels(own) - pixels(asked)).mean() > 1
    assert "VAE: m.vae.safetensors" in automatic.parameters and "VAE" not in parse_parameters(own.parameters)[2]
    assert any("beside the model (A1111's Automatic" in getattr(e, "text", "") for e in said)
    assert own.settings.vae == "None"  # A1111's word, not a file: it draws the same again
    png = _a1111_png(tmp_path / "auto.png", automatic.parameters)
    assert not [note for note in png_not_applied(png, settings(model, steps=2)) if "VAE" in note]  # the one beside
    near.rename(tmp_path / "m.vae.pt")  # a pickle: A1111 loads it; personae only when allowed
    said.clear()
    unpickled = txt2img(settings(model, steps=2), on_event=said.append)[0]
    assert np.array_equal(pixels(unpickled), pixels(own))
    assert any("it is a pickle" in getattr(e, "text", "") for e in said)
    (tmp_path / "m.vae.pt").unlink()
    (tmp_path / "m.vae.safetensors").write_text("not a VAE")  # named as one: the run says which file, and why
    with pytest.raises(UserError, match="m.vae.safetensors lies beside the model, so A1111's Automatic SD VAE"):
        txt2img(settings(model, steps=1))


K = "KDiffusionScheduler"  # k-diffusion's algorithm, on A1111's schedule (tests/test_ksampler.py)


@pytest.mark.parametrize("name,a1111,cls,config", [
    ("DPM++ 3M SDE", "DPM++ 3M SDE", K, {"sampler": "DPM++ 3M SDE", "schedule": "Uniform"}),
    ("DPM++ 3M SDE Karras", "DPM++ 3M SDE Karras", K, {"sampler": "DPM++ 3M SDE", "schedule": "Karras"}),
    ("dpm++ 3m sde exponential", "DPM++ 3M SDE Exponential", K, {"schedule": "Exponential"}),
    ("DPM++ 2M SDE Exponential", "DPM++ 2M SDE Exponential", K, {"sampler": "DPM++ 2M SDE"}),
    ("Euler Karras", "Euler Karras", K, {"sampler": "Euler", "schedule": "Karras"}),
    ("UniPC Beta", "UniPC Beta", "UniPCMultistepScheduler", {"use_beta_sigmas": True}),
    ("LCM", "LCM", "LCMScheduler", {}),
    # ComfyUI: sampler name + scheduler, in the ways people write them
    ("dpmpp_2m karras", "DPM++ 2M Karras", K, {"sampler": "DPM++ 2M", "schedule": "Karras"}),
    ("dpmpp_2m + karras", "DPM++ 2M Karras", K, {"schedule": "Karras"}),
    ("dpmpp_2m_sde_karras", "DPM++ 2M SDE Karras", K, {"sampler": "DPM++ 2M SDE", "schedule": "Karras"}),
    ("dpmpp_3m_sde exponential", "DPM++ 3M SDE Exponential", K, {"schedule": "Exponential"}),
    ("euler_ancestral", "Euler a", K, {"sampler": "Euler a", "schedule": "Uniform"}),
    ("euler normal", "Euler", K, {"schedule": "Uniform"}),
    ("dpmpp_2m simple", "DPM++ 2M Simple", K, {"schedule": "Simple"}),
    ("uni_pc sgm_uniform", "UniPC SGM Uniform", "UniPCMultistepScheduler", {"timestep_spacing": "trailing"}),
    ("lcm", "LCM", "LCMScheduler", {}),
])
def test_newer_samplers_schedule_types_and_comfyui_names_build_the_right_scheduler(tiny_session, name, a1111, cls,
                                                                                    config):
    sampler = get_sampler(name)
    scheduler = sampler.make(tiny_session.base_scheduler)
    assert sampler.name == a1111 and type(scheduler).__name__ == cls
    assert {k: scheduler.config[k] for k in config} == config
    scheduler.set_timesteps(6)  # a schedule diffusers can actually build from the model's betas
    assert len(scheduler.timesteps) >= 6


def test_samplers_without_a_schedule_type_are_refused_and_names_are_written_the_a1111_way(tiny_model, tiny_session):
    with pytest.raises(UserError, match='"DDIM" runs as diffusers\' DDIMScheduler, which has no Karras schedule'):
        get_sampler("DDIM Karras")
    with pytest.raises(UserError, match="ComfyUI's names") as err:
        get_sampler("dpmpp_2m kl_optimal")  # ComfyUI's KL Optimal ends at 0, A1111's does not
    assert "sgm_uniform" in str(err.value)
    out = txt2img(settings(tiny_model[0], steps=2, sampler="dpmpp_2m karras"), tiny_session)[0]
    assert "Sampler: DPM++ 2M Karras," in out.parameters and out.settings.sampler == "DPM++ 2M Karras"
