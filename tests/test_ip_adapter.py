"""IP-Adapter units (`--ip-adapter`): h94/IP-Adapter's files read as diffusers' own loader reads them (the same
pictures, for the plain, plus and full-face kinds), the session left as it was, the guidance window counted as A1111's
ControlNet extension counts a unit's, A1111's infotext written and read, and every file that is not an SD 1.x
IP-Adapter refused in one paragraph."""

import hashlib
import os

import numpy as np
import pytest
import torch
from cli_runs import a1111_png, drawn_again, generate, made
from PIL import Image
from safetensors.torch import load_file, save_file

from personae.config.generate import GenerateSettings
from personae.errors import UserError
from personae.inference.txt2img import txt2img
from personae.models.ip_adapter import (
    TINY_FILES,
    check_fits,
    load_image_encoder,
    read_ip_adapter,
    write_tiny_ip_adapter,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ipa(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("ip-adapter")
    write_tiny_ip_adapter(root / "ipa", base=tiny_model[0])
    Image.fromarray((np.random.default_rng(0).random((48, 40, 3)) * 255).astype("uint8")).save(root / "face.png")
    return root


def unit(ipa, kind="plain", **fields) -> dict:
    return {"image": str(ipa / "face.png"), "model": str(ipa / "ipa" / TINY_FILES[kind]),
            "image_encoder": str(ipa / "ipa" / "image_encoder"), **fields}


def drawn(tiny_model, session, *units, **fields) -> np.ndarray:
    settings = GenerateSettings(**{"model": str(tiny_model[0]), "prompt": "a cat", "steps": 3, "seed": 5,
                                   "sampler": "DDIM", "cfg": 7, "rng": "CPU", "ip_adapters": list(units), **fields})
    return np.stack([np.asarray(image.image).astype(float) for image in txt2img(settings, session)])


@pytest.mark.parametrize("kind", list(TINY_FILES))
def test_each_kind_draws_the_picture_diffusers_own_loader_draws(kind, tiny_model, tiny_session, ipa):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    base = drawn(tiny_model, tiny_session)
    mine = drawn(tiny_model, tiny_session, unit(ipa, kind))
    reference = StableDiffusionPipeline.from_pretrained(str(tiny_model[0]), safety_checker=None,
                                                        requires_safety_checker=False)
    reference.scheduler = DDIMScheduler.from_config(reference.scheduler.config)
    reference.load_ip_adapter(str(ipa / "ipa"), subfolder="", weight_name=TINY_FILES[kind],
                              image_encoder_folder="image_encoder")
    reference.set_progress_bar_config(disable=True)
    theirs = reference("a cat", num_inference_steps=3, guidance_scale=7, height=64, width=64,
                       generator=torch.Generator().manual_seed(5), ip_adapter_image=Image.open(ipa / "face.png"))
    assert np.abs(mine[0] - np.asarray(theirs.images[0]).astype(float)).max() == 0
    assert np.abs(mine - base).mean() > 5  # the picture acts
    assert np.array_equal(drawn(tiny_model, tiny_session), base)  # and the session draws as before


def test_the_weight_scales_the_picture_and_zero_is_no_adapter(tiny_model, tiny_session, ipa):
    base = drawn(tiny_model, tiny_session)
    changes = [np.abs(drawn(tiny_model, tiny_session, unit(ipa, weight=w)) - base).mean() for w in (0, 0.3, 1)]
    assert changes[0] == 0 and 0 < changes[1] < changes[2]


def _scales_per_call(session, run) -> list[float]:
    """The first IP-Adapter layer's weight at each UNet call of `run()`."""
    seen = []

    def hook(module, args, output):
        layers = [p for p in module.attn_processors.values() if isinstance(getattr(p, "scale", None), list)]
        seen.append(layers[0].scale[0])

    handle = session.pipe.unet.register_forward_hook(hook)
    try:
        run()
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("sampler", ["DDIM", "Euler"])
def test_the_guidance_window_counts_steps_as_the_controlnet_extension(sampler, tiny_model, tiny_session, ipa):
    """A1111's unit window: step i is seen at sampling percent (i - 1) / steps (step 0 at 0), inclusive at both
    ends; with 10 steps, start 0.2 and end 0.5 take steps 3 to 6."""
    scales = _scales_per_call(tiny_session, lambda: drawn(tiny_model, tiny_session, unit(
        ipa, weight=0.8, guidance_start=0.2, guidance_end=0.5), steps=10, sampler=sampler))
    assert scales == [0, 0, 0, 0.8, 0.8, 0.8, 0.8, 0, 0, 0]
    whole = _scales_per_call(tiny_session, lambda: drawn(tiny_model, tiny_session, unit(ipa, weight=0.8), steps=10,
                                                          sampler=sampler))
    assert whole == [0.8] * 10


def test_and_batches_cfg_one_hires_and_controlnet_units_take_the_picture(tiny_model, tiny_session, ipa, tmp_path):
    """The embeddings reach every UNet call at the rows it has: AND's parts, a batch without guidance, both hires
    passes, a ControlNet pipeline; each run differs from the same run at weight 0 (the picture acts there)."""
    from personae.models.controlnet import write_tiny_controlnet

    net = write_tiny_controlnet(tmp_path / "net", base=tiny_model[0])
    runs = {"AND, batch 2": {"prompt": "a cat AND a dog :0.5", "batch_size": 2},
            "CFG 1": {"cfg": 1, "batch_size": 2},
            "hires": {"hires_scale": 1.5, "hires_steps": 2, "hires_upscaler": "latent", "hires_denoise": 0.6},
            "ControlNet": {"controls": [{"type": "raw", "image": str(ipa / "face.png"), "model": str(net)}]},
            "two units": {}}
    for name, fields in runs.items():
        second = [unit(ipa, "plus", weight=0.7)] if name == "two units" else []
        on = drawn(tiny_model, tiny_session, unit(ipa), *second, **fields)
        off = drawn(tiny_model, tiny_session, unit(ipa, weight=0), *[{**u, "weight": 0} for u in second], **fields)
        assert on.shape == off.shape and np.abs(on - off).mean() > 2, name


def _hash(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:8]


def test_a1111_infotext_is_written_and_a_pngs_units_are_read(tiny_model, ipa, tmp_path):
    model, encoder = ipa / "ipa" / TINY_FILES["plus"], ipa / "ipa" / "image_encoder"
    r = generate("--model", tiny_model[0], "--prompt", "a cat", "--steps", 3, "--seed", 2, "--ip-adapter",
                 f"{ipa / 'face.png'}:0.7", "--ip-adapter-model", model, "--image-encoder", encoder,
                 "--ip-adapter-end", 0.6, "--out", tmp_path / "own", "--quiet")
    assert r.returncode == 0, r.stderr
    png = made(tmp_path / "own")
    text = Image.open(png).text["parameters"]
    assert (f'ControlNet 0: "Module: ip-adapter_clip_sd15, Model: ip-adapter-plus_sd15 [{_hash(model)}], Weight: 0.7, '
            "Resize Mode: Crop and Resize, Low Vram: False, Processor Res: 512, Guidance Start: 0, Guidance End: 0.6, "
            'Pixel Perfect: False, Control Mode: Balanced, Hr Option: Both"') in text
    drawn_again(png, tmp_path / "again")  # personae's own PNG: its units read whole
    # an A1111 PNG: the IP-Adapter unit takes the picture typed, its weight and window kept; a FaceID unit is said
    stand_in = a1111_png(tmp_path / "a1111.png", (
        'a cat\nSteps: 3, Sampler: DDIM, CFG scale: 7, Seed: 2, Size: 64x64, ControlNet 0: "Module: '
        "ip-adapter_clip_sd15, Model: ip-adapter-plus_sd15 [0a36c98f], Weight: 0.6, Resize Mode: Crop and Resize, "
        "Processor Res: 512, Threshold A: 0.5, Threshold B: 0.5, Guidance Start: 0.1, Guidance End: 0.8, Pixel "
        'Perfect: False, Control Mode: Balanced", ControlNet 1: "Module: ip-adapter_face_id_plus, Model: '
        'ip-adapter-faceid-plusv2_sd15 [6e14fc1a], Weight: 1, Guidance Start: 0, Guidance End: 1", Version: v1.9.4'))
    r = generate("--from-png", stand_in, "--model", tiny_model[0], "--ip-adapter", ipa / "face.png",
                 "--ip-adapter-model", model, "--image-encoder", encoder, "--out", tmp_path / "a1111")
    assert r.returncode == 0, r.stderr
    text = Image.open(made(tmp_path / "a1111")).text["parameters"]
    assert "Weight: 0.6," in text and "Guidance Start: 0.1, Guidance End: 0.8," in text
    said = " ".join(r.stderr.split())
    assert "ControlNet 1 (Module ip-adapter_face_id_plus" in said and "insightface" in said
    # a FaceID unit first takes no picture: the picture typed goes to the first unit personae runs
    from personae.jobs.png_controls import ip_units_not_applied, png_ip_units, with_png_ip_units

    units = list(reversed(png_ip_units(stand_in)))
    assert [u["_index"] for u in units] == [1, 0]
    [merged] = with_png_ip_units(units, [{"image": "face.png"}])
    assert merged == {"image": "face.png", "model": "h94/IP-Adapter/models/ip-adapter-plus_sd15.safetensors",
                      "weight": 0.6, "guidance_start": 0.1, "guidance_end": 0.8}
    assert len(ip_units_not_applied(units, [merged])) == 1  # the FaceID unit only
    r = generate("--from-png", stand_in, "--model", tiny_model[0], "--out", tmp_path / "nothing")
    assert "ControlNet 0 (Module ip-adapter_clip_sd15, Model ip-adapter-plus_sd15 [0a36c98f]) (no picture: pass it " \
           "with --ip-adapter IMAGE" in " ".join(r.stderr.split())
    # the adapter the PNG names by name is h94's file, which a PNG never makes us download
    r = generate("--from-png", stand_in, "--model", tiny_model[0], "--ip-adapter", ipa / "face.png", "--out",
                 tmp_path / "refused")
    assert r.returncode == 2 and "h94/IP-Adapter/models/ip-adapter-plus_sd15.safetensors" in r.stderr
    assert "does not download" in " ".join(r.stderr.split()) and not (tmp_path / "refused").exists()


def test_pickled_adapters_and_a_lone_encoder_file_are_read_alike(tiny_model, tiny_session, ipa, tmp_path):
    """h94's .bin files (the two dicts, pickled) only with --allow-pickle, then through the weights-only unpickler;
    the encoder's model.safetensors alone (ComfyUI's clip_vision) with its config read off its shapes."""
    flat = load_file(ipa / "ipa" / TINY_FILES["plain"])
    nested = {part: {k.partition(".")[2]: v for k, v in flat.items() if k.startswith(part + ".")}
              for part in ("image_proj", "ip_adapter")}
    torch.save(nested, tmp_path / "ip-adapter_sd15.bin")
    with pytest.raises(UserError, match="pickle"):
        drawn(tiny_model, tiny_session, unit(ipa, model=str(tmp_path / "ip-adapter_sd15.bin")))
    base = drawn(tiny_model, tiny_session, unit(ipa))
    pickled = drawn(tiny_model, tiny_session, unit(ipa, model=str(tmp_path / "ip-adapter_sd15.bin")),
                    allow_pickle=True)
    lone = drawn(tiny_model, tiny_session, unit(ipa, image_encoder=str(ipa / "ipa" / "image_encoder" /
                                                                       "model.safetensors")))
    assert np.array_equal(pickled, base) and np.array_equal(lone, base)


def _file(path, tensors: dict):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return str(path)


def test_files_that_are_not_sd1_ip_adapters_are_refused_by_what_they_are(tiny_session, ipa, tmp_path):
    unet = tiny_session.pipe.unet
    good = load_file(ipa / "ipa" / TINY_FILES["plain"])
    layers = {k: v for k, v in good.items() if k.startswith("ip_adapter.")}
    faceid = {"image_proj.proj.0.weight": torch.zeros(64, 32), "image_proj.proj.2.weight": torch.zeros(128, 64),
              "image_proj.norm.weight": torch.zeros(32), **layers}
    cases = {
        "FaceID": (faceid, "FaceID: it reads a face embedding from insightface"),
        "stray": ({**good, "lora.weight": torch.zeros(2)}, "keys it cannot place (lora.weight)"),
        "extra layer": ({**good, "ip_adapter.99.to_k_ip.weight": torch.zeros(2, 2)}, "has no place for"),
        "missing layer": ({k: v for k, v in good.items() if not k.startswith("ip_adapter.1.")}, "no weights for 2"),
        "wider": ({**good, **{k: torch.zeros(v.shape[0], 48) for k, v in layers.items()}}, "48 wide"),
        "unknown projection": ({"image_proj.what.weight": torch.zeros(2), **layers}, "of no IP-Adapter kind"),
    }
    for name, (tensors, message) in cases.items():
        with pytest.raises(UserError) as err:
            check_fits(read_ip_adapter(_file(tmp_path / f"{name}.safetensors", tensors)), unet)
        assert message in str(err.value), name
    with pytest.raises(UserError, match="is a folder; an IP-Adapter is one file"):
        read_ip_adapter(str(ipa / "ipa"))
    open_clip = _file(tmp_path / "open_clip.safetensors", {"visual.proj": torch.zeros(4, 4)})
    with pytest.raises(UserError, match=r"its layout is open_clip's \(visual\.\*\)"):
        load_image_encoder(open_clip)


def test_bad_input_is_one_paragraph_before_the_model_loads(tiny_model, ipa, tmp_path):
    args = ["--model", tiny_model[0], "--prompt", "x", "--steps", 2, "--out", tmp_path / "out"]
    cases = [(["--ip-adapter", tmp_path / "none.png"], "IP-Adapter picture"),
             (["--ip-adapter", ipa / "face.png", "--ip-adapter-model", tmp_path / "none.safetensors"],
              "was not found"),
             (["--ip-adapter-model", ipa / "ipa" / TINY_FILES["plain"]], "no --ip-adapter is given"),
             (["--ip-adapter", f"{ipa / 'face.png'}:3"], "less than or equal to 2"),
             (["--ip-adapter", ipa / "face.png", "--ip-adapter-start", 0.5, "--ip-adapter-end", 0.5], "must be below")]
    for extra, message in cases:
        r = generate(*args, *extra)
        assert r.returncode == 2 and message in " ".join(r.stderr.split()) and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_hub_files_offline_fail_fast_naming_them(tiny_model, ipa, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "personae", "generate", "--model", str(tiny_model[0]), "--prompt", "x",
                        "--ip-adapter", str(ipa / "face.png"), "--out", str(tmp_path / "out")], capture_output=True,
                       text=True, env=env)
    said = " ".join(r.stderr.split())
    assert r.returncode == 2 and 'Cannot load IP-Adapter "h94/IP-Adapter"' in said and "HF_HUB_OFFLINE" in said
    r = subprocess.run([sys.executable, "-m", "personae", "generate", "--model", str(tiny_model[0]), "--prompt", "x",
                        "--ip-adapter", str(ipa / "face.png"), "--ip-adapter-model",
                        str(ipa / "ipa" / TINY_FILES["plain"]), "--out", str(tmp_path / "out")], capture_output=True,
                       text=True, env=env)
    said = " ".join(r.stderr.split())
    assert r.returncode == 2 and 'Cannot load image encoder "h94/IP-Adapter"' in said and "Traceback" not in said
