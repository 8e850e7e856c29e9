"""A model given by hub id is downloaded through the real path (diffusers -> huggingface_hub -> HTTP), from a hub
on 127.0.0.1 (tests/fake_hub.py) serving the tiny model's folder: the download shows its progress at a terminal,
is silent under --quiet, and what it cached then works offline, file for file the folder that was served.

Before this test, personae's library quieting (transformers' switch for its own load bars turns off the hub's bars
as well) hid the download: a first `--model stable-diffusion-v1-5/stable-diffusion-v1-5` sat on "loading hub ..."
for the minutes 4 GB take, with nothing moving."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import shutil
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
from fake_hub import FakeHub
from PIL import Image

REPO = "someone/tiny-sd"


def at_terminal(args: list, env: dict[str, str], timeout: float = 300) -> tuple[int, str]:
    """`personae ARGS` with a terminal (100 columns) as stdin, stdout and stderr; its exit code and what it drew."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # no size: tqdm draws empty bars
    proc = subprocess.Popen([sys.executable, "-m", "personae", *map(str, args)], stdin=slave, stdout=slave,
                            stderr=slave, env=env, close_fds=True)
    os.close(slave)
    out = bytearray()
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the other end closed: the process is gone
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    return proc.wait(timeout=timeout), out.decode(errors="replace")


def user_env(tmp_path: Path, hub_url: str, hf_home: str, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}  # no HF_HUB_OFFLINE
    env.update(HF_ENDPOINT=hub_url, HF_HOME=str(tmp_path / hf_home), OMP_NUM_THREADS="1", **extra)
    return env


def fetched(hub: FakeHub) -> list[str]:
    """The files downloaded from `hub` ("owner/name:path"), one entry per GET."""
    parts = [r.split(" ", 1)[1].split("/", 5) for r in hub.requests if r.startswith("GET ") and "/resolve/" in r]
    return [f"{p[1]}/{p[2]}:{p[5]}" for p in parts]  # /owner/name/resolve/COMMIT/path


def test_a_hub_id_downloads_with_its_progress_shown_then_works_offline(tmp_path, tiny_model):
    folder = tmp_path / "repo"  # the tiny model as a hub repository holds it (without personae's own record)
    shutil.copytree(tiny_model[0], folder, ignore=shutil.ignore_patterns(".personae.json"))
    draw = ["generate", "--model", REPO, "--prompt", "a photo of a cat", "--steps", 2, "--seed", 3, "--width", 64,
            "--height", 64]
    with FakeHub({REPO: folder}) as hub:
        code, shown = at_terminal(draw + ["--out", tmp_path / "first"], user_env(tmp_path, hub.url, "hf"))
        assert code == 0, shown
        files = hub.files(REPO)
        # the hub's own bars: the files, then the bytes (huggingface_hub draws them at a terminal only)
        assert f"Fetching {len(files)} files" in shown and "100%" in shown, shown[-2000:]
        assert sorted(fetched(hub)) == [f"{REPO}:{name}" for name in files], hub.requests  # each file once

        hub.requests.clear()
        code, quiet = at_terminal(draw + ["--out", tmp_path / "quiet", "--quiet"], user_env(tmp_path, hub.url, "hf2"))
        assert code == 0, quiet
        assert "Fetching" not in quiet and "%|" not in quiet, quiet  # --quiet: no bar, the download's neither
        assert sorted(fetched(hub)) == [f"{REPO}:{name}" for name in files], hub.requests

    # the cache is the folder that was served, file for file, and draws the same picture with no hub at all
    snapshot = next((tmp_path / "hf/hub").glob("models--someone--tiny-sd/snapshots/*"))
    assert sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()) == files
    assert all((snapshot / name).read_bytes() == (folder / name).read_bytes() for name in files)
    code, offline = at_terminal(draw + ["--out", tmp_path / "offline"],
                                user_env(tmp_path, "http://127.0.0.1:9", "hf", HF_HUB_OFFLINE="1"))
    assert code == 0, offline
    pictures = [np.asarray(Image.open(next((tmp_path / name).glob("*.png")))) for name in ("first", "quiet", "offline")]
    assert np.array_equal(pictures[0], pictures[1]) and np.array_equal(pictures[0], pictures[2])


