"""Fine-tune the world model to v-prediction on a zero-terminal-SNR schedule, where the starting noise no longer
decides the layout: a motion adapter learns one direction on it, and none on the shipped model (docs/world.md).

    fine_tune_zero_snr(WorldZeroSnr(), Path("./world-zero-snr"))   # the run of docs/world.md
    personae world zero-snr ./world-zero-snr --set steps=200       # the same from the command line, shortened

  1. the base model; its scheduler config takes ZERO_SNR_SCHEDULE (v-prediction, betas rescaled so the last
     timestep keeps nothing of the picture, trailing timestep spacing), which every sampler reads;
  2. data: `dataset_size` seeded world pictures and captions (not the pretraining's), their VAE posteriors computed
     once;
  3. the UNet learns the velocity on that schedule (the loss every method trains with, training/step.py), captions
     dropped to "" at `caption_dropout`; the VAE and the text encoder stay as they were;
  4. the 16 fixed prompts are drawn (DDIM, CFG) and read by the exact checker, as `personae world pretrain`
     measures;
  5. OUT becomes a diffusers folder (`--model OUT` everywhere), with OUT/training/: settings, losses, the
     measurement and its sheet.

Every random draw comes from a generator seeded by (seed, phase, step): same settings and thread count, same weights.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler

from personae.events import EventHandler, Message, Progress, ignore
from personae.inference.session import open_session
from personae.models.folders import save_pipeline_folder
from personae.training.step import Batch, check_finite, diffusion_loss, draw_noise, optimizer_step, seeded
from personae.world.evaluate import evaluate_world
from personae.world.model import world_model_dir
from personae.world.pretrain import encode_all, to_pixels, tokenize, train_into_folder
from personae.world.scene import world_array
from personae.world.zero_snr_settings import ZERO_SNR_SCHEDULE, WorldZeroSnr


@dataclass
class ZeroSnrResult:
    out: Path
    steps: int  # steps done (fewer than asked when the time budget ran out)
    losses: list[float] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)  # share of pictures right, per attribute and "all"
    seconds: dict[str, float] = field(default_factory=dict)  # data, train, measure, total


def fine_tune_zero_snr(s: WorldZeroSnr, out: str | Path, overwrite: bool = False,
                       on_event: EventHandler = ignore) -> ZeroSnrResult:
    """The caller sets the torch thread count (the CLI sets `s.threads`): weights reproduce at a fixed count."""
    result = train_into_folder("personae world zero-snr", s.threads, out, overwrite, on_event,
                               lambda partial, started: _train(s, partial, started, on_event))
    on_event(Message(f"wrote the zero-terminal-SNR world model to {result.out} ({result.steps} steps)"))
    return result


def _train(s: WorldZeroSnr, out: Path, started: float, on_event: EventHandler) -> ZeroSnrResult:
    log = out / "training"
    log.mkdir()
    (log / "settings.yaml").write_text(yaml.safe_dump(s.model_dump(mode="json"), sort_keys=False))
    result = ZeroSnrResult(out, 0)
    # 1. the base model, on the new schedule
    pipe = open_session(str(world_model_dir(s.base)), device="cpu").pipe
    pipe.scheduler = type(pipe.scheduler).from_config({**pipe.scheduler.config, **ZERO_SNR_SCHEDULE})
    unet, vae, text_encoder = pipe.unet, pipe.vae, pipe.text_encoder
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    # 2. data: pictures other than the pretraining's (world_array's seed 0), encoded once
    t0 = time.monotonic()
    on_event(Message(f"rendering {s.dataset_size} world pictures"))
    images, captions, _ = world_array(s.seed + 1, s.dataset_size)
    means, stds = encode_all(vae, to_pixels(images))
    ids, empty = tokenize(pipe.tokenizer, captions), tokenize(pipe.tokenizer, [""])[0]
    scaling = vae.config.scaling_factor
    result.seconds["data"] = time.monotonic() - t0
    # 3. the UNet learns the velocity
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    params = list(unet.parameters())
    optimizer = torch.optim.AdamW(params, lr=s.learning_rate, weight_decay=0.0)
    lr_schedule = get_scheduler(s.lr_scheduler, optimizer, num_warmup_steps=s.warmup_steps, num_training_steps=s.steps)
    budget = s.time_budget_minutes * 60 if s.time_budget_minutes else math.inf
    unet.train()
    t0 = time.monotonic()
    step = 0
    for step in range(1, s.steps + 1):
        gen = seeded(s.seed, 11, step)
        idx = torch.randint(0, len(means), (s.batch_size,), generator=gen)
        z = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * scaling
        drop = torch.rand(s.batch_size, generator=gen) < s.caption_dropout
        with torch.no_grad():
            hidden = text_encoder(torch.where(drop[:, None], empty[None], ids[idx]))[0]
        noise, timesteps = draw_noise(gen, tuple(z.shape), noise_scheduler.config.num_train_timesteps)
        loss = diffusion_loss(unet, noise_scheduler, Batch(z, noise, timesteps), hidden)
        optimizer_step(loss, optimizer, params, s.max_grad_norm)
        lr_schedule.step()
        result.losses.append(loss.item())
        check_finite(result.losses[-1], step, lambda: None, "Lower learning_rate or set max_grad_norm.")
        on_event(Progress("zero-snr", step, s.steps, {"loss": f"{result.losses[-1]:.4f}"}))
        if time.monotonic() - started > budget and step < s.steps:
            on_event(Message(f"time budget of {s.time_budget_minutes:g} minutes reached: stopping at step {step} "
                             f"of {s.steps}", "warning"))
            break
    result.steps = step
    result.seconds["train"] = time.monotonic() - t0
    unet.eval()
    # 4. the measurement
    t0 = time.monotonic()
    found = evaluate_world(pipe, s.eval.samples, s.eval.steps, s.eval.cfg, seed=s.seed)
    found.sheet().save(log / f"samples-{step:06d}.png")
    result.scores = found.scores
    result.seconds["measure"] = time.monotonic() - t0
    on_event(Message("right: " + ", ".join(f"{k} {v:.0%}" for k, v in found.scores.items())))
    # 5. the folder and the training record
    save_pipeline_folder(pipe, out)
    result.seconds["total"] = time.monotonic() - started
    with open(log / "losses.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("step", "loss")] + [(i + 1, f"{v:.6f}") for i, v in enumerate(result.losses)])
    summary = {"steps": result.steps, "seconds": {k: round(v, 1) for k, v in result.seconds.items()},
               "scores": result.scores}
    (log / "summary.json").write_text(json.dumps(summary, indent=1))
    return result
