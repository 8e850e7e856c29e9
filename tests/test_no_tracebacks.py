"""Careless and hostile input gets one paragraph and exit 2, never a traceback; wrong results are refused (issue 14).

Each test here showed a raw traceback, a hang or a wrong result before issue 14. Commands
run in-process through `personae.cli.main.main` (what `python -m personae` calls), so the
exit code and stderr are exactly what a user sees; one test runs a real subprocess.
"""

from __future__ import annotations

import errno
import json
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from safetensors.torch import save_file

from personae.cli.main import main
from personae.errors import UserError


def cli(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def refused(code: int, err: str, *expected: str) -> str:
    """exit 2, no traceback, and the error (after any progress lines) is one paragraph; returns it on one line."""
    assert code == 2, f"exit {code}: {err}"
    assert "Traceback" not in err and "error:" in err, err
    message = err[err.index("error:"):]
    assert "\n\n" not in message.strip(), err
    flat = " ".join(message.split())
    for text in expected:
        assert text in flat, flat
    return flat



# -- damaged safetensors, in every entry point ---------------------------------------------------------------------


def _damaged_files(folder):
    good = folder / "good.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2), "model.diffusion_model.x": torch.zeros(3)}, str(good))
    data = good.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = data[8:8 + length]
    empty_header = b'{"__metadata__":{"a":"b"}}'
    files = {
        "truncated": data[:-5],
        "header past the end": struct.pack("<Q", len(data)) + data[8:],
        "header not JSON": struct.pack("<Q", length) + b"{" + b"\xff" * (length - 1) + data[8 + length:],
        "empty": b"",
        "header length 2^60": struct.pack("<Q", 2**60) + data[8:],
        "no tensors": struct.pack("<Q", len(empty_header)) + empty_header,
        "one byte short of a header": struct.pack("<Q", len(header) + 1) + header,
    }
    out = {}
    for name, content in files.items():
        path = folder / (name.replace(" ", "_").replace("^", "") + ".safetensors")
        path.write_bytes(content)
        out[name] = path
    pickled = folder / "pickle_renamed.safetensors"
    torch.save({"x": torch.zeros(1)}, pickled)
    out["a pickle renamed .safetensors"] = pickled
    return out


def test_damaged_safetensors_are_one_paragraph_in_every_entry_point(tiny_model, photo, tmp_path, capsys):
    tiny = str(tiny_model[0])
    damaged = _damaged_files(tmp_path)
    gen = ["generate", "--model", tiny, "--prompt", "x", "--steps", 1, "--quiet", "--out", tmp_path / "out"]
    anim = ["animate", "--model", tiny, "--prompt", "x", "--steps", 1, "--quiet", "--out", tmp_path / "a.gif"]
    for damage, path in damaged.items():
        compare = yaml.safe_dump({"base_model": tiny, "variants": [{"label": "v", "lora": str(path)}]})
        (tmp_path / "suite.yaml").write_text(compare)
        board = yaml.safe_dump({"model": tiny, "style_lora": {"path": str(path)},
                                "scenes": [{"number": 1, "description": "x"}]})
        (tmp_path / "board.yaml").write_text(board)
        entry_points = {
            "--model": ["generate", "--model", path, "--prompt", "x", "--out", tmp_path / "out"],
            "--lora": gen + ["--lora", path],
            "--embedding": gen + ["--embedding", path],
            "--hires-upscaler": gen + ["--hires-scale", 1.5, "--hires-denoise", 1, "--hires-upscaler", path],
            "--controlnet": gen + ["--control", f"raw:{photo}", "--controlnet", f"raw={path}"],
            "--motion-adapter": anim + ["--motion-adapter", path],
            "convert": ["convert", path, "--to", "kohya", "--out", tmp_path / "k.safetensors"],
            "compare lora:": ["compare", tmp_path / "suite.yaml", "--out", tmp_path / "cmp"],
            "storyboard style_lora:": ["storyboard", tmp_path / "board.yaml", "--out", tmp_path / "sb"],
        }
        for where, argv in entry_points.items():
            code, err = cli(capsys, *argv)
            flat = refused(code, err)
            assert path.name in flat, f"{where} {damage}: {flat}"
    assert not (tmp_path / "out").exists() and not (tmp_path / "k.safetensors").exists()


def test_damage_is_named_for_what_it_is(tmp_path):
    from personae.models.model_files import check_model_file

    damaged = _damaged_files(tmp_path)
    expected = {"truncated": "incomplete metadata", "header past the end": "header claims",
                "header length 2^60": "header claims", "no tensors": "holds no tensors", "empty": "empty",
                "a pickle renamed .safetensors": "holds a pickle", "header not JSON": "invalid UTF-8 in header"}
    for damage, text in expected.items():
        with pytest.raises(UserError, match=text):
            check_model_file(damaged[damage])


# -- images ---------------------------------------------------------------------------------------------------------


def test_a_decompression_bomb_is_skipped_by_prepare_and_refused_as_init_image(tiny_model, tmp_path, capsys):
    src = tmp_path / "photos"
    src.mkdir()
    Image.fromarray((np.random.default_rng(1).random((80, 80, 3)) * 255).astype(np.uint8)).save(src / "fine.png")
    Image.new("1", (20000, 20000)).save(src / "bomb.png")  # 400 Mpx in 50 KB
    assert (src / "bomb.png").stat().st_size < 100_000
    code, err = cli(capsys, "prepare", src, tmp_path / "prepared", "--quiet")
    assert code == 0, err
    manifest = (tmp_path / "prepared" / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["source"] for line in manifest] == ["fine.png"]
    assert "`bomb.png` | too large to decode safely" in (tmp_path / "prepared" / "report.md").read_text()
    code, err = cli(capsys, "generate", "--model", tiny_model[0], "--prompt", "x", "--init-image", src / "bomb.png",
                    "--out", tmp_path / "out")
    refused(code, err, "too large to decode safely")


def test_img2img_with_no_denoising_step_left_is_refused(tiny_model, photo, tmp_path, capsys):
    # diffusers' DDIM runs int(steps x strength) steps (A1111's k-diffusion samplers one more: never none)
    code, err = cli(capsys, "generate", "--model", tiny_model[0], "--prompt", "x", "--init-image", photo,
                    "--steps", 2, "--strength", 0.2, "--sampler", "DDIM", "--out", tmp_path / "out")
    refused(code, err, "--strength 0.2 with --steps 2 leaves no denoising step", "at least 5", "at least 0.5")
    code, err = cli(capsys, "generate", "--model", tiny_model[0], "--prompt", "x", "--init-image", photo, "--mask",
                    photo, "--steps", 3, "--strength", 0.3, "--sampler", "DDIM", "--out", tmp_path / "out")
    refused(code, err, "at least 0.34")
    assert not (tmp_path / "out").exists()


# -- PNG metadata (--from-png) --------------------------------------------------------------------------------------


def _png(path, chunks: dict[str, str] | None = None, compressed: bool = False):
    info = PngInfo()
    for key, value in (chunks or {}).items():
        info.add_text(key, value, zip=compressed)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def _raw_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@pytest.mark.parametrize("case", ["json not json", "json list", "json bad value", "steps not a number",
                                  "size not numbers", "bad escape in quotes", "not a png", "truncated png",
                                  "itxt not utf-8", "ztxt damaged"])
def test_malformed_from_png_metadata_is_one_paragraph(tiny_model, tmp_path, capsys, case):
    path = tmp_path / "x.png"
    base = "a cat\nSteps: 4, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64"
    if case == "json not json":
        _png(path, {"personae": "{not json"})
    elif case == "json list":
        _png(path, {"personae": "[1, 2]"})
    elif case == "json bad value":
        _png(path, {"personae": json.dumps({"model": str(tiny_model[0]), "prompt": "x", "steps": "many"})})
    elif case == "steps not a number":
        _png(path, {"parameters": base.replace("Steps: 4", "Steps: four")})
    elif case == "size not numbers":
        _png(path, {"parameters": base.replace("64x64", "axb")})
    elif case == "bad escape in quotes":  # parsed (the value kept as written); the sampler name is then unknown
        _png(path, {"parameters": base.replace("Sampler: Euler", 'Sampler: "\\q"')})
    elif case == "not a png":
        Image.new("RGB", (8, 8)).save(path, format="JPEG")
    elif case == "truncated png":
        _png(path, {"parameters": base})
        path.write_bytes(path.read_bytes()[:20])
    else:
        data = Image.new("RGB", (8, 8))
        data.save(path)
        raw = path.read_bytes()
        chunk = (_raw_chunk(b"iTXt", b"parameters\0\0\0\0\0\xff\xfe") if case == "itxt not utf-8"
                 else _raw_chunk(b"zTXt", b"parameters\0\0not zlib data"))
        path.write_bytes(raw[:33] + chunk + raw[33:])
    code, err = cli(capsys, "generate", "--from-png", path, "--model", tiny_model[0], "--out", tmp_path / "out")
    if case == "truncated png":  # nothing after the header: no settings in it
        refused(code, err, "carries no generation settings")
    else:
        refused(code, err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("compressed", [False, True], ids=["tEXt", "zTXt"])
def test_a_10_mb_metadata_chunk_is_refused_at_once(tiny_model, tmp_path, capsys, compressed):
    text = "a" * 10_000_000 + "\nSteps: 4, Sampler: Euler, CFG scale: 7"
    path = _png(tmp_path / "big.png", {"parameters": text}, compressed=compressed)
    start = time.monotonic()
    code, err = cli(capsys, "generate", "--from-png", path, "--model", tiny_model[0], "--out", tmp_path / "out")
    assert time.monotonic() - start < 10
    refused(code, err, "far more than any settings")


def test_infotext_parsing_is_linear_in_the_length():
    """What hung for minutes: the key pattern retried from every character of a long line. PNG text is capped at
    1 MB when read, so 1 MB of each worst shape (10 MB of the one that hung) must parse in seconds."""
    from personae.media.png import MAX_TEXT, parse_parameters

    for line in ["a" * 10_000_000, "a b-c/d " * (MAX_TEXT // 8), 'Steps: "x, ' * (MAX_TEXT // 11),
                 ",a" * (MAX_TEXT // 2), "\t," * (MAX_TEXT // 2), "a:b," * (MAX_TEXT // 4)]:
        start = time.monotonic()
        parse_parameters("prompt\n" + line)
        assert time.monotonic() - start < 10, line[:20]


def test_png_settings_do_not_start_downloads_and_are_announced(tiny_model, tmp_path, capsys):
    settings = {"model": "some-owner/some-model", "prompt": "x", "steps": 1, "seed": 1, "width": 64, "height": 64}
    path = _png(tmp_path / "hub.png", {"personae": json.dumps(settings)})
    code, err = cli(capsys, "generate", "--from-png", path, "--out", tmp_path / "out")
    refused(code, err, '"some-owner/some-model", a hub repository that is not downloaded',
            "--model some-owner/some-model")
    settings["model"] = str(tiny_model[0])
    path = _png(tmp_path / "local.png", {"personae": json.dumps(settings)})
    code, err = cli(capsys, "generate", "--from-png", path, "--out", tmp_path / "out")
    assert code == 0, err
    assert f"from {path}: model: {tiny_model[0]}" in err


def test_an_a1111_png_naming_a_model_upscaler_uses_it_from_upscaler_dir_else_says_so(tiny_model, tmp_path, capsys):
    from personae.models.upscalers import CompactNet

    folder = tmp_path / "webui" / "models" / "ESRGAN"
    folder.mkdir(parents=True)
    save_file(CompactNet(3, 3, 4, 1, 4).state_dict(), str(folder / "4x-UltraSharp.safetensors"))
    path = _png(tmp_path / "a1111.png", {"parameters": "a cat\nSteps: 2, Sampler: Euler a, Seed: 3, Size: 64x64, "
                                                       "Denoising strength: 0.5, Hires upscale: 1.5, Hires upscaler: "
                                                       "4x-UltraSharp"})
    base = ["generate", "--from-png", path, "--model", tiny_model[0]]
    code, err = cli(capsys, *base, "--out", tmp_path / "lanczos")
    assert code == 0, err
    flat = " ".join(err.split())
    assert 'Hires upscaler "4x-UltraSharp" (upscaled as image here; --upscaler-dir with the folder' in flat, flat
    code, err = cli(capsys, *base, "--upscaler-dir", tmp_path / "webui", "--out", tmp_path / "model")
    assert code == 0, err
    assert f"hires upscaler: {(folder / '4x-UltraSharp.safetensors').resolve()}" in err and "Hires upscaler" not in err
    made = json.loads(Image.open(next((tmp_path / "model").glob("*.png"))).text["personae"])
    assert made["hires_upscaler"] == str((folder / "4x-UltraSharp.safetensors").resolve())
    code, err = cli(capsys, "generate", "--model", tiny_model[0], "--prompt", "x", "--hires-scale", 1.5,
                    "--hires-upscaler", "4x-UltraSharp", "--out", tmp_path / "typed")
    refused(code, err, '--hires-upscaler "4x-UltraSharp" is not latent, image or a file')
    assert not (tmp_path / "typed").exists()


# -- files users write ----------------------------------------------------------------------------------------------


def test_non_utf8_yaml_and_csv_are_one_paragraph(tiny_model, tmp_path, capsys):
    (tmp_path / "bad.yaml").write_bytes(b"model: x\nprompt: \xff\xfe caf\xe9\n")
    for command in ("train", "compare", "storyboard"):
        code, err = cli(capsys, command, tmp_path / "bad.yaml")
        refused(code, err, "is not UTF-8 text (byte 0xff")
    (tmp_path / "bad.csv").write_bytes(b"number,description\n1,caf\xe9\n")
    code, err = cli(capsys, "storyboard", tmp_path / "bad.csv", "--model", tiny_model[0])
    refused(code, err, "is not UTF-8 text (byte 0xe9")


@pytest.mark.parametrize("template,expected", [("{nope}", 'unknown placeholder "{nope}"'),
                                               ("{captoin}", 'did you mean "{caption}"'),
                                               ("{0}", 'unknown placeholder "{0}"'), ("{}", 'unknown placeholder'),
                                               ("{caption", "expected '}'"), ("caption}", "Single '}'"),
                                               ("{caption.__class__}", "unknown placeholder"),
                                               ("{caption:>999999999}", "plain placeholder"),
                                               ("{caption!r}", "plain placeholder")])
def test_bad_template_fields_are_refused(photo, tmp_path, capsys, template, expected):
    code, err = cli(capsys, "prepare", photo.parent, tmp_path / "out", "--template", template, "--quiet")
    refused(code, err, expected)
    from personae.config.base import parse_settings
    from personae.config.storyboard import StoryboardSettings

    with pytest.raises(UserError, match="template"):
        parse_settings(StoryboardSettings, {"model": "x", "template": template.replace("caption", "description"),
                                            "scenes": [{"number": 1, "description": "x"}]})


def test_a_non_numeric_scene_number_is_one_paragraph(tiny_model, tmp_path, capsys):
    for number in ("abc", "²", "1.5", "9" * 5000):
        (tmp_path / "scenes.csv").write_text(f"number,description\n{number},a cat\n", encoding="utf-8")
        code, err = cli(capsys, "storyboard", tmp_path / "scenes.csv", "--model", tiny_model[0])
        refused(code, err, "is not a whole number")


def test_a_font_that_is_not_a_font_is_one_paragraph(tiny_model, tmp_path, capsys):
    (tmp_path / "scenes.csv").write_text("number,description\n1,a cat\n", encoding="utf-8")
    for name, content in [("empty.ttf", b""), ("text.ttf", b"not a font at all"),
                          ("png.otf", b"\x89PNG\r\n\x1a\n" + b"\0" * 200), ("fake.ttc", b"ttcf" + b"\xff" * 64)]:
        (tmp_path / name).write_bytes(content)
        code, err = cli(capsys, "storyboard", tmp_path / "scenes.csv", "--model", tiny_model[0], "--font",
                        tmp_path / name, "--out", tmp_path / "sb")
        refused(code, err, "could not be read as a TrueType / OpenType font")


def test_a_ckpt_of_another_architecture_is_named(tmp_path, capsys):
    torch.save({"state_dict": {"conditioner.embedders.0.x": torch.zeros(1), "model.diffusion_model.x": torch.zeros(1)}},
               tmp_path / "sdxl.ckpt")
    torch.save({"cond_stage_model.model.x": torch.zeros(1), "model.diffusion_model.x": torch.zeros(1)},
               tmp_path / "sd2.ckpt")
    torch.save({"lora_unet_x.alpha": torch.zeros(1)}, tmp_path / "lora.pt")
    torch.save({"model.diffusion_model.x": torch.zeros(1)}, tmp_path / "partial.ckpt")
    for name, expected in [("sdxl.ckpt", "is an SDXL checkpoint"), ("sd2.ckpt", "is a Stable Diffusion 2.x checkpoint"),
                           ("lora.pt", "pass it with --lora"), ("partial.ckpt", "could not be loaded as a Stable")]:
        code, err = cli(capsys, "generate", "--model", tmp_path / name, "--prompt", "x", "--allow-pickle",
                        "--out", tmp_path / "out")
        refused(code, err, expected)


def test_generate_out_onto_a_file_or_under_one_is_refused_and_the_file_kept(tiny_model, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    for out in (tmp_path / "notes.txt", tmp_path / "notes.txt" / "sub"):
        code, err = cli(capsys, "generate", "--model", tiny_model[0], "--prompt", "x", "--steps", 1, "--out", out)
        refused(code, err, "is a file")
    assert (tmp_path / "notes.txt").read_text() == "mine"
    code, err = cli(capsys, "generate", "--model", tiny_model[0], "--prompt", "x", "--steps", 1, "--quiet",
                    "--out", tmp_path / "new" / "deeper")  # a missing parent is made, like mkdir -p
    assert code == 0 and len(list((tmp_path / "new" / "deeper").glob("*.png"))) == 1, err


# -- wrong results --------------------------------------------------------------------------------------------------


def _kohya_lora(tiny, path):
    from personae.models.resolve import load_pipeline, resolve_model

    pipe = load_pipeline(resolve_model(str(tiny)))
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for name, module in pipe.unet.named_modules():
        if name.endswith("attn1.to_q"):
            key = "lora_unet_" + name.replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = torch.randn(2, module.in_features, generator=g)
            tensors[f"{key}.lora_up.weight"] = torch.randn(module.out_features, 2, generator=g)
            tensors[f"{key}.alpha"] = torch.tensor(2.0)
    save_file(tensors, str(path))
    return path


def test_convert_to_diffusers_out_file_is_refused_not_reported_as_written(tiny_model, tmp_path, capsys):
    """It printed "wrote FILE/pytorch_lora_weights.safetensors" and wrote nothing; --to diffusers writes a folder."""
    lora = _kohya_lora(tiny_model[0], tmp_path / "kohya.safetensors")
    code, err = cli(capsys, "convert", lora, "--to", "diffusers", "--out", tmp_path / "me.safetensors")
    refused(code, err, "--to diffusers writes a folder")
    assert not (tmp_path / "me.safetensors").exists()
    (tmp_path / "a_file").write_text("mine")
    code, err = cli(capsys, "convert", lora, "--to", "diffusers", "--out", tmp_path / "a_file")
    refused(code, err, "is a file")
    assert (tmp_path / "a_file").read_text() == "mine"
    code, out = main(["convert", str(lora), "--to", "diffusers", "--out", str(tmp_path / "folder")]), capsys.readouterr()
    written = tmp_path / "folder" / "pytorch_lora_weights.safetensors"
    assert code == 0 and written.is_file() and f"wrote {written}" in out.out


@pytest.mark.parametrize("weight", ["nan", "inf", "-inf"])
def test_a_lora_weight_of_nan_or_inf_is_refused(tiny_model, tmp_path, capsys, weight):
    lora = _kohya_lora(tiny_model[0], tmp_path / "style.safetensors")
    code, err = cli(capsys, "generate", "--model", tiny_model[0], "--prompt", "x", "--lora", f"{lora}:{weight}",
                    "--out", tmp_path / "out")
    refused(code, err, "loras.0.weight", "finite number")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("token", ["", " ", "two words"])
def test_an_empty_or_spaced_token_does_not_train(tiny_model, photo, tmp_path, capsys, token):
    job = {"base_model": str(tiny_model[0]), "method": "textual_inversion", "data": {"path": str(photo.parent)},
           "output": str(tmp_path / "run"), "textual_inversion": {"tokens": [{"token": token}]}, "train": {"steps": 1}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    code, err = cli(capsys, "train", tmp_path / "job.yaml")
    refused(code, err, "one word with no spaces")
    assert not (tmp_path / "run").exists()


def test_a_folder_given_as_lora_says_it_is_a_folder(tiny_model, tmp_path, capsys):
    folder = tmp_path / "my_lora"
    folder.mkdir()
    _kohya_lora(tiny_model[0], folder / "pytorch_lora_weights.safetensors")
    code, err = cli(capsys, "generate", "--model", tiny_model[0], "--prompt", "x", "--lora", folder,
                    "--out", tmp_path / "out")
    flat = refused(code, err, "is a folder, not a file", "pytorch_lora_weights.safetensors")
    assert "does not exist" not in flat


def test_the_wrong_size_embedding_message_is_filled_in(tiny_model, tmp_path, capsys):
    save_file({"emb_params": torch.zeros(2, 48)}, str(tmp_path / "sdxl-ish.safetensors"))
    code, err = cli(capsys, "generate", "--model", tiny_model[0], "--prompt", "x", "--embedding",
                    tmp_path / "sdxl-ish.safetensors", "--out", tmp_path / "out")
    flat = refused(code, err, "48 wide", "32 wide")
    assert "{" not in flat


@pytest.mark.parametrize("sweep,expected", [({"cfg": ["abc"]}, "sweep.cfg values must be numbers"),
                                            ({"cfg": [500]}, "from 0 to 100"),
                                            ({"steps": [1.5]}, "whole numbers"), ({"steps": [0]}, "whole numbers"),
                                            ({"steps": [True]}, "whole numbers"),
                                            ({"weight": [".nan"]}, "sweep.weight values must be numbers"),
                                            ({"weight": [{"a": 1}]}, "must be numbers"),
                                            ({"sampler": [3]}, "sampler names"),
                                            ({"sampler": ["Eulr a"]}, 'Did you mean "Euler a"')])
def test_sweep_values_are_type_checked_before_any_image(tiny_model, tmp_path, capsys, sweep, expected):
    text = yaml.safe_dump({"base_model": str(tiny_model[0]), "steps": 1, "seeds": [0], "sweep": sweep,
                           "metrics": {"clip": None, "dino": None}}).replace("'.nan'", ".nan")
    (tmp_path / "suite.yaml").write_text(text)
    code, err = cli(capsys, "compare", tmp_path / "suite.yaml", "--out", tmp_path / "cmp")
    refused(code, err, expected)
    assert not (tmp_path / "cmp").exists()


def test_an_interrupted_png_write_leaves_no_torn_file(tmp_path):
    """A second Ctrl-C while a validation grid is written: the old file stays whole, no .partial is left."""
    from personae.media.png import save_image

    target = tmp_path / "step-000010.png"
    Image.new("RGB", (8, 8), "red").save(target)
    before = target.read_bytes()

    class Interrupted(Image.Image):
        def save(self, fp, *args, **kwargs):  # half a PNG on disk, then the user's second Ctrl-C
            with open(fp, "wb") as fh:
                fh.write(before[:20])
            raise KeyboardInterrupt

    image = Image.new("RGB", (8, 8), "blue")
    image.__class__ = Interrupted
    with pytest.raises(KeyboardInterrupt):
        save_image(image, target)
    assert target.read_bytes() == before and not list(tmp_path.glob("*.partial"))
    save_image(Image.new("RGB", (8, 8), "blue"), target)
    assert Image.open(target).getpixel((0, 0)) == (0, 0, 255)


def test_the_training_loop_writes_validation_grids_through_the_atomic_writer():
    import inspect

    from personae.training import loop, saving

    source = inspect.getsource(saving)  # the behaviour of both writers is tested above (save_image uses atomic_file)
    assert 'path = self.run / "validation"' in source and "with atomic_file(path) as tmp:" in source
    assert "grid.save(run" not in source and "grid.save(self.run" not in source
    assert ".save(run" not in inspect.getsource(loop)  # the loop itself writes no image


# -- the top-level handler ------------------------------------------------------------------------------------------


def test_a_bug_goes_to_a_report_file_not_the_screen(monkeypatch, tmp_path, capsys):
    import personae.cli.convert_cmd as convert_cmd

    def broken(args):
        return {}["an internal bug"]

    monkeypatch.setenv("PERSONAE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(convert_cmd, "run", broken)
    code, err = cli(capsys, "convert", "x.safetensors", "--to", "kohya")
    assert code == 1 and "Traceback" not in err
    flat = " ".join(err.split())
    assert flat.startswith("error: this is a bug in personae (KeyError") and "please attach it to a report" in flat
    reports = list((tmp_path / "cache" / "crash-reports").glob("crash-*.txt"))
    assert len(reports) == 1 and str(reports[0]) in flat
    text = reports[0].read_text()
    assert "Traceback" in text and "an internal bug" in text and "command: personae convert x.safetensors" in text


@pytest.mark.parametrize("code_,expected", [(errno.ENOSPC, "There is no space left on the disk that holds /data/out"),
                                            (errno.EACCES, "Permission denied for /data/out"),
                                            (errno.EROFS, "/data/out is on a read-only file system")])
def test_an_os_error_the_user_can_act_on_is_one_paragraph_naming_the_path(monkeypatch, capsys, code_, expected):
    import os

    import personae.cli.convert_cmd as convert_cmd

    def full(args):
        raise OSError(code_, os.strerror(code_), "/data/out")

    monkeypatch.setattr(convert_cmd, "run", full)
    code, err = cli(capsys, "convert", "x.safetensors", "--to", "kohya")
    assert code == 1 and err.startswith("error:") and "Traceback" not in err and "\n\n" not in err.strip()
    assert expected in " ".join(err.split())


@pytest.mark.slow
def test_a_subprocess_bug_shows_no_traceback(tmp_path):
    """The same handler when personae runs as users run it (python -m personae)."""
    script = ("import personae.cli.convert_cmd as c, personae.cli.main as m, sys\n"
              "c.run = lambda args: 1 / 0\n"
              "sys.exit(m.main(['convert', 'x', '--to', 'kohya']))\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "PERSONAE_CACHE": str(tmp_path)})
    assert r.returncode == 1 and "Traceback" not in r.stderr and "ZeroDivisionError" in r.stderr, r.stderr
    assert list((tmp_path / "crash-reports").glob("*.txt"))


# -- big jobs ask first, at a terminal only -------------------------------------------------------------------------


class _Terminal:
    def __init__(self, answer: str):
        self.answer = answer

    def isatty(self):
        return True

    def readline(self):
        return self.answer


def test_a_big_job_asks_at_a_terminal_and_never_in_ci_or_a_pipe(monkeypatch, capsys):
    from personae.cli.big_jobs import BIG_IMAGES, confirm_big_job, estimate_seconds

    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(sys, "stdin", _Terminal("n\n"))
    with pytest.raises(UserError, match="--yes"):
        confirm_big_job("This generation", BIG_IMAGES + 1, 10.0)
    assert "Go ahead? [y/N]" in capsys.readouterr().err
    confirm_big_job("This generation", BIG_IMAGES + 1, 10.0, yes=True)  # --yes: no question
    confirm_big_job("This generation", 4, 10.0)  # small: no question
    monkeypatch.setattr(sys, "stdin", _Terminal("y\n"))
    confirm_big_job("This generation", 2, 5 * 3600.0)  # hours: asked, and "y" goes ahead
    monkeypatch.setenv("CI", "1")
    monkeypatch.setattr(sys, "stdin", _Terminal("n\n"))
    confirm_big_job("This generation", 10_000, 1e6)  # CI: never asks
    monkeypatch.delenv("CI")
    monkeypatch.setattr(sys, "stdin", None)
    confirm_big_job("This generation", 10_000, 1e6)  # no terminal: never asks
    # the estimate: SD-1.5 on a CPU is slow, the tiny model is not
    assert estimate_seconds("some/hub-model", 10, 20, 512, 512, 7.0, "cpu") > 3600
    assert estimate_seconds("some/hub-model", 10, 20, 512, 512, 7.0, "cuda") < 60
    plain = estimate_seconds("some/hub-model", 10, 20, 512, 512, 7.0, "cpu")  # a ControlNet unit costs ~0.45 UNet
    assert estimate_seconds("some/hub-model", 10, 20, 512, 512, 7.0, "cpu", controls=2) == pytest.approx(plain * 1.9)


def test_generate_asks_before_a_big_batch_at_a_terminal(tiny_model, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(sys, "stdin", _Terminal("no\n"))
    code, err = cli(capsys, "generate", "--model", tiny_model[0], "--prompt", "x", "--batch-count", 101,
                    "--out", tmp_path / "out")
    refused(code, err, "This generation was not started")
    assert not (tmp_path / "out").exists()


# -- found by the fuzz suite ----------------------------------------------------------------------------------------


def test_a_set_value_that_is_not_yaml_is_taken_as_text(tiny_model, tmp_path, capsys):
    """`--set train.steps=:` was a YAML parser traceback; now the text is the value, and the schema says why not."""
    from personae.config.base import apply_overrides

    assert apply_overrides({}, ["prompt=a: b: c", "x=:"]) == {"prompt": "a: b: c", "x": ":"}
    job = {"base_model": str(tiny_model[0]), "method": "lora", "data": {"path": str(tmp_path)}, "output": str(tmp_path / "r")}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    code, err = cli(capsys, "train", tmp_path / "job.yaml", "--set", "train.steps=:")
    refused(code, err, '"train.steps"')


def test_a_damaged_run_record_in_a_suite_is_one_paragraph(tiny_model, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    for record in ("{not json", "[]", '{"files": 3}', '{"files": [1, {"path": 2}]}'):
        (tmp_path / "run" / "exports.json").write_text(record)
        (tmp_path / "suite.yaml").write_text(yaml.safe_dump({"base_model": str(tiny_model[0]),
                                                             "variants": [{"label": "r", "run": str(tmp_path / "run")}]}))
        code, err = cli(capsys, "compare", tmp_path / "suite.yaml", "--out", tmp_path / "cmp")
        refused(code, err, "r")
    (tmp_path / "run" / "exports.json").unlink()
    for record in ("{not json", "[]", '{"version": 1, "status": 3}', '{"version": 99}', '{"version": 1, "extra": 1}'):
        (tmp_path / "run" / "run.json").write_text(record)
        code, err = cli(capsys, "compare", tmp_path / "suite.yaml", "--out", tmp_path / "cmp")
        refused(code, err, "r", "run.json")


def test_a_missing_file_of_personae_itself_is_a_bug_not_the_users(monkeypatch, tmp_path, capsys):
    from pathlib import Path

    import personae
    import personae.cli.convert_cmd as convert_cmd

    own = Path(personae.__file__).parent / "models" / "sd15" / "missing.json"

    def broken(args):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(own))

    monkeypatch.setenv("PERSONAE_CACHE", str(tmp_path))
    monkeypatch.setattr(convert_cmd, "run", broken)
    code, err = cli(capsys, "convert", "x.safetensors", "--to", "kohya")
    assert code == 1 and "this is a bug in personae" in err and "Traceback" not in err
