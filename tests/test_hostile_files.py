"""Hostile model files: pickles that would run code, under every name, through every way in (issue 14).

Each hostile pickle's unpickling would create a marker file (through `pathlib.Path.touch` or
`os.system`). It is saved with every extension and none, in PyTorch's zip and legacy formats
and as raw pickles, and passed through every flag and file key that takes a model file, with
and without --allow-pickle. The marker never appears, and every refusal is one paragraph
with exit 2. Legitimate weights-only pickles still load with --allow-pickle.
"""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from safetensors.torch import save_file

from personae.cli.main import main
from personae.errors import UserError
from personae.models.model_files import PICKLE, SAFETENSORS, check_model_file, load_pickle, sniff

EXTENSIONS = [".ckpt", ".pt", ".pth", ".bin", ".pkl", ".safetensors", ""]


class Touch:
    """Unpickling this creates `marker` (via pathlib)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


class System:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def _write(path, payload, fmt):
    state = {"state_dict": {"model.diffusion_model.x": torch.zeros(1), "evil": payload}}
    if fmt == "zip":
        torch.save(state, path)
    elif fmt == "legacy":
        torch.save(state, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=int(fmt[-1])))


FORMATS = [("zip", Touch), ("legacy", System), ("raw2", System), ("raw4", Touch), ("raw0", System)]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """name -> (path, marker) for every format x extension."""
    root = tmp_path_factory.mktemp("hostile")
    files = {}
    for fmt, payload in FORMATS:
        for ext in EXTENSIONS:
            name = f"evil-{fmt}{ext or '-nosuffix'}"
            marker = root / "markers" / name
            _write(root / f"evil-{fmt}{ext}", payload(marker), fmt)
            files[name] = (root / f"evil-{fmt}{ext}", marker)
    (root / "markers").mkdir()
    return files



def test_the_hostile_files_really_are_hostile(hostile, tmp_path):
    """Sanity: a plain unpickler would run them (so the suite below tests something)."""
    path, marker = hostile["evil-raw4.pkl"]
    pickle.loads(path.read_bytes())
    assert marker.exists()
    marker.unlink()


def test_the_sniffer_decides_by_content_not_name(hostile, tmp_path):
    for name, (path, _) in hostile.items():
        assert sniff(path) == ("" if "raw0" in name else PICKLE), name
    save_file({"x": torch.zeros(2)}, str(tmp_path / "weights.ckpt"))
    assert sniff(tmp_path / "weights.ckpt") == SAFETENSORS
    assert check_model_file(tmp_path / "weights.ckpt") == SAFETENSORS  # a safetensors file under any name is fine


def _cli(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _assert_refused(code: int, err: str, context: str) -> None:
    assert code == 2, f"{context}: exit {code}\n{err}"
    assert err.startswith("error:") and "Traceback" not in err, f"{context}: {err}"
    assert "\n\n" not in err.strip(), f"{context}: more than one paragraph: {err}"


def _flag_cases(tiny: str, photo) -> dict:
    """flag -> argv with FILE where the hostile file goes."""
    gen = ["generate", "--model", tiny, "--prompt", "x", "--steps", "1", "--quiet"]
    anim = ["animate", "--model", tiny, "--prompt", "x", "--steps", "1", "--frames", "2", "--quiet"]
    return {
        "--model": ["generate", "--model", "FILE", "--prompt", "x", "--steps", "1", "--quiet"],
        "--lora": gen + ["--lora", "FILE"],
        "--lora with weight": gen + ["--lora", "FILE:0.5"],
        "--embedding": gen + ["--embedding", "FILE"],
        "--controlnet": gen + ["--control", f"raw:{photo}", "--controlnet", "raw=FILE"],
        "animate --motion-adapter": anim + ["--motion-adapter", "FILE"],
        "animate --model": ["animate", "--model", "FILE", "--motion-adapter", "FILE", "--prompt", "x", "--quiet"],
        "animate --lora": anim + ["--motion-adapter", "FILE", "--lora", "FILE"],
        "convert --to kohya": ["convert", "FILE", "--to", "kohya"],
        "convert --to diffusers": ["convert", "FILE", "--to", "diffusers"],
    }


@pytest.mark.parametrize("allow", [False, True], ids=["no-flag", "allow-pickle"])
def test_no_hostile_pickle_runs_through_any_flag(hostile, tiny_model, photo, tmp_path, capsys, allow):
    cases = _flag_cases(str(tiny_model[0]), photo)
    for name, (path, marker) in hostile.items():
        for flag, argv in cases.items():
            out = {"generate": tmp_path / "out" / name, "animate": tmp_path / "out" / f"{name}.gif",
                   "convert": tmp_path / "out" / f"{name}.safetensors"}[argv[0]]
            argv = [a.replace("FILE", str(path)) for a in argv] + ["--out", out] + (["--allow-pickle"] if allow else [])
            code, err = _cli(capsys, *argv)
            _assert_refused(code, err, f"{flag} {name}")
            assert not marker.exists(), f"{flag} {name}: the pickle ran"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.*"))


def _png_with_settings(path, settings: dict):
    info = PngInfo()
    info.add_text("parameters", "x\nSteps: 1, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64")
    info.add_text("personae", json.dumps(settings))
    Image.new("RGB", (64, 64)).save(path, pnginfo=info)
    return path


@pytest.mark.parametrize("allow", [False, True], ids=["no-flag", "allow-pickle"])
def test_png_metadata_cannot_turn_pickles_on_or_run_one(hostile, tiny_model, tmp_path, capsys, allow):
    for name, (path, marker) in hostile.items():
        for key, value in [("model", str(path)), ("loras", [{"path": str(path), "weight": 1.0}]),
                           ("embeddings", [{"path": str(path), "token": None}])]:
            settings = {"model": str(tiny_model[0]), "prompt": "x", "steps": 1, "seed": 1, "width": 64, "height": 64,
                        "allow_pickle": True, key: value}
            png = _png_with_settings(tmp_path / f"{name}-{key}.png", settings)
            argv = ["generate", "--from-png", png, "--out", tmp_path / "out", "--quiet"]
            code, err = _cli(capsys, *(argv + ["--allow-pickle"] if allow else argv))
            _assert_refused(code, err, f"--from-png {key} {name}")
            if not allow and "raw0" not in name and not name.endswith(".safetensors"):  # the PNG's allow_pickle: true is not the user's
                assert "can run arbitrary code" in " ".join(err.split()), err
            assert not marker.exists(), f"--from-png {key} {name}: the pickle ran"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _yaml(path, data: dict):
    import yaml

    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_suite_storyboard_and_job_files_cannot_run_a_pickle(hostile, tiny_model, tmp_path, capsys):
    tiny = str(tiny_model[0])
    (tmp_path / "data").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "data" / "a.png")
    for name, (path, marker) in hostile.items():
        p = str(path)
        files = {
            "compare base_model": ("compare", {"base_model": p, "seeds": [0], "steps": 1}),
            "compare variant model": ("compare", {"base_model": tiny, "variants": [{"label": "v", "model": p}]}),
            "compare variant lora": ("compare", {"base_model": tiny, "variants": [{"label": "v", "lora": p}]}),
            "compare variant loras": ("compare", {"base_model": tiny, "variants": [{"label": "v", "loras": [{"path": p}]}]}),
            "compare variant embedding": ("compare", {"base_model": tiny, "variants": [{"label": "v", "embedding": p}]}),
            "storyboard model": ("storyboard", {"model": p, "scenes": [{"number": 1, "description": "x"}]}),
            "storyboard style_lora": ("storyboard", {"model": tiny, "style_lora": {"path": p},
                                                     "scenes": [{"number": 1, "description": "x"}]}),
            "storyboard shot_embeddings": ("storyboard", {"model": tiny, "shot_embeddings": [{"path": p}],
                                                          "scenes": [{"number": 1, "description": "x"}]}),
            "storyboard character": ("storyboard", {"model": tiny, "characters": {"a": {"lora": {"path": p},
                                                                                        "embedding": {"path": p}}},
                                                    "scenes": [{"number": 1, "description": "x", "characters": ["a"]}]}),
            "train base_model": ("train", {"base_model": p, "data": {"path": str(tmp_path / "data")},
                                           "output": str(tmp_path / "run"), "train": {"steps": 1}}),
            "train base_model, allow_pickle": ("train", {"base_model": p, "allow_pickle": True,
                                                         "data": {"path": str(tmp_path / "data")},
                                                         "output": str(tmp_path / "run"), "train": {"steps": 1}}),
        }
        for what, (command, data) in files.items():
            job = _yaml(tmp_path / "job.yaml", data)
            extra = ["--out", tmp_path / "out"] if command != "train" else []
            code, err = _cli(capsys, command, job, *extra, "--quiet")
            _assert_refused(code, err, f"{what} {name}")
            assert not marker.exists(), f"{what} {name}: the pickle ran"


def test_a_pickle_in_a_model_folder_needs_the_flag_and_never_runs(hostile, tiny_model, tmp_path, capsys):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_model[0], folder)
    for f in (folder / "unet").glob("*.safetensors"):
        f.unlink()
    path, marker = hostile["evil-zip.bin"]
    shutil.copyfile(path, folder / "unet" / "diffusion_pytorch_model.bin")
    for allow in ([], ["--allow-pickle"]):
        code, err = _cli(capsys, "generate", "--model", folder, "--prompt", "x", "--out", tmp_path / "out", *allow)
        _assert_refused(code, err, f"folder {allow}")
        assert not marker.exists()
    assert "pickle" in err or "weights" in err


def test_the_libraries_own_loaders_are_weights_only_too(hostile, tiny_session):
    """Defence in depth: even past our checks, what diffusers reads goes through the weights-only unpickler."""
    from diffusers.models.model_loading_utils import load_state_dict

    for name in ("evil-zip.bin", "evil-legacy.ckpt", "evil-raw2.pt"):
        path, marker = hostile[name]
        with pytest.raises(Exception):
            load_state_dict(str(path))
        with pytest.raises(Exception):
            tiny_session.pipe.load_lora_weights(str(path), adapter_name="evil")
        with pytest.raises(UserError, match="holds more than weights|could not be read"):
            load_pickle(path)
        assert not marker.exists(), name


def test_subprocess_refusal_is_one_paragraph_with_exit_2(hostile, tiny_model, tmp_path):
    path, marker = hostile["evil-zip.pkl"]
    for allow in ([], ["--allow-pickle"]):
        r = subprocess.run([sys.executable, "-m", "personae", "animate", "--model", str(tiny_model[0]),
                            "--motion-adapter", str(path), "--prompt", "x", "--out", str(tmp_path / "a.gif"), *allow],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr, r.stderr
        assert not marker.exists()


# -- legitimate pickles still load with --allow-pickle ------------------------------------------------------------


def test_weights_only_bin_embedding_loads_with_the_flag(tiny_model, tmp_path, capsys):
    torch.manual_seed(0)
    torch.save({"<legit>": torch.randn(1, 32)}, tmp_path / "learned_embeds.bin")
    argv = ["generate", "--model", tiny_model[0], "--prompt", "a <legit>", "--steps", 1, "--seed", 1,
            "--embedding", tmp_path / "learned_embeds.bin", "--out", tmp_path / "out", "--quiet"]
    code, err = _cli(capsys, *argv)
    assert code == 2 and "pickle" in err
    code, err = _cli(capsys, *argv, "--allow-pickle")
    assert code == 0, err
    assert "<legit>" in (next((tmp_path / "out").glob("*.png"))).read_bytes().decode("latin-1")


def test_weights_only_ckpt_model_and_motion_module_load_with_the_flag(tiny_model, tmp_path, monkeypatch):
    import personae.models.resolve as resolve
    from personae.models.motion import load_motion_adapter, resolve_motion_adapter
    from personae.models.original_layout import pipeline_to_original
    from personae.models.tiny_motion import build_tiny_motion_adapter
    from personae.training.verify import render

    reference = resolve.load_pipeline(resolve.resolve_model(str(tiny_model[1])))
    state = pipeline_to_original(reference.unet, reference.vae, reference.text_encoder)
    torch.save({"state_dict": state}, tmp_path / "model.ckpt")  # as old model-site .ckpt files hold their weights
    with pytest.raises(UserError, match="pickle"):
        resolve.resolve_model(str(tmp_path / "model.ckpt"))
    # a pickle has no header for configs: a real SD-1.5 .ckpt gets the shipped SD-1.5 configs; this tiny one the
    # tiny model's (same folder layout)
    monkeypatch.setattr(resolve, "SD15_DIR", tiny_model[0])
    source = resolve.resolve_model(str(tmp_path / "model.ckpt"), allow_pickle=True)
    assert source.is_pickle
    pipe = resolve.load_pipeline(source)
    assert np.abs(render(pipe, "a photo of a cat") - render(reference, "a photo of a cat")).max() == 0
    adapter = build_tiny_motion_adapter(0)
    torch.save(adapter.state_dict(), tmp_path / "motion.ckpt")
    loaded = load_motion_adapter(resolve_motion_adapter(str(tmp_path / "motion.ckpt"), allow_pickle=True))
    for key, value in adapter.state_dict().items():
        if not key.endswith("pos_embed.pe"):
            assert torch.equal(loaded.state_dict()[key], value), key