def test_a_controlnet_in_a_subfolder_and_a_motion_adapter_download_from_the_hub(tmp_path, tiny_model):
    """The add-ons' hub paths: a ControlNet named owner/name/subfolder (as CrucibleAI/ControlNetMediaPipeFace/
    diffusion_sd15, the default face ControlNet) and a motion adapter, each fetched once, then the same outputs as
    from the folders that were served."""
    from personae.models.controlnet import write_tiny_controlnet
    from personae.models.tiny_motion import write_tiny_motion_adapter

    served = tmp_path / "served"
    write_tiny_controlnet(tmp_path / "cn", base=tiny_model[0])
    shutil.copytree(tmp_path / "cn", served / "cn/diffusion_sd15", ignore=shutil.ignore_patterns(".personae.json"))
    write_tiny_motion_adapter(tmp_path / "motion")
    shutil.copytree(tmp_path / "motion", served / "motion", ignore=shutil.ignore_patterns(".personae.json"))
    Image.fromarray(np.kron(np.eye(4, dtype=np.uint8) * 255, np.ones((16, 16), np.uint8))).convert("RGB").save(
        tmp_path / "edges.png")
    draw = ["generate", "--model", tiny_model[0], "--prompt", "a photo of a cat", "--steps", 2, "--seed", 3, "--width",
            64, "--height", 64, "--control", f"canny:{tmp_path / 'edges.png'}"]
    clip = ["animate", "--model", tiny_model[0], "--prompt", "a cat", "--steps", 2, "--seed", 3, "--width", 64,
            "--height", 64, "--frames", 4]
    with FakeHub({"someone/cn": served / "cn", "someone/motion": served / "motion"}) as hub:
        env = user_env(tmp_path, hub.url, "hf")
        code, shown = at_terminal(draw + ["--controlnet", "canny=someone/cn/diffusion_sd15", "--out", tmp_path / "a"],
                                  env)
        assert code == 0, shown
        code, shown = at_terminal(clip + ["--motion-adapter", "someone/motion", "--frames-dir", tmp_path / "fa",
                                          "--out", tmp_path / "a.gif"], env)
        assert code == 0, shown
    weights = ("config.json", "diffusion_pytorch_model.safetensors")
    assert sorted(fetched(hub)) == sorted([f"someone/cn:diffusion_sd15/{name}" for name in weights] +
                                          [f"someone/motion:{name}" for name in weights]), hub.requests
    # the same picture and frames as from the folders themselves
    assert at_terminal(draw + ["--controlnet", f"canny={tmp_path / 'cn'}", "--out", tmp_path / "b"], env)[0] == 0
    assert at_terminal(clip + ["--motion-adapter", tmp_path / "motion", "--frames-dir", tmp_path / "fb", "--out",
                               tmp_path / "b.gif"], env)[0] == 0
    for a, b in [("a", "b"), ("fa", "fb")]:
        left, right = sorted((tmp_path / a).glob("*.png")), sorted((tmp_path / b).glob("*.png"))
        assert len(left) == len(right) >= 1
        assert all(np.array_equal(np.asarray(Image.open(x)), np.asarray(Image.open(y))) for x, y in zip(left, right))


def test_captioners_download_from_the_hub(tmp_path):
    """`personae prepare --captioner` by hub id: a WD14 tagger (two files fetched by name) and a transformers
    captioner (Florence-2: its config read first, then the processor's and the model's files), the same captions
    as from the folders that were served."""
    from test_captioners import _write_images, write_florence, write_tagger

    write_tagger(tmp_path / "tagger")
    write_florence(tmp_path / "florence")
    _write_images(tmp_path / "src")
    prepare = ["prepare", tmp_path / "src", "--resolution", 64]
    captions = {}
    with FakeHub({"someone/tagger": tmp_path / "tagger", "someone/florence": tmp_path / "florence"}) as hub:
        env = user_env(tmp_path, hub.url, "hf")
        for name, spec in [("hub-tags", "wd14:someone/tagger"), ("folder-tags", f"wd14:{tmp_path / 'tagger'}"),
                           ("hub-words", "someone/florence"), ("folder-words", str(tmp_path / "florence"))]:
            code, shown = at_terminal(prepare + [tmp_path / name, "--captioner", spec], env)
            assert code == 0, shown
            captions[name] = {p.name: p.read_text() for p in (tmp_path / name / "images").glob("*.txt")}
        got = fetched(hub)
    assert sorted(n for n in got if n.startswith("someone/tagger:")) == ["someone/tagger:model.onnx",
                                                                           "someone/tagger:selected_tags.csv"]
    assert "someone/florence:config.json" in got and any(n.endswith(".safetensors") for n in got), got
    assert len(got) == len(set(got)), got  # nothing fetched twice
    assert captions["hub-tags"] == captions["folder-tags"] and len(captions["hub-tags"]) == 2
    assert captions["hub-words"] == captions["folder-words"] and len(captions["hub-words"]) == 2


