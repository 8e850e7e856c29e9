"""Shared helpers for training tests: a prepared subject set, job files, and the learning measure."""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from diffusers import DDIMScheduler
from PIL import Image

from personae.data.dataset import examples_from_prepared, load_pixels
from personae.evaluation.pixels import nearest_distances

# LoRA settings that can reshape a random tiny UNet (real models learn with far lower ranks)
TINY_LORA = {"rank": 32, "alpha": 32, "target_modules": [
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "conv1", "conv2", "conv_shortcut", "ff.net.0.proj",
    "ff.net.2", "conv_in", "conv_out", "linear_1", "linear_2", "time_emb_proj"]}


def write_job(folder: Path, **sections) -> Path:
    job = {"version": 1, "base_model": sections.pop("base_model"), "method": sections.pop("method"),
           "data": {"path": str(sections.pop("data"))}, "output": str(sections.pop("output"))}
    job.update(sections)
    path = folder / f"job-{job['method']}-{abs(hash(job['output'])) % 10**6}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def vae_roundtrip(pipe, images: list[Path]) -> list[Image.Image]:
    """decode(encode(x)): what the model's own VAE can reproduce of each training image."""
    out = []
    for path in images:
        x = torch.from_numpy(load_pixels(path))[None]
        with torch.no_grad():
            y = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mean).sample[0]
        out.append(Image.fromarray(((y.permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy()))
    return out


def generate(pipe, prompts: list[str], seeds=(0, 1), cfg: float = 2.0) -> list[Image.Image]:
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    images = []
    for prompt in prompts:
        for seed in seeds:
            images += pipe(prompt, num_inference_steps=20, guidance_scale=cfg, height=64, width=64,
                           generator=torch.Generator().manual_seed(seed)).images
    return images


def distance_to_training(pipe, prepared: Path) -> float:
    examples = examples_from_prepared(prepared)
    references = vae_roundtrip(pipe, [e.image for e in examples])
    return float(np.mean(nearest_distances(generate(pipe, [e.caption for e in examples]), references)))


def mean_abs(a: list[Image.Image], b: list[Image.Image]) -> float:
    return float(np.mean([np.abs(np.asarray(x, float) - np.asarray(y, float)).mean() / 255 for x, y in zip(a, b)]))


class StepWatcher:
    """Follows a `personae train` subprocess's progress bar (its stderr, read in a thread).

    `wait(n)` returns once n training steps are done, so a test can signal the process at a
    known point of the loop instead of after a guessed number of seconds.
    """

    _STEP = re.compile(r"train:[^\r\n]*?(\d+)/\d+")

    def __init__(self, proc):
        self.proc, self.text, self.done = proc, "", 0
        self._seen: list[tuple[float, int]] = []  # (when, steps done) at each advance the bar showed
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        fd = self.proc.stderr.fileno()
        while data := os.read(fd, 65536):
            self.text += data.decode(errors="replace")
            steps = [int(m.group(1)) for m in self._STEP.finditer(self.text[-4000:])]
            if max(steps, default=0) > self.done:
                self.done = max(steps)
                self._seen.append((time.monotonic(), self.done))

    def seconds_per_step(self, fallback: float = 0.05) -> float:
        """The loop's pace as the bar showed it (a resume's first jump is not a step): signals are timed in steps."""
        if len(self._seen) < 2:
            return fallback
        (t0, d0), (t1, d1) = self._seen[0], self._seen[-1]
        return (t1 - t0) / (d1 - d0)

    def wait(self, step: int, timeout: float = 240) -> int:
        deadline = time.monotonic() + timeout
        while self.done < step:
            assert self.proc.poll() is None, f"the run ended before step {step}: {self.text[-2000:]}"
            assert time.monotonic() < deadline, f"step {step} not reached in {timeout} s: {self.text[-2000:]}"
            time.sleep(0.002)
        return self.done

    def wait_for_text(self, text: str, timeout: float = 240) -> None:
        """Returns once `text` is in the output (a checkpoint's line, a warning), which marks a later point of a
        step than its bar's advance."""
        deadline = time.monotonic() + timeout
        while text not in self.text:
            assert self.proc.poll() is None, f"the run ended before {text!r}: {self.text[-2000:]}"
            assert time.monotonic() < deadline, f"{text!r} not seen in {timeout} s: {self.text[-2000:]}"
            time.sleep(0.002)

    def finish(self, timeout: float = 240) -> str:
        self.proc.wait(timeout=timeout)
        self._thread.join(timeout=10)
        return self.text


def prepared_subject(root: Path, count: int, trigger: str = "sks") -> Path:
    """`root/prepared`: `count` sample-subject pictures captioned with `trigger`, prepared at 64 px."""
    from personae.config.prepare import PrepareSettings
    from personae.data.prepare import prepare_dataset
    from personae.data.samples import write_sample_subject

    write_sample_subject(root / "photos", count=count, trigger=trigger)
    prepare_dataset(root / "photos", root / "prepared", PrepareSettings(resolution=64))
    return root / "prepared"


def model_outputs(pipe) -> tuple[torch.Tensor, torch.Tensor]:
    """The UNet's and the text encoder's outputs on fixed inputs: what a LoRA (loaded, extracted, resized, or the
    start of a run) changes, compared exactly."""
    g = torch.Generator().manual_seed(5)
    ids = pipe.tokenizer(["a photo of a star"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        text = pipe.text_encoder(ids)[0]
        latents = torch.randn(1, pipe.unet.config.in_channels, 8, 8, generator=g)
        return pipe.unet(latents, 500, encoder_hidden_states=text).sample, text
