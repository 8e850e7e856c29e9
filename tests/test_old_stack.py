"""Every export kind loads in an older stack (transformers 4.46, diffusers 0.32, peft 0.14) with the same image.

ComfyUI, A1111 extensions and older notebooks pin transformers 4.x and diffusers 0.3x. A folder whose
text encoder loads "silently random" there (transformers 4 reads un-prefixed names as missing and
initialises them) or a LoRA whose alpha is ignored would be the worst kind of bug: a picture, just the
wrong one. So short LoRA (with text encoder), pivotal, textual-inversion and DreamBooth runs are
exported here, and tests/compat/render.py (plain diffusers, no personae) renders every export in this
stack and in the old one (built once by scripts/setup_old_stack.sh from locks/old-stack.txt and cached).
The world motion adapter's files (adapter folder, kohya LoRA) are rendered as clips the same way by
tests/compat/animate.py and compared with `personae animate`'s (without the motion condition, personae's own file).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from train_helpers import prepared_subject, write_job

from personae.jobs.train import load_job, run_training

pytestmark = pytest.mark.slow  # models, training or CLI subprocesses: the full tier only

ROOT = Path(__file__).resolve().parents[1]
RENDER = ROOT / "tests" / "compat" / "render.py"
ANIMATE = ROOT / "tests" / "compat" / "animate.py"
TOKENS = [{"token": "<sks>", "init_word": "star", "vectors": 2}]
QUICK = {"steps": 2, "batch_size": 2, "learning_rate": 5e-3, "seed": 0, "validation": {"steps": 2}}
RUNS = {
    # LoCon-style resnet convs too; not conv_in / conv_out / time_embedding, whose kohya keys diffusers 0.32 (like
    # kohya sd-scripts) skips without a word: A1111 and ComfyUI apply them (see docs in README, "Sharing")
    "lora": {"lora": {"rank": 4, "alpha": 2, "text_encoder": True, "text_encoder_rank": 2,
                      "target_modules": ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "proj_in"]}},
    "pivotal": {"pivotal": {"tokens": TOKENS}, "lora": {"rank": 4, "alpha": 8, "text_encoder": True}},
    "textual_inversion": {"textual_inversion": {"tokens": TOKENS}},
    "dreambooth": {"dreambooth": {"train_text_encoder": True}},
}
PROMPT = "a photo of <sks> star"


@pytest.fixture(scope="module")
def old_python() -> str:
    venv = Path(os.environ.get("PERSONAE_OLD_STACK_VENV", Path.home() / ".cache" / "personae" / "old-stack-venv"))
    subprocess.run(["bash", str(ROOT / "scripts" / "setup_old_stack.sh"), str(venv)], check=True, cwd=ROOT)
    return str(venv / "bin" / "python")


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("old-stack")
    prepared = prepared_subject(root, count=2, trigger="<sks>")
    runs = {}
    for method, sections in RUNS.items():
        job = load_job(write_job(root, base_model=str(tiny_model[0]), method=method, data=prepared,
                                 output=root / method, train=QUICK, trigger="<sks>", **sections))
        run_training(job)
        runs[method] = root / method
    return root, runs


def _cases(tiny: Path, runs: dict[str, Path], world: Path) -> list[dict]:
    base = {"model": str(tiny), "prompt": PROMPT}
    lora, pivotal, ti, db = runs["lora"], runs["pivotal"], runs["textual_inversion"], runs["dreambooth"]
    return [
        dict(base, name="base model folder"),
        dict(base, name="world model folder", model=str(world), prompt="a red circle on a blue background, close-up"),
        dict(base, name="lora kohya", loras=[str(lora / "lora.safetensors")]),
        dict(base, name="lora diffusers", loras=[str(lora / "lora_diffusers")]),
        dict(base, name="pivotal kohya + a1111 embedding", loras=[str(pivotal / "lora.safetensors")],
             embeddings=[[str(pivotal / "embeddings" / "sks.safetensors"), "<sks>"]]),
        dict(base, name="pivotal diffusers", loras=[str(pivotal / "lora_diffusers")],
             embeddings=[[str(pivotal / "embeddings" / "sks.diffusers.safetensors"), "<sks>"]]),
        dict(base, name="textual inversion a1111", embeddings=[[str(ti / "embeddings" / "sks.safetensors"), "<sks>"]]),
        dict(base, name="textual inversion diffusers",
             embeddings=[[str(ti / "embeddings" / "sks.diffusers.safetensors"), "<sks>"]]),
        dict(base, name="dreambooth folder", model=str(db / "model")),
        dict(base, name="dreambooth single file", model=str(db / "model.safetensors"), config=str(tiny)),
    ]


def _v_prediction_copy(model: Path, out: Path) -> Path:
    """The model folder with a v-prediction, zero-terminal-SNR scheduler config."""
    import shutil

    shutil.copytree(model, out, dirs_exist_ok=True)
    file = out / "scheduler" / "scheduler_config.json"
    config = json.loads(file.read_text())
    config.update(prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing",
                  _use_default_values=[])
    file.write_text(json.dumps(config))
    return out


def _render(python: str, cases: list[dict], out: Path, script: Path = RENDER) -> tuple[dict[str, np.ndarray], dict]:
    cases_file = out.with_suffix(".cases.json")
    cases_file.write_text(json.dumps(cases))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH="")
    r = subprocess.run([python, str(script), str(cases_file), str(out)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    with np.load(out) as images:
        return {k: images[k] for k in images.files}, json.loads(out.with_suffix(".json").read_text())


def test_every_export_renders_the_same_in_the_old_stack(exports, tiny_model, old_python):
    root, runs = exports
    for name in ("lora", "textual_inversion"):
        assert (runs[name] / "run.json").is_file()
    from personae.config.merge import MergeSettings
    from personae.jobs.merge import run_merge
    from personae.world.model import write_world_model

    cases = _cases(tiny_model[0], runs, write_world_model(root / "world"))
    # personae merge's files: an A1111 Checkpoint Merger file (original layout) and a LoRA baked into a folder
    merged = run_merge([str(tiny_model[0]), str(runs["dreambooth"] / "model")], root / "merged.safetensors",
                       MergeSettings(multiplier=0.5), overwrite=True)
    baked = run_merge([str(tiny_model[0])], root / "baked", MergeSettings(method="none", loras=[
        str(runs["lora"] / "lora.safetensors")]), overwrite=True)
    # a v-prediction, zero-SNR model's file carries ComfyUI's v_pred / ztsnr keys: loaders that do not read them pass
    # them by (the scheduler comes from the config folder, as the .yaml gives it to A1111)
    v_model = _v_prediction_copy(tiny_model[0], root / "tiny-v")
    v_merged = run_merge([str(v_model)], root / "v.safetensors", MergeSettings(method="none", half=True),
                         overwrite=True)
    cases += [dict(cases[0], name="merged single file", model=str(merged), config=str(tiny_model[0])),
              dict(cases[0], name="lora baked into a folder", model=str(baked)),
              dict(cases[0], name="v-prediction single file with its marker keys", model=str(v_merged),
                   config=str(v_model))]
    for case in cases:  # every file the case names exists: a renamed export must not make a case vanish
        for path in [case["model"], *case.get("loras", []), *(e[0] for e in case.get("embeddings", []))]:
            assert Path(path).exists(), path
    new, new_report = _render(sys.executable, cases, root / "new.npz")
    old, old_report = _render(old_python, cases, root / "old.npz")
    assert old_report["versions"]["transformers"].startswith("4.") and old_report["versions"]["diffusers"].startswith("0.32")
    # no text-encoder weight is missing (initialised at random) in either stack, for any folder we wrote
    assert not any(old_report["missing"].values()), old_report["missing"]
    assert not any(new_report["missing"].values()), new_report["missing"]
    # the diffusers-layout header is one that older peft accepts
    headers = [h for hs in old_report["headers"].values() for h in hs]
    assert headers and all(h.endswith(": ok") for h in headers), old_report["headers"]
    diffs = {name: float(np.abs(new[name] - old[name]).max()) for name in new}
    assert max(diffs.values()) <= 1e-4, diffs
    changed = {name: float(np.abs(new[name] - new["base model folder"]).max()) for name in new}
    assert all(v > 1e-3 for k, v in changed.items() if k not in ("base model folder", "world model folder")), changed


def test_the_world_motion_files_give_animates_clip_in_both_stacks(tmp_path, old_python):
    """The motion adapter folder and its kohya LoRA, as `personae model world-motion` writes them, on the
    zero-terminal-SNR model they learnt on (`personae model world-zero-snr`: v-prediction, rescaled betas), loaded by
    plain diffusers' AnimateDiffPipeline (load_lora_weights, enable_free_noise for a 32-frame clip) give `personae
    animate`'s clip, in this stack and in the old one. The motion condition beside them is personae's own file (no
    other loader knows it: docs/world.md); both sides draw without it here, from a copy of the folder without the
    file, and with it personae's clip differs."""
    import shutil

    from personae.config.animate import AnimateSettings
    from personae.inference.animate import animate
    from personae.inference.motion_condition import CONDITION_FILE
    from personae.world.model import write_world_motion, write_world_zero_snr

    world, shipped = write_world_zero_snr(tmp_path / "world-zero-snr"), write_world_motion(tmp_path / "world-motion")
    motion = tmp_path / "world-motion-plain"
    shutil.copytree(shipped, motion)
    (motion / CONDITION_FILE).unlink()
    lora = motion / "motion-lora.safetensors"
    growing = {"model": str(world), "adapter": str(motion), "prompt": "a white square on a red background, medium "
               "shot, growing", "seed": 3, "steps": 4, "frames": 16}
    cases = [dict(growing, name="adapter"), dict(growing, name="adapter + lora", loras=[str(lora)]),
             dict(growing, name="32 frames in windows", prompt="a black circle on a green background, full shot, "
                  "moving up", seed=5, steps=3, frames=32, context=16, stride=4)]
    new, _ = _render(sys.executable, cases, tmp_path / "new.npz", ANIMATE)
    old, old_report = _render(old_python, cases, tmp_path / "old.npz", ANIMATE)
    assert old_report["versions"]["diffusers"].startswith("0.32")
    for case in cases:
        settings = AnimateSettings(
            model=case["model"], motion_adapter=case["adapter"], prompt=case["prompt"], seed=case["seed"],
            steps=case["steps"], cfg=4.0, sampler="DDIM", clip_skip=1, frames=case["frames"], device="cpu",
            context=case.get("context", 16), context_stride=case.get("stride", 4),
            loras=[{"path": p, "weight": 1.0} for p in case.get("loras", [])],
            embeddings=[{"path": p, "token": t} for p, t in case.get("embeddings", [])])
        ours = np.stack([np.asarray(f, dtype=np.float32) / 255 for f in animate(settings).frames])
        name = case["name"]
        assert ours.shape == new[name].shape == old[name].shape == (case["frames"], 32, 32, 3), name
        assert np.abs(new[name] - old[name]).max() <= 1e-4, name
        assert np.abs(ours - new[name]).max() <= 1 / 255, name  # animate writes 8-bit frames: rounding only
    # each file changes the clip: a LoRA that failed to load would leave the adapter's clip; so does the condition
    assert np.abs(new["adapter + lora"] - new["adapter"]).max() > 0.1
    settings = AnimateSettings(model=str(world), motion_adapter=str(shipped), prompt=growing["prompt"], seed=3, steps=4,
                               cfg=4.0, sampler="DDIM", clip_skip=1, frames=16, device="cpu",
                               loras=[{"path": str(lora), "weight": 1.0}])
    conditioned = np.stack([np.asarray(f, dtype=np.float32) / 255 for f in animate(settings).frames])
    assert np.abs(conditioned - new["adapter + lora"]).max() > 0.1


def test_the_world_controlnet_gives_generates_picture_in_both_stacks(tmp_path, old_python):
    """The world ControlNet folder, as `personae model world-controlnet` writes it, in plain diffusers'
    StableDiffusionControlNetPipeline with a canny map drawn by `personae detect`, gives `personae generate --control
    raw:MAP`'s picture, in this stack and in the old one. At the map's own size (32 px): when the output is larger,
    personae stretches the map bilinearly and diffusers with Lanczos, so the two differ there by design."""
    from personae.config.generate import GenerateSettings
    from personae.data.control import detect_control
    from personae.inference.txt2img import txt2img
    from personae.world.model import write_world_controlnet, write_world_model
    from personae.world.placed import Placed

    world, controlnet = write_world_model(tmp_path / "world"), write_world_controlnet(tmp_path / "world-controlnet")
    control_map = tmp_path / "map.png"
    shape = Placed("ring", "red", "blue", 10.0, (8.0, 23.0)).image()
    detect_control("canny", shape, {}, where="test").save(control_map)
    prompt = "a red ring on a blue background, full shot"
    cases = [{"name": "world", "model": str(world), "prompt": prompt, "size": 32},
             {"name": "world controlnet", "model": str(world), "prompt": prompt, "size": 32,
              "controlnet": str(controlnet), "control_image": str(control_map)}]
    new, _ = _render(sys.executable, cases, tmp_path / "new.npz")
    old, old_report = _render(old_python, cases, tmp_path / "old.npz")
    assert old_report["versions"]["diffusers"].startswith("0.32")
    for case in cases:
        unit = {"type": "raw", "image": str(control_map), "model": str(controlnet)}
        controls = [unit] if "controlnet" in case else []
        settings = GenerateSettings(model=str(world), prompt=prompt, negative="", steps=3, cfg=5.0, sampler="DDIM",
                                    seed=0, width=32, height=32, clip_skip=1, device="cpu", controls=controls)
        ours = np.asarray(txt2img(settings)[0].image, dtype=np.float32) / 255
        name = case["name"]
        assert ours.shape == new[name].shape == old[name].shape == (32, 32, 3), name
        assert np.abs(new[name] - old[name]).max() <= 1e-4, name
        assert np.abs(ours - new[name]).max() <= 1 / 255, name  # generate writes 8-bit pictures: rounding only
    assert np.abs(new["world controlnet"] - new["world"]).max() > 0.1  # the ControlNet acts