def test_metric_models_download_whole_from_the_hub_then_load_offline(tmp_path, monkeypatch):
    """compare's CLIP and DINO by hub id, as a user with network first runs them: the weights, the image processor
    and the tokenizer all fetched, then the same scores offline as from the folders.

    Before, each part looked in the cache alone: the model's files fetched, the image processor found the half
    cached repo and failed to load from it (OSError), on every run after the first too."""
    import huggingface_hub.constants as constants
    import transformers.utils.hub as transformers_hub
    from test_metrics import _images, _samples
    from tiny_metric_models import write_tiny_clip, write_tiny_dino

    from personae.config.compare import MetricSettings
    from personae.evaluation.metrics import build_metrics
    from personae.evaluation.model_metrics import load_clip, load_dino

    write_tiny_clip(tmp_path / "clip")
    write_tiny_dino(tmp_path / "dino")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    only = dict(pixel=False, ssim=False, diversity=False)
    gens, refs = _images(2, 0), _images(2, 1)

    def scores(clip, dino):
        load_clip.cache_clear()
        load_dino.cache_clear()
        metrics, skipped = build_metrics(MetricSettings(**only, clip=clip, dino=dino))
        assert skipped == {}, skipped
        return [m.score(_samples(gens, ["a", "b"]), refs) for m in metrics]

    with FakeHub({"someone/clip": tmp_path / "clip", "someone/dino": tmp_path / "dino"}) as hub:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            hub.url + "/{repo_id}/resolve/{revision}/{filename}")
        # transformers keeps one HfApi per process, made with the endpoint of its time: one an earlier test made
        # would ask huggingface.co for the tokenizer's chat templates, and back off 23 s per tokenizer with no network
        monkeypatch.setattr(transformers_hub, "_hf_api", None)
        from_hub = scores("someone/clip", "someone/dino")
        got = fetched(hub)
    assert {"someone/clip:preprocessor_config.json", "someone/clip:model.safetensors",
            "someone/dino:preprocessor_config.json", "someone/dino:model.safetensors"} <= set(got), got
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert scores("someone/clip", "someone/dino") == from_hub == scores(str(tmp_path / "clip"), str(tmp_path / "dino"))


REFUSALS = """
import json, sys
from personae.errors import UserError
from personae.models.controlnet import load_controlnet, resolve_controlnet
from personae.models.motion import load_motion_adapter, resolve_motion_adapter
from personae.models.resolve import load_pipeline, resolve_model
from personae.models.captioners import TransformersCaptioner
from personae.models.wd14 import tagger_files
said = {}
for name, load in [("controlnet", lambda: load_controlnet(resolve_controlnet("someone/gated-cn/diffusion_sd15"))),
                   ("motion", lambda: load_motion_adapter(resolve_motion_adapter("someone/gated-motion"))),
                   ("tagger", lambda: tagger_files("someone/gated-tagger")),
                   ("captioner", lambda: TransformersCaptioner("someone/gated-captioner")),
                   ("missing", lambda: load_pipeline(resolve_model("someone/no-such-model"))),
                   ("files", lambda: load_pipeline(resolve_model("someone/checkpoints")))]:
    try:
        load()
        said[name] = None
    except UserError as exc:
        said[name] = [str(exc), exc.fix]
print(json.dumps(said))
"""


