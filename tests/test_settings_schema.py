"""One settings declaration per concept: a field added once reaches every surface; shared checks agree everywhere."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from personae.cli.main import build_parser, main
from personae.config.animate import AnimateSettings
from personae.config.base import parse_settings
from personae.config.compare import CompareSuite, Variant
from personae.config.generate import GenerateSettings
from personae.config.sampling import SamplingSettings
from personae.config.storyboard import StoryboardSettings
from personae.errors import UserError
from personae.media.png import infotext_settings, infotext_values

SRC = Path(__file__).resolve().parents[1] / "src"
NEW_FIELD = '''    s_churn: float = setting(0.0, '"Sigma churn": a setting added by the test', infotext="Sigma churn",
                             ge=0.0, le=1.0)

'''

# Everything a user can do with a setting, run in a personae whose sampling concept gained one field.
SURFACES = r'''
import contextlib, io, json, sys
from pathlib import Path

import yaml
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from personae.cli import animate_cmd
from personae.cli.main import build_parser, main
from personae.errors import UserError
from personae.jobs.compare_plan import load_suite
from personae.jobs.generate import settings_from_png
from personae.jobs.storyboard import load_scenes
from personae.media.png import infotext_values, read_png_text

tiny, work = sys.argv[1], Path(sys.argv[2])
out = {}
for command in ("generate", "animate", "storyboard", "compare"):
    text = io.StringIO()
    with contextlib.redirect_stdout(text), contextlib.suppress(SystemExit):
        build_parser().parse_args([command, "--help"])
    out["help " + command] = text.getvalue()
scene = [{"number": 1, "description": "a cat"}]
(work / "board.yaml").write_text(yaml.safe_dump({"model": tiny, "s_churn": 0.5, "scenes": scene}))
out["storyboard yaml"] = load_scenes(work / "board.yaml").s_churn
(work / "suite.yaml").write_text(yaml.safe_dump({"base_model": tiny, "s_churn": 0.25}))
out["compare yaml"] = load_suite(work / "suite.yaml").s_churn
(work / "bad.yaml").write_text(yaml.safe_dump({"model": tiny, "s_churn": 2, "scenes": scene}))
try:
    load_scenes(work / "bad.yaml")
except UserError as exc:
    out["out of bounds"] = str(exc)
clip = animate_cmd.settings_from_args(build_parser().parse_args(
    ["animate", "--model", tiny, "--prompt", "x", "--motion-adapter", "m", "--s-churn", "0.75"]))
out["animate option"], out["animate infotext"] = clip.s_churn, infotext_values(clip).get("Sigma churn")
out["generate exit"] = main(["generate", "--model", tiny, "--prompt", "a cat", "--steps", "2", "--width", "64",
                             "--height", "64", "--seed", "3", "--s-churn", "0.125", "--out", str(work / "a"),
                             "--quiet"])
png = next((work / "a").glob("*.png"))
out["png json"] = json.loads(read_png_text(png)["personae"])["s_churn"]
out["png parameters"] = read_png_text(png)["parameters"]
main(["generate", "--from-png", str(png), "--model", tiny, "--out", str(work / "b"), "--quiet"])
out["from png"] = json.loads(read_png_text(next((work / "b").glob("*.png")))["personae"])["s_churn"]
info = PngInfo()
info.add_text("parameters", "a dog\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, Sigma churn: 0.5")
Image.new("RGB", (8, 8)).save(work / "a1111.png", pnginfo=info)
out["from a1111 png"] = settings_from_png(work / "a1111.png")["s_churn"]
print("RESULT " + json.dumps(out))
'''


def _personae_with_one_more_field(root: Path) -> Path:
    """A copy of personae whose SamplingSettings declares one more field: the only edit a developer makes."""
    copy = root / "src"
    shutil.copytree(SRC / "personae", copy / "personae", ignore=shutil.ignore_patterns("__pycache__"))
    sampling = copy / "personae/config/sampling.py"
    text = sampling.read_text()
    anchor = '    @field_validator("width", "height")\n'
    assert text.count(anchor) == 1
    sampling.write_text(text.replace(anchor, NEW_FIELD + anchor))
    return copy


def test_a_sampling_field_added_once_reaches_cli_help_yaml_png_and_from_png(tiny_model, tmp_path):
    assert "--s-churn" not in _help("generate")  # the field is new
    src = _personae_with_one_more_field(tmp_path)
    (tmp_path / "work").mkdir()
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", SURFACES, str(tiny_model[0]), str(tmp_path / "work")], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.rsplit("RESULT ", 1)[1])
    for command in ("generate", "animate", "storyboard", "compare"):
        assert "--s-churn S_CHURN" in out["help " + command]
        assert '"Sigma churn": a setting added by the test' in out["help " + command]
    assert out["storyboard yaml"] == 0.5 and out["compare yaml"] == 0.25
    assert '"s_churn"' in out["out of bounds"] and "less than or equal to 1" in out["out of bounds"]
    assert out["animate option"] == 0.75 and out["animate infotext"] == 0.75
    assert out["generate exit"] == 0
    assert out["png json"] == 0.125 and "Sigma churn: 0.125" in out["png parameters"]
    assert out["from png"] == 0.125 and out["from a1111 png"] == 0.5


def _help(command: str) -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return sub.format_help()


def _options(command: str) -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {s for a in sub._actions for s in a.option_strings} - {"-h", "--help"}


SHARED = {"--model", "--prompt", "--negative", "--steps", "--cfg", "--seed", "--width", "--height", "--sampler",
          "--clip-skip", "--lora", "--lora-dir", "--vae", "--embedding", "--embeddings-dir", "--device", "--dtype",
          "--allow-pickle", "--style", "--styles-file", "--wildcards-dir",
          "--attention", "--channels-last", "--compile", "--vae-slicing", "--vae-tiling", "--no-vae-upcast", "--medvram",
          "--lowvram"}


def test_generated_options_keep_the_names_users_know():
    assert _options("generate") == SHARED | {
        "--batch-size", "--batch-count", "--init-image", "--strength", "--mask", "--mask-blur", "--mask-invert",
        "--masked-content", "--noise-multiplier", "--extra-noise", "--resize-mode", "--ngms", "--ngms-all-steps",
        "--skip-early-cfg", "--control",
        "--sigma-churn", "--sigma-tmin", "--sigma-tmax", "--sigma-noise",
        "--hires-scale", "--hires-resize", "--hires-steps", "--hires-denoise", "--hires-upscaler", "--upscaler-dir",
        "--subseed", "--subseed-strength", "--seed-resize-from-w", "--seed-resize-from-h", "--rng", "--ensd", "--eta",
        "--eta-ddim", "--emphasis", "--quantize", "--img2img-fix-steps", "--schedule-rho", "--schedule-min-sigma",
        "--schedule-max-sigma", "--discard-penultimate", "--noise-schedule", "--prediction-type", "--comma-backtrack",
        "--freeu", "--freeu-v2", "--tiling", "--token-merging", "--hires-token-merging", "--pad-conds",
        "--hires-prompt",
        "--hires-negative", "--hires-sampler", "--hires-cfg", "--inpaint-area", "--masked-padding",
        "--dynamic-thresholding", "--mimic-scale", "--no-dt-separate-feature-channels", "--dt-scaling-startpoint",
        "--dt-variability-measure", "--dt-interpolate-phi", "--dt-threshold-percentile", "--dt-mimic-mode",
        "--dt-mimic-scale-min", "--dt-cfg-mode", "--dt-cfg-scale-min", "--dt-scheduler-value",
        "--soft-inpainting", "--soft-schedule-bias", "--soft-preservation", "--soft-contrast-boost",
        "--soft-mask-influence", "--soft-difference-threshold", "--soft-difference-contrast",
        "--ad-model", "--ad-prompt", "--ad-negative-prompt", "--ad-confidence", "--ad-mask-k-largest",
        "--ad-dilate-erode", "--ad-mask-blur", "--ad-denoising-strength", "--no-ad-inpaint-only-masked",
        "--ad-inpaint-padding", "--ad-inpaint-width", "--ad-inpaint-height", "--ad-steps", "--ad-cfg-scale",
        "--ad-sampler", "--ad-mask-min-ratio", "--ad-mask-max-ratio", "--ad-x-offset", "--ad-y-offset",
        "--ad-mask-merge-invert", "--ad-noise-multiplier", "--ad-clip-skip",
        "--controlnet", "--control-option", "--control-start", "--control-end", "--control-resize", "--control-mode",
        "--control-res", "--pixel-perfect", "--control-low-vram", "--control-hr-option", "--control-guidance-by",
        "--control-mask", "--recipe", "--animal",
        "--ip-adapter", "--ip-adapter-model", "--image-encoder", "--ip-adapter-start", "--ip-adapter-end",
        "--from-png", "--out", "--quiet", "--yes"}
    sampler_parameters = {"--eta", "--eta-ddim", "--sigma-churn", "--sigma-tmin", "--sigma-tmax", "--sigma-noise",
                          "--quantize", "--schedule-rho", "--schedule-min-sigma", "--schedule-max-sigma",
                          "--discard-penultimate", "--noise-schedule", "--prediction-type", "--emphasis",
                          "--comma-backtrack"}
    assert _options("animate") == SHARED | sampler_parameters | {
        "--motion-adapter", "--frames", "--fps", "--loop-number", "--motion-scale", "--context", "--context-stride",
        "--freeinit", "--freeinit-iters", "--freeinit-filter", "--freeinit-ds", "--freeinit-dt",
        "--latent-power", "--latent-scale", "--last-frame", "--latent-power-last", "--latent-scale-last",
        "--from-png", "--out", "--webp-quality", "--webp-lossless", "--frames-dir", "--overwrite", "--quiet", "--yes",
        # ControlNet units, as generate's but for the hires fix and the inpaint masks a clip has not
        "--control", "--controlnet", "--control-option", "--control-start", "--control-end", "--control-resize",
        "--control-mode", "--control-res", "--pixel-perfect", "--control-low-vram", "--control-guidance-by",
        "--init-image", "--strength"}  # a clip to start from, at a denoising strength
    sampling = {"--negative", "--steps", "--cfg", "--sampler", "--clip-skip", "--width", "--height", "--device",
                "--dtype", "--attention", "--medvram", "--lowvram", "--compile"}
    assert sampling <= _options("storyboard") and sampling <= _options("compare")


def test_help_comes_from_the_declarations_with_each_commands_defaults(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option: descriptions are compared whole
    generate, animate = (" ".join(_help(c).split()) for c in ("generate", "animate"))
    for name, info in GenerateSettings.model_fields.items():
        if name != "version":
            assert " ".join(info.description.split()) in generate, name
    assert '"Steps": sampling steps (default 20)' in generate and '"Steps": sampling steps (default 25)' in animate
    assert '(default "DPM++ 2M Karras")' in generate and "(default DDIM)" in animate
    assert "--device {auto,cpu,cuda,mps}" in generate and "--lora FILE[:WEIGHT[:UNET]]" in generate
    assert "motion options:" in animate and "ControlNet options:" in generate


def test_generated_options_parse_like_the_hand_written_ones(tmp_path, capsys):
    from personae.cli import generate_cmd

    args = build_parser().parse_args(["generate", "--model", "m", "--prompt", "p", "--lora", "a.safetensors:0.5",
                                      "--embedding", "e.pt:<tok>", "--control", "canny:x.png:0.8", "--control",
                                      "pose:y.png", "--allow-pickle", "--steps", "4", "--cfg", "2.5"])
    settings = generate_cmd.settings_from_args(args)
    assert [(l.path, l.weight) for l in settings.loras] == [("a.safetensors", 0.5)]
    assert [(e.path, e.token) for e in settings.embeddings] == [("e.pt", "<tok>")]
    assert [(c.type, c.image, c.weight) for c in settings.controls] == [("canny", "x.png", 0.8), ("pose", "y.png", 1.0)]
    assert settings.allow_pickle and settings.steps == 4 and settings.cfg == 2.5 and settings.sampler == "DPM++ 2M Karras"
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["generate", "--control", "canny"])
    assert exc.value.code == 2 and "expected TYPE:IMAGE[:WEIGHT]" in capsys.readouterr().err
    # options not given leave a PNG's settings alone
    assert generate_cmd.settings_from_args(build_parser().parse_args(["generate"]),
                                           {"model": "m", "prompt": "p", "steps": 9}).steps == 9


COMMANDS = [(GenerateSettings, {"model": "m", "prompt": "p"}),
            (AnimateSettings, {"model": "m", "prompt": "p", "motion_adapter": "a"}),
            (StoryboardSettings, {"model": "m", "scenes": [{"number": 1, "description": "d"}]}),
            (CompareSuite, {"base_model": "m"})]


@pytest.mark.parametrize("cls,base", COMMANDS, ids=lambda c: getattr(c, "__name__", ""))
@pytest.mark.parametrize("bad,expected", [
    ({"cfg": 101}, "less than or equal to 100"), ({"cfg": -1}, "greater than or equal to 0"),
    ({"width": 65}, "multiple of 8"), ({"height": 100}, "multiple of 8"), ({"width": 8200}, "less than or equal"),
    ({"steps": 0}, "greater than or equal to 1"), ({"steps": 1001}, "less than or equal to 1000"),
    ({"clip_skip": 13}, "less than or equal to 12"), ({"dtype": "fp8"}, "fp32"),
])
def test_the_shared_checks_are_the_same_in_every_command(cls, base, bad, expected):
    with pytest.raises(UserError, match=expected) as err:
        parse_settings(cls, {**base, **bad}, "settings")
    assert f'"{next(iter(bad))}"' in str(err.value)


@pytest.mark.parametrize("cls", [c for c, _ in COMMANDS], ids=lambda c: c.__name__)
def test_every_command_uses_the_one_declaration(cls):
    for name, shared in SamplingSettings.model_fields.items():
        mine = cls.model_fields[name]
        assert (mine.annotation, mine.metadata, mine.description) == (shared.annotation, shared.metadata,
                                                                      shared.description), name
    for name in ("steps", "cfg", "sampler"):  # a comparison variant's override is checked like the suite's value
        assert Variant.model_fields[name].metadata == SamplingSettings.model_fields[name].metadata
    with pytest.raises(UserError, match="less than or equal to 100"):
        parse_settings(Variant, {"label": "v", "cfg": 101})
    with pytest.raises(UserError, match="sweep.cfg"):
        parse_settings(CompareSuite, {"base_model": "m", "sweep": {"cfg": [5, 101]}})


def test_storyboard_and_compare_options_are_checked_like_generate(tmp_path, capsys):
    board = tmp_path / "board.yaml"
    board.write_text(yaml.safe_dump({"model": "./nowhere", "scenes": [{"number": 1, "description": "d"}]}))
    assert main(["storyboard", str(board), "--width", "65", "--out", str(tmp_path / "b")]) == 2
    assert "multiple of 8" in capsys.readouterr().err
    assert main(["storyboard", str(board), "--cfg", "101", "--out", str(tmp_path / "b")]) == 2
    assert "less than or equal to 100" in capsys.readouterr().err
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"base_model": "./nowhere"}))
    assert main(["compare", str(suite), "--height", "100", "--out", str(tmp_path / "c")]) == 2
    assert "multiple of 8" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_infotext_names_come_from_the_declarations():
    plain = GenerateSettings(model="m", prompt="p", steps=4, cfg=6.5, seed=3, clip_skip=2, strength=0.4)
    assert infotext_values(plain) == {"Seed": 3, "Steps": 4, "CFG scale": 6.5, "Sampler": "DPM++ 2M Karras",
                                      "Clip skip": 2, "RNG": "CPU"}  # strength only with an init image; RNG
    # because A1111's default source is GPU
    img2img = plain.model_copy(update={"init_image": "x.png"})
    assert infotext_values(img2img)["Denoising strength"] == 0.4
    read = infotext_settings(GenerateSettings, {"Steps": "4", "CFG scale": "6.5", "Seed": "3", "Clip skip": "2",
                                                "Denoising strength": "0.4", "Model": "ignored"})
    assert read == {"seed": 3, "steps": 4, "cfg": 6.5, "clip_skip": 2, "strength": 0.4}
    clip = AnimateSettings(model="m", prompt="p", motion_adapter="a", frames=8, fps=12)
    assert {"Frames": 8, "FPS": 12.0, "Motion scale": 1.0, "Steps": 25}.items() <= infotext_values(clip).items()


def _all_fields(cls, seen=None):
    """Every (model, field name, info) of a settings model, nested sections and list items included."""
    from pydantic import BaseModel

    from personae.cli.options import _plain

    seen = set() if seen is None else seen
    if cls in seen:
        return
    seen.add(cls)
    for name, info in cls.model_fields.items():
        yield cls, name, info
        kind = _plain(info.annotation)
        for arg in (kind, *getattr(kind, "__args__", ())):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                yield from _all_fields(arg, seen)


def _settings_models():
    from personae.config.prepare import PrepareSettings
    from personae.config.train import TrainJob
    from personae.world.bench_settings import WorldBench
    from personae.world.controlnet_settings import WorldControlNet
    from personae.world.motion_settings import WorldMotion
    from personae.world.pretrain_settings import WorldPretrain
    from personae.world.zero_snr_settings import WorldZeroSnr

    return {"train": TrainJob, "prepare": PrepareSettings, "world pretrain": WorldPretrain, "world bench": WorldBench,
            "world controlnet": WorldControlNet, "world motion": WorldMotion, "world zero-snr": WorldZeroSnr}


@pytest.mark.parametrize("command", ["train", "prepare", "world pretrain", "world bench", "world controlnet",
                                     "world motion", "world zero-snr"])
def test_every_setting_of_train_prepare_and_world_is_documented_in_its_help(command, monkeypatch):
    """The job, prepare and world settings carry their description in the declaration, and `--help` is made from
    it: every key (train.steps, lora.rank, vae.kl_weight ...) or option (--class-word ...) with its text."""
    from personae.cli.options import flag_of, settings_lines

    monkeypatch.setenv("COLUMNS", "1000")
    cls = _settings_models()[command]
    undocumented = [f"{model.__name__}.{name}" for model, name, info in _all_fields(cls) if not info.description]
    assert not undocumented, undocumented
    parser = build_parser()
    for word in command.split():
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
    text = " ".join(parser.format_help().split())
    if command == "prepare":  # options, one per field
        for name, info in cls.model_fields.items():
            if name != "version":
                assert flag_of(name, info) in text and " ".join(info.description.split()) in text, name
    else:  # a listing of the file's keys
        keys = settings_lines(cls)
        assert len(keys) > 10 and all(key in text for key, _ in keys)
        for key, description in keys:
            assert " ".join(description.split()) in text, key
    if command == "train":
        assert "train.min_snr_gamma" in text and "pivotal.tokens[].init_word" in text and "(default 500" in text


def test_prepare_options_parse_colours_and_folder_tokens_in_the_settings_model(tmp_path):
    from personae.cli.options import settings_values
    from personae.config.prepare import PrepareSettings

    args = build_parser().parse_args(["prepare", "src", "out", "--background", "#808080", "--folder-tokens",
                                      "close_up=<cu>, full=<fs>", "--recaption", "--class-word", "dog"])
    settings = parse_settings(PrepareSettings, settings_values(args, PrepareSettings))
    assert settings.background == (128, 128, 128) and settings.folder_tokens == {"close_up": "<cu>", "full": "<fs>"}
    assert settings.recaption and settings.class_word == "dog"
    assert parse_settings(PrepareSettings, {"background": "10, 20, 30"}).background == (10, 20, 30)
    assert parse_settings(PrepareSettings, {"background": [1, 2, 3]}).background == (1, 2, 3)
    for bad, why in (("nocolour", "is not a colour"), ("300,0,0", "0-255")):
        with pytest.raises(UserError, match=why):
            parse_settings(PrepareSettings, {"background": bad})
    with pytest.raises(UserError, match="is not folder=token"):
        parse_settings(PrepareSettings, {"folder_tokens": "close_up"})
    assert main(["prepare", str(tmp_path / "none"), str(tmp_path / "out"), "--background", "nocolour"]) == 2


def test_add_on_references_are_written_in_yaml_as_on_the_command_line(tmp_path):
    """A character's `lora: FILE:0.8` in a storyboard (and any LoRA, embedding or ControlNet reference in a YAML
    file) reads as the command line's FILE[:WEIGHT] / FILE[:TOKEN] / TYPE:IMAGE[:WEIGHT]; the mapping form stays."""
    from personae.config.addons import ControlRef, EmbeddingRef, LoraRef
    from personae.jobs.storyboard import load_scenes

    (tmp_path / "hero.safetensors").write_bytes(b"")
    (tmp_path / "e.pt").write_bytes(b"")  # paths in a scenes file must exist (read relative to it)
    board = {"model": "m", "scenes": [{"number": 1, "description": "a cat", "characters": ["mia"]}],
             "characters": {"mia": {"prompt": "a girl", "lora": "hero.safetensors:0.8", "embedding": "e.pt:<mia>"}}}
    (tmp_path / "board.yaml").write_text(yaml.safe_dump(board))
    mia = load_scenes(tmp_path / "board.yaml").characters["mia"]
    assert Path(mia.lora.path).name == "hero.safetensors" and mia.lora.weight == 0.8
    assert Path(mia.embedding.path).name == "e.pt" and mia.embedding.token == "<mia>"
    assert parse_settings(GenerateSettings, {"model": "m", "prompt": "p", "loras": ["a.safetensors:0.5", {
        "path": "b.safetensors", "weight": 0.25}]}).loras == [LoraRef(path="a.safetensors", weight=0.5),
                                                             LoraRef(path="b.safetensors", weight=0.25)]
    assert LoraRef.model_validate("plain.safetensors").weight == 1.0
    assert ControlRef.model_validate("canny:photo.png:0.7") == ControlRef(type="canny", image="photo.png", weight=0.7)
    assert EmbeddingRef.model_validate("e.pt").token is None
    with pytest.raises(UserError, match="TYPE:IMAGE"):
        parse_settings(GenerateSettings, {"model": "m", "prompt": "p", "controls": ["canny"]})
