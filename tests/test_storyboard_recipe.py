"""The documented shot-token recipe (examples/storyboard) runs as written: prepare -> pivotal -> storyboard."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from personae.data.samples import write_shot_frames

pytestmark = pytest.mark.slow  # models, training or CLI subprocesses: the full tier only

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "storyboard"


def personae(*args, cwd):
    r = subprocess.run([sys.executable, "-m", "personae", *map(str, args)], capture_output=True, text=True, cwd=cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_shot_token_recipe(tmp_path, tiny_model):
    (tmp_path / "tiny").symlink_to(tiny_model[0])
    shutil.copytree(EXAMPLE, tmp_path / "examples" / "storyboard")
    write_shot_frames(tmp_path / "frames", per_shot=2)
    personae("prepare", "frames", "prepared-shots", "--resolution", 64,
             "--folder-tokens", "close_up=<cu_trg>,medium=<ms_trg>,full=<fs_trg>", "--append", ", storyboard sketch",
             "--quiet", cwd=tmp_path)
    captions = [json.loads(line)["caption"] for line in (tmp_path / "prepared-shots/manifest.jsonl").read_text().splitlines()]
    assert sorted(c.split(",")[0] for c in captions) == ["<cu_trg>"] * 2 + ["<fs_trg>"] * 2 + ["<ms_trg>"] * 2
    personae("train", "examples/storyboard/job.yaml", "--set", "train.steps=20", "--set", "train.validation.steps=2",
             "--quiet", cwd=tmp_path)
    run = tmp_path / "runs/storyboard"
    for name in ["lora.safetensors", "embeddings/cu_trg.safetensors", "embeddings/ms_trg.safetensors",
                 "embeddings/fs_trg.safetensors"]:
        assert (run / name).is_file(), name
    assert all(c["max_abs_diff"] <= 1e-4 for c in json.loads((run / "run.json").read_text())["checks"])
    personae("storyboard", "examples/storyboard/scenes.yaml", "--out", "board", "--quiet", cwd=tmp_path)
    record = json.loads((tmp_path / "board/storyboard.json").read_text())
    prompts = {p["number"]: p["prompt"] for p in record["panels"]}
    assert prompts[1].startswith("storyboard sketch, <cu_trg> close-up shot")
    assert "<fs_trg> full shot" in prompts[2] and "<ms_trg> medium shot" in prompts[3]
    assert (tmp_path / "board/sheet.pdf").is_file()
