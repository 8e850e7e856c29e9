"""What the benchmarks share: the full-size SD-1.5 model with random weights, peak-memory sampling, the machine.

The full-size model is built from the SD-1.5 configs personae ships (src/personae/models/sd15: the
published architecture constants) with seeded random weights: real shapes and real compute, so time
and memory ratios carry over to the real model; pictures do not (they are noise). It is written once
(about 4.3 GB, fp32) to a cache folder and reused.
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from pathlib import Path

import psutil
import torch

GB = 1024**3


def write_full_model(folder: Path, seed: int = 0) -> Path:
    """The SD-1.5 architecture at full size with random weights, as a diffusers folder (reused when present)."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from personae.models.folders import save_pipeline_folder
    from personae.models.tiny import SD15_DIR, sd15_scheduler, sd15_tokenizer

    if (folder / "model_index.json").is_file():
        return folder
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(json.loads((SD15_DIR / "unet/config.json").read_text()))
        vae = AutoencoderKL.from_config(json.loads((SD15_DIR / "vae/config.json").read_text()))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(str(SD15_DIR / "text_encoder")))
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=sd15_tokenizer(),
                                   scheduler=sd15_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    work = folder.with_name(folder.name + ".partial")
    save_pipeline_folder(pipe, work)
    work.rename(folder)
    return folder


def model_folder(size: str, cache: Path) -> Path:
    from personae.models.tiny import write_tiny_model

    if size == "full":
        return write_full_model(cache / "sd15-random-full")
    folder = cache / "tiny"
    return folder if (folder / "model_index.json").is_file() else write_tiny_model(folder)


class PeakRss:
    """This process's resident memory sampled every `every` seconds while `active`: the peak of one phase
    (the training steps), which the process-wide maximum (ru_maxrss) cannot give once loading or saving
    peaked higher. Sampling can miss a spike shorter than `every`; a training step lasts seconds."""

    def __init__(self, every: float = 0.02, anonymous: bool = False):
        self.process, self.every, self.anonymous = psutil.Process(), every, anonymous
        self.active, self.peak, self._stop = False, 0, False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _now(self) -> int:
        """Resident bytes; `anonymous`: without the pages of mapped files (a model file safetensors maps while it
        is read: the kernel drops those pages when memory runs short, so they never cause an out-of-memory)."""
        info = self.process.memory_info()
        return info.rss - info.shared if self.anonymous else info.rss

    def _run(self) -> None:
        while not self._stop:
            if self.active:
                self.peak = max(self.peak, self._now())
            time.sleep(self.every)

    def start(self) -> None:
        self.peak = max(self.peak, self._now())
        self.active = True

    def stop(self) -> int:
        if self.active:
            self.peak = max(self.peak, self._now())
        self.active, self._stop = False, True
        return self.peak


def cuda_peak() -> int | None:
    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None


def machine() -> dict:
    import diffusers

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / GB, 1), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def write_json(path: str | Path, data: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2) + "\n")
