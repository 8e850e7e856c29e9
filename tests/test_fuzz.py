"""Fuzzing what users and strangers hand us: zero tracebacks, zero hangs (issue 14).

Every reader of outside input is fed generated and mutated input: safetensors headers and
pickles, images, PNG metadata (`parse_parameters`, `--from-png`), YAML jobs / suites /
storyboards, storyboard CSVs, and command-line flags. The only acceptable outcomes are a
clean result or a `UserError` (or argparse's usage error, exit 2); each example must finish
within HANG_SECONDS.

Hypothesis runs derandomized (a fixed seed, the same examples every run) with small example
counts, so the file takes a minute or two in CI. To explore further:

    PERSONAE_FUZZ=explore pytest tests/test_fuzz.py      # random seeds, 20x the examples
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

# the heavy imports happen here, once, outside the per-example hang guard
import personae.cli.animate_cmd  # noqa: F401
import personae.cli.generate_cmd  # noqa: F401
import personae.inference.txt2img  # noqa: F401
import personae.jobs.compare_plan  # noqa: F401
import personae.jobs.generate  # noqa: F401
import personae.jobs.storyboard  # noqa: F401
import personae.jobs.train  # noqa: F401
import personae.models.addons  # noqa: F401
import personae.training.setup  # noqa: F401
from personae.cli.main import build_parser
from personae.errors import UserError

build_parser()  # imports every command module

HANG_SECONDS = 30
EXPLORE = os.environ.get("PERSONAE_FUZZ") == "explore"
settings.register_profile("personae-ci", derandomize=True, deadline=None, print_blob=True,  # no shrinking: it can
                          phases=[Phase.explicit, Phase.reuse, Phase.generate],  # take minutes; failures show as found
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.filter_too_much])
settings.register_profile("personae-explore", deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("personae-explore" if EXPLORE else "personae-ci")


def examples(n: int) -> settings:
    return settings(max_examples=n * 20 if EXPLORE else n)


class Hang(Exception):
    pass


@contextlib.contextmanager
def within(seconds: float = HANG_SECONDS):
    """Fail (instead of hanging the suite) when the body runs longer than `seconds`."""
    def alarm(signum, frame):
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def clean_or_user_error(fn, *args, **kwargs):
    """Run fn; a UserError is a clean refusal (its message must be one non-empty paragraph)."""
    with within():
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            assert str(exc).strip() and "\n\n" not in str(exc), repr(str(exc))
            return None


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory(prefix="personae-fuzz-") as tmp:
        yield Path(tmp)


# -- safetensors headers and pickles ----------------------------------------------------------------------------------

DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "Q4", "", "f32"]
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                         st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                 st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)
tensor_entries = st.fixed_dictionaries({
    "dtype": st.one_of(st.sampled_from(DTYPES), json_scalars),
    "shape": st.one_of(st.lists(st.integers(-2, 6), max_size=4), st.lists(st.integers(0, 2**62), max_size=3), json_values),
    "data_offsets": st.one_of(st.lists(st.integers(-4, 256), min_size=2, max_size=2), json_values),
})
headers = st.dictionaries(
    st.one_of(st.sampled_from(["__metadata__", "model.diffusion_model.input_blocks.0.0.weight", "emb_params",
                               "lora_unet_x.lora_down.weight", "control_model.x", "down_blocks.0.motion_modules.0.x"]),
              st.text(max_size=10)),
    st.one_of(tensor_entries, st.dictionaries(st.text(max_size=8), st.one_of(st.text(max_size=20), json_values),
                                              max_size=3), json_values),
    max_size=5)


@st.composite
def safetensors_files(draw) -> bytes:
    header = json.dumps(draw(headers)).encode()
    length = draw(st.one_of(st.just(len(header)), st.integers(0, 2**64 - 1), st.integers(0, len(header) + 64)))
    body = draw(st.binary(max_size=256))
    data = struct.pack("<Q", length) + header + body
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    return data if cut is None else data[:cut]


@st.composite
def valid_then_mutated(draw) -> bytes:
    """A valid safetensors file (from the real writer), then a few byte flips, cuts or inserts."""
    import torch
    from safetensors.torch import save as save_bytes

    n = draw(st.integers(1, 3))
    tensors = {f"k{i}": torch.zeros(draw(st.integers(0, 4)), dtype=draw(st.sampled_from([torch.float32, torch.float16,
                                                                                          torch.int8])))
               for i in range(n)}
    data = bytearray(save_bytes(tensors, metadata=draw(st.none() | st.dictionaries(st.text(max_size=5),
                                                                                   st.text(max_size=5), max_size=2))))
    for _ in range(draw(st.integers(0, 4))):
        op, at = draw(st.sampled_from(["flip", "cut", "insert"])), draw(st.integers(0, len(data)))
        if op == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[at:]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@pytest.fixture(scope="module")
def tiny_pipe():
    from personae.models.tiny import build_tiny_pipeline

    return build_tiny_pipeline(0)


def _read_model_file(path: Path, allow_pickle: bool, pipe):
    """Every reader of a model file: the sniffer, shapes, state dicts, and the LoRA and embedding readers."""
    from personae.models.addons import file_sha256, read_embedding, read_lora
    from personae.models.model_files import check_model_file, read_state_dict, tensor_shapes

    kind = check_model_file(path, "model", allow_pickle)
    tensor_shapes(path, kind)
    read_state_dict(path, kind)
    file_sha256(path, skip_safetensors_header=True)
    for reader in (lambda: read_embedding(path, allow_pickle, 32), lambda: read_lora(pipe, path, allow_pickle)):
        try:
            reader()
        except UserError as exc:
            assert str(exc).strip() and "\n\n" not in str(exc)
    return kind


@examples(150)
@given(data=st.one_of(safetensors_files(), valid_then_mutated(), st.binary(max_size=64)),
       suffix=st.sampled_from([".safetensors", ".ckpt", ".bin", ""]))
def test_fuzz_safetensors_headers(workdir, tiny_pipe, data, suffix):
    path = workdir / f"fuzz{suffix}"
    path.write_bytes(data)
    clean_or_user_error(_read_model_file, path, False, tiny_pipe)


@st.composite
def pickle_files(draw) -> bytes:
    import pickle

    import torch

    kind = draw(st.sampled_from(["torch-zip", "torch-legacy", "raw", "bytes"]))
    if kind == "bytes":
        return draw(st.sampled_from([b"PK\x03\x04", b"\x80\x02", b"\x80\x04", b"\x80\x05"])) + draw(st.binary(max_size=200))
    value = draw(st.recursive(st.one_of(st.integers(), st.text(max_size=5), st.none(),
                                        st.builds(torch.zeros, st.integers(0, 3))),
                              lambda inner: st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6))
    buffer = io.BytesIO()
    if kind == "raw":
        pickle.dump(value, buffer, protocol=draw(st.integers(2, 5)))
    else:
        torch.save(value, buffer, _use_new_zipfile_serialization=kind == "torch-zip")
    data = bytearray(buffer.getvalue())
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    return bytes(data)


@examples(80)
@given(data=pickle_files(), suffix=st.sampled_from([".ckpt", ".pt", ".pkl", ""]))
def test_fuzz_pickles_through_the_weights_only_reader(workdir, tiny_pipe, data, suffix):
    path = workdir / f"fuzz-pickle{suffix}"
    path.write_bytes(data)
    clean_or_user_error(_read_model_file, path, True, tiny_pipe)


# -- images ---------------------------------------------------------------------------------------------------------


def _image_bytes(fmt: str, mode: str) -> bytes:
    image = Image.fromarray((np.random.default_rng(0).random((70, 90, 3)) * 255).astype(np.uint8)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


SEEDS = {(fmt, mode): _image_bytes(fmt, mode) for fmt, mode in [
    ("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "I;16"), ("JPEG", "RGB"), ("JPEG", "CMYK"), ("GIF", "P"),
    ("BMP", "RGB"), ("TIFF", "RGB"), ("TIFF", "F"), ("WEBP", "RGB")]}


@st.composite
def mutated_images(draw) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(0, 6))):
        op, at = draw(st.sampled_from(["flip", "cut", "insert", "size"])), draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[at] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[max(at, 8):]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif len(data) > 24:  # a header field (a size in most formats) set to something large
            data[16:24] = struct.pack(">II", draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1)))
    return bytes(data)


@examples(150)
@given(data=st.one_of(mutated_images(), st.binary(max_size=64)), suffix=st.sampled_from([".png", ".jpg", ".gif", ".webp"]))
def test_fuzz_images(workdir, data, suffix):
    from personae.data.images import Rejected, load_image
    from personae.inference.img2img import open_image

    path = workdir / f"fuzz-image{suffix}"
    path.write_bytes(data)
    with within():
        result = load_image(path)  # never raises: an image, or the reason it is rejected
    assert isinstance(result, (Image.Image, Rejected))
    clean_or_user_error(open_image, str(path), "init image", (64, 64))


# -- PNG metadata ---------------------------------------------------------------------------------------------------

INFOTEXT_KEYS = ["Steps", "Sampler", "CFG scale", "Seed", "Size", "Model hash", "Model", "Clip skip",
                 "Denoising strength", "Schedule type", "Lora hashes", "Version"]
infotext_values = st.one_of(st.text(max_size=20), st.integers().map(str), st.floats().map(str),
                            st.tuples(st.integers(-9, 9999), st.integers(-9, 9999)).map(lambda t: f"{t[0]}x{t[1]}"),
                            st.text(max_size=12).map(json.dumps))


@st.composite
def infotexts(draw) -> str:
    prompt = draw(st.text(max_size=40))
    negative = draw(st.none() | st.text(max_size=20))
    pairs = draw(st.lists(st.tuples(st.sampled_from(INFOTEXT_KEYS) | st.text(max_size=8), infotext_values), max_size=8))
    line = draw(st.sampled_from([", ", ",", " , "])).join(f"{k}: {v}" for k, v in pairs)
    return "\n".join([prompt] + ([f"Negative prompt: {negative}"] if negative is not None else []) + [line])


@examples(300)
@given(text=st.one_of(infotexts(), st.text(max_size=200)))
def test_fuzz_parse_parameters(text):
    from personae.media.png import parse_parameters

    with within():
        prompt, negative, params = parse_parameters(text)
    assert isinstance(prompt, str) and isinstance(negative, str)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in params.items())


generate_keys = ["model", "prompt", "negative", "steps", "cfg", "seed", "width", "height", "sampler", "clip_skip",
                 "batch_size", "loras", "embeddings", "allow_pickle", "init_image", "strength", "controls", "version"]


@st.composite
def png_files(draw) -> bytes:
    chunks = {}
    if draw(st.booleans()):
        chunks["parameters"] = draw(st.one_of(infotexts(), st.text(max_size=80)))
    if draw(st.booleans()):
        personae = draw(st.dictionaries(st.sampled_from(generate_keys) | st.text(max_size=6), json_values, max_size=6))
        chunks["personae"] = draw(st.sampled_from([json.dumps(personae), json.dumps(personae)[:-1], "[]", "null"]))
    png = io.BytesIO()
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    compressed = draw(st.booleans())
    for key, value in chunks.items():
        info.add_text(key, value, zip=compressed)
    Image.new("RGB", (4, 4)).save(png, format="PNG", pnginfo=info)
    data = bytearray(png.getvalue())
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(8, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    if draw(st.booleans()):  # a raw chunk with any type, length field and content
        chunk = draw(st.sampled_from([b"tEXt", b"zTXt", b"iTXt", b"IDAT", b"IEND"])) + draw(st.binary(max_size=40))
        length = draw(st.one_of(st.just(len(chunk) - 4), st.integers(0, 2**32 - 1)))
        data[33:33] = struct.pack(">I", length) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return bytes(data)


def _from_png(path: Path):
    from personae.cli.generate_cmd import settings_from_args
    from personae.jobs.generate import settings_from_png

    stored = settings_from_png(path)

    class Args:  # the command line: only --from-png given
        pass

    settings = settings_from_args(Args(), {**stored, "model": stored.get("model") or "some/model"})
    assert settings.allow_pickle is False  # a file never turns pickles on
    return settings


@examples(200)
@given(data=png_files())
def test_fuzz_from_png(workdir, data):
    path = workdir / "fuzz-settings.png"
    path.write_bytes(data)
    clean_or_user_error(_from_png, path)


@st.composite
def comfy_graphs(draw) -> str:
    """ComfyUI graphs as tests/test_comfy_png.py writes them, with nodes, inputs and links changed at random."""
    from test_comfy_png import default_graph, hires_graph, with_lora_chain

    from personae.media.comfy_graph import INPUTS

    graph = draw(st.sampled_from([default_graph, hires_graph, lambda: with_lora_chain(default_graph())]))()
    for _ in range(draw(st.integers(0, 4))):
        node = draw(st.sampled_from(sorted(graph)))
        inputs = graph[node]["inputs"]
        what = draw(st.sampled_from(["value", "link", "class", "drop"]))
        if what in ("value", "link") and inputs:
            key = draw(st.sampled_from(sorted(inputs)))
            inputs[key] = draw(json_values) if what == "value" else [
                draw(st.sampled_from([*sorted(graph), "99"])), draw(st.integers(-1, 3))]
        elif what == "class":
            graph[node]["class_type"] = draw(st.sampled_from([*INPUTS, "FreeU_V2", ""]))
        elif what == "drop" and len(graph) > 1:
            del graph[node]
    text = json.dumps(graph)
    return draw(st.sampled_from([text, text[:-1], text.replace('"inputs"', '"input"', 1)]))


def _from_comfy_png(path: Path):
    from personae.jobs.generate import png_not_applied

    settings = _from_png(path)
    assert all(isinstance(line, str) for line in png_not_applied(path, settings))


@examples(200)
@given(graph=comfy_graphs())
def test_fuzz_from_a_comfyui_png(workdir, graph):
    """A damaged or hand-made ComfyUI graph is read or refused in one paragraph: never a traceback or a hang."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("prompt", graph)
    path = workdir / "fuzz-comfy.png"
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    clean_or_user_error(_from_comfy_png, path)