def test_what_the_hub_refuses_is_said_as_the_users_to_act_on(tmp_path, tiny_model):
    """A gated repository (its model info public, its files only for a logged-in account that accepted its terms,
    as CompVis/stable-diffusion-v1-4 is) and a misspelt or private one: one paragraph that says which, and how to
    log in; a repository of checkpoint files, not a diffusers folder: which file it lacks. Before, a gated model
    ended in "this is a bug in personae" (GatedRepoError, or diffusers' OSError around it for a ControlNet or a
    motion adapter)."""
    repo = tmp_path / "repo"
    shutil.copytree(tiny_model[0], repo, ignore=shutil.ignore_patterns(".personae.json"))
    gated = {"someone/gated-sd": repo, "someone/gated-cn": repo, "someone/gated-motion": repo,
             "someone/gated-tagger": repo, "someone/gated-captioner": repo}
    (tmp_path / "checkpoints").mkdir()  # a repository of single-file checkpoints, no diffusers folder
    shutil.copy(tiny_model[1], tmp_path / "checkpoints/model.safetensors")
    with FakeHub({**gated, "someone/checkpoints": tmp_path / "checkpoints"}, gated=set(gated)) as hub:
        env = user_env(tmp_path, hub.url, "hf")
        done = subprocess.run([sys.executable, "-m", "personae", "generate", "--model", "someone/gated-sd", "--prompt",
                               "x", "--out", tmp_path / "out"], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 2, done.stderr
        said = " ".join(done.stderr.split())
        assert 'Cannot load model "someone/gated-sd" from the Hugging Face hub: it is gated' in said, said
        assert f"Accept them at {hub.url}/someone/gated-sd" in said and "`hf auth login`" in said, said
        assert "bug" not in said and "Traceback" not in done.stderr and not (tmp_path / "out").exists()
        others = subprocess.run([sys.executable, "-c", REFUSALS], env=env, capture_output=True, text=True,
                                timeout=300)
    assert others.returncode == 0, others.stderr
    said = json.loads(others.stdout.splitlines()[-1])
    for name, what in [("controlnet", 'ControlNet "someone/gated-cn"'), ("tagger", 'the tagger "someone/gated-tagger"'),
                       ("motion", 'motion adapter "someone/gated-motion"'),
                       ("captioner", 'captioner "someone/gated-captioner"')]:
        assert said[name] and said[name][0].startswith(f"Cannot load {what} from the Hugging Face hub: it is gated"), \
            said
        assert "`hf auth login`" in said[name][1], said
    assert said["missing"] and "the hub has no repository of that name" in said["missing"][0], said
    assert "for a private repository, log in" in said["missing"][1], said
    assert said["files"] and "the repository has no model_index.json" in said["files"][0], said
    assert "Download the file you want from it and pass the local folder" in said["files"][1], said


def test_a_download_that_breaks_off_is_said_and_the_next_run_finishes_it(tmp_path, tiny_model):
    """The network drops in the middle of each large file: one paragraph that says so and to run the command
    again (before: "this is a bug in personae", httpx2's RemoteProtocolError); run again, it finishes and draws."""
    repo = tmp_path / "repo"
    shutil.copytree(tiny_model[0], repo, ignore=shutil.ignore_patterns(".personae.json"))
    draw = [sys.executable, "-m", "personae", "generate", "--model", REPO, "--prompt", "x", "--steps", 1, "--width",
            64, "--height", 64, "--quiet", "--out", tmp_path / "out"]
    with FakeHub({REPO: repo}, cut=100_000) as hub:
        done = subprocess.run(list(map(str, draw)), env=user_env(tmp_path, hub.url, "hf"), capture_output=True,
                              text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    said = " ".join(done.stderr.split())
    assert f'Cannot load model "{REPO}" from the Hugging Face hub: the download broke off' in said, said
    assert "Run the command again once the network is back" in said and "bug" not in said, said
    assert not (tmp_path / "out").exists()
    with FakeHub({REPO: repo}) as hub:
        done = subprocess.run(list(map(str, draw)), env=user_env(tmp_path, hub.url, "hf"), capture_output=True,
                              text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "out").glob("*.png"))) == 1