# -- YAML jobs, suites, storyboards and CSVs -------------------------------------------------------------------------

def _keys(schema) -> list[str]:
    return list(schema.model_fields)


@st.composite
def settings_dicts(draw, schema, depth: int = 0) -> dict:
    """Dicts whose keys are mostly the schema's own (nested sections too), with values of any YAML type."""
    from pydantic import BaseModel

    data = {}
    for key in draw(st.lists(st.sampled_from(_keys(schema)) | st.text(max_size=6), max_size=8, unique=True)):
        field = schema.model_fields.get(key)
        sub = getattr(field, "annotation", None) if field else None
        sub = next((a for a in getattr(sub, "__args__", (sub,)) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is not None and depth < 2 and draw(st.booleans()):
            data[key] = draw(settings_dicts(sub, depth + 1))
        else:
            data[key] = draw(json_values)
    return data


@st.composite
def job_files(draw) -> dict:
    from personae.config.train import TrainJob

    data = draw(settings_dicts(TrainJob))
    if draw(st.booleans()):  # mostly valid skeletons, so the checks behind the schema are reached too
        data = {"base_model": "./nowhere", "method": draw(st.sampled_from(["lora", "dreambooth", "textual_inversion",
                                                                           "pivotal"])),
                "data": {"path": "."}, "output": "./run", **data}
    return data


def _load_job(path: Path, overrides: list[str]):
    from personae.jobs.train import load_job
    from personae.training.setup import preflight

    job = load_job(path, overrides)
    preflight(job)
    return job


@examples(120)
@given(data=job_files(), overrides=st.lists(st.tuples(st.sampled_from(["train.steps", "lora.rank", "base_model",
                                                                       "textual_inversion.tokens", "x.y", ""]),
                                                      st.text(max_size=10)).map(lambda t: f"{t[0]}={t[1]}"),
                                            max_size=3))
def test_fuzz_train_job_files(workdir, data, overrides):
    path = workdir / "job.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    clean_or_user_error(_load_job, path, overrides)


@st.composite
def suite_files(draw) -> dict:
    from personae.config.compare import CompareSuite, Variant

    data = draw(settings_dicts(CompareSuite))
    data.setdefault("base_model", "./nowhere")
    if draw(st.booleans()):
        data["variants"] = draw(st.lists(settings_dicts(Variant), max_size=3))
    if draw(st.booleans()):
        data["sweep"] = draw(st.dictionaries(st.sampled_from(["weight", "cfg", "steps", "sampler", "x"]),
                                             st.lists(json_scalars, max_size=3) | json_values, max_size=2))
    return data


def _load_suite(path: Path):
    from personae.jobs.compare_plan import expand, load_suite

    return expand(load_suite(path))


@examples(120)
@given(data=suite_files())
def test_fuzz_compare_suites(workdir, data):
    path = workdir / "suite.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    clean_or_user_error(_load_suite, path)


@st.composite
def storyboard_files(draw) -> dict:
    from personae.config.storyboard import Scene, StoryboardSettings

    data = draw(settings_dicts(StoryboardSettings))
    data.setdefault("model", "./nowhere")
    if draw(st.booleans()):
        data["scenes"] = draw(st.lists(settings_dicts(Scene), min_size=1, max_size=3))
    if draw(st.booleans()):
        data["template"] = draw(st.text(alphabet="{}:!.[]0 abcdeinoprst_", max_size=24))
    return data


def _load_board(path: Path):
    from personae.jobs.storyboard import _check, load_scenes

    board = load_scenes(path)
    _check(board, None)
    return board


@examples(120)
@given(data=storyboard_files())
def test_fuzz_storyboard_files(workdir, data):
    path = workdir / "board.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    clean_or_user_error(_load_board, path)


@examples(80)
@given(data=st.one_of(st.binary(max_size=120), st.text(max_size=120).map(lambda t: t.encode("utf-8"))),
       name=st.sampled_from(["job.yaml", "suite.yaml", "board.yaml"]))
def test_fuzz_yaml_bytes(workdir, data, name):
    from personae.jobs.compare_plan import load_suite
    from personae.jobs.storyboard import load_scenes
    from personae.jobs.train import load_job

    path = workdir / name
    path.write_bytes(data)
    loader = {"job.yaml": load_job, "suite.yaml": load_suite, "board.yaml": load_scenes}[name]
    clean_or_user_error(loader, path)


csv_cells = st.one_of(st.text(max_size=12), st.integers().map(str), st.sampled_from(["", "close-up", "CU", "wide", ";"]))


@examples(120)
@given(header=st.lists(st.sampled_from(["number", "description", "dialogue", "shot", "angle", "characters", "prompt",
                                        "seed", "x", ""]), max_size=7),
       rows=st.lists(st.lists(csv_cells, max_size=8), max_size=4),
       raw=st.none() | st.binary(max_size=80))
def test_fuzz_storyboard_csv(workdir, header, rows, raw):
    import csv

    path = workdir / "scenes.csv"
    if raw is not None:
        path.write_bytes(raw)
    else:
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows)
    clean_or_user_error(_load_board_csv, path)


def _load_board_csv(path: Path):
    from personae.jobs.storyboard import _check, load_scenes

    board = load_scenes(path, {"model": "./nowhere"})
    _check(board, None)
    return board


# -- command-line flags ---------------------------------------------------------------------------------------------

flag_values = st.one_of(st.text(max_size=12), st.integers(-5, 10**6).map(str), st.floats().map(str),
                        st.sampled_from(["nan", "inf", "-1", "0", "1e9", "x:0.5", "canny:x.png:nan", "a=b", "=", ":"]))
GENERATE_FLAGS = ["--model", "--prompt", "--negative", "--steps", "--cfg", "--seed", "--width", "--height", "--sampler",
                  "--clip-skip", "--lora", "--embedding", "--device", "--dtype", "--batch-size", "--batch-count",
                  "--strength", "--mask-blur", "--control", "--controlnet", "--control-option", "--control-start",
                  "--control-end", "--frames", "--fps", "--motion-scale", "--context", "--context-stride"]


def _settings_from_flags(command: str, argv: list[str]):
    """Parse like the CLI, then build and check the settings (everything before a model would load)."""
    from personae.cli import animate_cmd, generate_cmd
    from personae.cli.big_jobs import estimate_seconds
    from personae.cli.main import build_parser

    try:
        args = build_parser().parse_args([command, *argv])
    except SystemExit as exc:  # argparse's usage error: one line, exit 2, no traceback
        assert exc.code == 2
        return None
    settings = (generate_cmd.settings_from_args(args) if command == "generate" else animate_cmd.settings_from_args(args))
    estimate_seconds(settings.model, 1, settings.steps, settings.width, settings.height, settings.cfg, "cpu")
    return settings


@examples(200)
@given(command=st.sampled_from(["generate", "animate"]),
       flags=st.lists(st.tuples(st.sampled_from(GENERATE_FLAGS), flag_values), max_size=7))
def test_fuzz_generate_and_animate_flags(command, flags):
    argv = ["--model", "./tiny", "--prompt", "x", "--motion-adapter", "./m"] if command == "animate" else \
        ["--model", "./tiny", "--prompt", "x"]
    for flag, value in flags:
        argv += [flag, value]
    with contextlib.redirect_stderr(io.StringIO()):  # argparse prints its usage line
        clean_or_user_error(_settings_from_flags, command, argv)


PREPARE_FLAGS = ["--crop", "--resolution", "--bucket-step", "--face-margin", "--min-side", "--max-aspect",
                 "--background", "--trigger", "--class-word", "--template", "--append", "--folder-tokens",
                 "--keep-tokens"]


@pytest.fixture(scope="module")
def photos(workdir):
    folder = workdir / "photos"
    (folder / "10_sks dog").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "10_sks dog/b.jpg"):
        Image.fromarray((rng.random((72, 96, 3)) * 255).astype(np.uint8)).save(folder / name)
    (folder / "a.txt").write_text("a dog, on_grass, a dog")
    return folder


@examples(40)
@given(flags=st.lists(st.tuples(st.sampled_from(PREPARE_FLAGS),
                                st.one_of(flag_values, st.sampled_from(["{caption}", "{nope}", "{caption:>9}", "{",
                                                                        "face", "none", "32", "4096", "red",
                                                                        "#12345", "a=<t>,b", "0,0,0"]))),
                      max_size=4))
def test_fuzz_prepare_flags_end_to_end(photos, workdir, flags):
    from personae.cli.main import main

    argv = ["prepare", str(photos), str(workdir / "prepared"), "--quiet"]
    for flag, value in flags:
        argv += [flag, value]
    stderr = io.StringIO()
    with within(), contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's usage error
            code = exc.code
    err = stderr.getvalue()
    assert code in (0, 2), err
    assert "Traceback" not in err and "this is a bug" not in err, err


@examples(80)
@given(assignments=st.lists(st.tuples(st.sampled_from(["steps", "cfg", "seeds", "sweep", "variants", "width", "prompts",
                                                       "metrics.clip", "sweep.cfg", "token", "class", "x"]),
                                      st.one_of(flag_values, st.sampled_from(["[1, 2]", "{a: 1}", "[nan]", "[]", "null",
                                                                              "{cfg: [a]}", "[[1]]"])))
                            .map(lambda t: f"{t[0]}={t[1]}"), max_size=4))
def test_fuzz_compare_set_overrides(workdir, assignments):
    from personae.config.base import apply_overrides
    from personae.jobs.compare_plan import expand, load_suite

    path = workdir / "set-suite.yaml"
    path.write_text(yaml.safe_dump({"base_model": "./nowhere", "seeds": [0]}))

    def load():
        return expand(load_suite(path, apply_overrides({}, assignments)))

    clean_or_user_error(load)


def test_the_fuzz_harness_catches_hangs():
    """The hang guard itself works (so 'zero hangs' means something)."""
    import time

    with pytest.raises(Hang):
        with within(0.2):
            time.sleep(5)
    assume(True)
