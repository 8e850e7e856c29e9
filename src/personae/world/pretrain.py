"""Pretrain the shapes-world model from scratch: VAE first, then UNet and text encoder together.

    pretrain(WorldPretrain(), Path("./world"))     # the full run (about 35 minutes on 2 CPU cores)
    personae world pretrain ./world --steps 200    # the same from the command line, shortened

  1. data: `dataset_size` seeded world images of the pretraining shapes, with captions;
  2. VAE: pixel MSE plus a small KL term; then the posterior of every image is computed
     once and the scaling factor set so latents have unit standard deviation (as SD-1.5's
     0.18215 was measured);
  3. UNet + text encoder: the denoising loss on cached latents (epsilon prediction, SD-1.5's
     noise schedule), captions dropped to "" at `caption_dropout` so classifier-free
     guidance works; AdamW, warmup then cosine, gradient clipping, an EMA of the weights;
     every `eval.every` steps the EMA weights draw the 16 fixed prompts (DDIM, CFG) and the
     exact checker scores them; a fixed probe batch measures the denoising loss;
  4. OUT becomes a diffusers folder (EMA weights) that `personae generate --model OUT` reads,
     with OUT/training/ holding settings, losses, evaluations and sample sheets.

Every random draw comes from a generator seeded by (seed, phase, step): same settings and
thread count, same weights. The output is written to OUT.partial and renamed at the end; an
earlier model in OUT is replaced only with --overwrite, and an OUT holding anything else is refused.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from personae.events import EventHandler, Message, Progress, ignore
from personae.models.folders import save_pipeline_folder
from personae.outputs import MODEL_FOLDER, staged_output
from personae.training.step import Batch, after_step, check_finite, diffusion_loss, draw_noise, optimizer_step, seeded
from personae.world.evaluate import evaluate_world
from personae.world.model import build_world_pipeline
from personae.world.pretrain_settings import WorldPretrain
from personae.world.scene import world_array
from personae.world.tokenizer import write_world_tokenizer

PROBE = 256  # examples in the fixed batch that measures the denoising loss


@dataclass
class PretrainResult:
    out: Path
    unet_steps: int  # UNet steps done (fewer than asked when the time budget ran out)
    vae_losses: list[float] = field(default_factory=list)
    unet_losses: list[float] = field(default_factory=list)
    probe_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, denoising loss on the probe batch)
    evals: list[dict] = field(default_factory=list)  # {"step": n, "background": .., ..., "all": ..}
    seconds: dict[str, float] = field(default_factory=dict)  # per phase


def to_pixels(images) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def train_vae(vae, pixels: torch.Tensor, s: WorldPretrain, on_event: EventHandler) -> list[float]:
    v = s.vae
    optimizer = torch.optim.AdamW(vae.parameters(), lr=v.learning_rate, weight_decay=0.0)
    lr_schedule = get_scheduler(v.lr_scheduler, optimizer, num_warmup_steps=0, num_training_steps=v.steps)
    vae.train()
    losses = []
    for step in range(v.steps):
        gen = seeded(s.seed, 1, step)
        # 1. a batch of images and the posterior's noise
        x = pixels[torch.randint(0, len(pixels), (v.batch_size,), generator=gen)]
        posterior = vae.encode(x).latent_dist
        eps = torch.randn(posterior.mean.shape, generator=gen)
        # 2. reconstruct from a sampled latent; pixel MSE plus a small KL term
        recon = vae.decode(posterior.mean + posterior.std * eps).sample
        loss = F.mse_loss(recon, x) + v.kl_weight * posterior.kl().mean()
        # 3. step
        optimizer_step(loss, optimizer, list(vae.parameters()))
        after_step(lr_schedule, None, [])
        losses.append(loss.item())
        on_event(Progress("vae", step + 1, v.steps, {"loss": f"{losses[-1]:.4f}"}))
    vae.eval()
    return losses


@torch.no_grad()
def encode_all(vae, pixels: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and standard deviations of every image (unscaled)."""
    means, stds = [], []
    for start in range(0, len(pixels), batch):
        posterior = vae.encode(pixels[start:start + batch]).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def denoising_loss(unet, text_encoder, noise_scheduler, z, ids, seed: int) -> float:
    """The epsilon-prediction MSE on a fixed batch with fixed noise and timesteps (lower: a better denoiser)."""
    gen = seeded(seed, 3)
    noise = torch.randn(z.shape, generator=gen)
    steps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(z),), generator=gen)
    with torch.no_grad():
        pred = unet(noise_scheduler.add_noise(z, noise, steps), steps, encoder_hidden_states=text_encoder(ids)[0]).sample
    return F.mse_loss(pred, noise).item()


def pretrain(s: WorldPretrain, out: str | Path, overwrite: bool = False, on_event: EventHandler = ignore) -> PretrainResult:
    """The process's torch thread count is the caller's to set (the CLI sets `s.threads`): weights are
    bit-reproducible at a fixed count, so a different count is said, not changed."""
    result = train_into_folder("personae world pretrain", s.threads, out, overwrite, on_event,
                               lambda partial, started: _pretrain(s, partial, started, on_event))
    on_event(Message(f"wrote the world model to {result.out} ({result.unet_steps} UNet steps)"))
    return result


def train_into_folder(command: str, threads: int, out: str | Path, overwrite: bool, on_event: EventHandler,
                      train):
    """`train(partial, started)` writes a model into a staged folder that becomes `out` when it returns (an earlier
    run's folder is replaced only with `overwrite`); a thread count other than the settings' is said, since the
    weights reproduce bit for bit only at that count. Returns train's result with `.out` set."""
    started = time.monotonic()
    out = Path(out)
    if torch.get_num_threads() != threads:
        on_event(Message(f"torch uses {torch.get_num_threads()} threads here, the settings say {threads}: the "
                         f"weights will differ from a run at that count (`{command}` sets it)", "warning"))
    with staged_output(out, MODEL_FOLDER, replace=overwrite) as partial:
        result = train(partial, started)
    result.out = out
    return result


def _pretrain(s: WorldPretrain, out: Path, started: float, on_event: EventHandler) -> PretrainResult:
    log = out / "training"
    log.mkdir()
    (log / "settings.yaml").write_text(yaml.safe_dump(s.model_dump(), sort_keys=False))
    result = PretrainResult(out, 0)
    # 1. tokenizer, random components, data
    write_world_tokenizer(out / "tokenizer")
    pipe = build_world_pipeline(s.seed, out / "tokenizer")
    pipe.set_progress_bar_config(disable=True)
    unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    on_event(Message(f"rendering {s.dataset_size} world images"))
    images, captions, _ = world_array(s.seed, s.dataset_size)
    pixels = to_pixels(images)
    # 2. the VAE, then every image's posterior and the scaling factor
    t0 = time.monotonic()
    result.vae_losses = train_vae(vae, pixels, s, on_event)
    means, stds = encode_all(vae, pixels)
    scaling = round(1.0 / means.std().item(), 5)
    vae.register_to_config(scaling_factor=scaling)
    vae.requires_grad_(False)
    result.seconds["vae"] = time.monotonic() - t0
    on_event(Message(f"VAE: reconstruction loss {result.vae_losses[-1]:.4f}, latent scaling factor {scaling}"))
    # 3. UNet + text encoder
    t0 = time.monotonic()
    u = s.unet
    ids = tokenize(tokenizer, captions)
    empty = tokenize(tokenizer, [""])[0]
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=u.learning_rate, weight_decay=u.weight_decay)
    lr_schedule = get_scheduler(u.lr_scheduler, optimizer, num_warmup_steps=u.warmup_steps, num_training_steps=u.steps)
    ema = EMAModel(params, decay=u.ema_decay) if u.ema_decay else None
    probe_gen = seeded(s.seed, 4)
    probe = torch.randint(0, len(means), (min(PROBE, len(means)),), generator=probe_gen)
    probe_z = (means[probe] + stds[probe] * torch.randn(means[probe].shape, generator=probe_gen)) * scaling

    def evaluate(step: int) -> None:
        """Probe loss and generated-image scores, with the EMA weights when there are any."""
        if ema:
            ema.store(params)
            ema.copy_to(params)
        unet.eval()
        try:
            loss = denoising_loss(unet, text_encoder, noise_scheduler, probe_z, ids[probe], s.seed)
            result.probe_losses.append((step, loss))
            if step:
                found = evaluate_world(pipe, s.eval.samples, s.eval.steps, s.eval.cfg, seed=s.seed)
                result.evals.append({"step": step, **found.scores, "probe_loss": loss})
                found.sheet().save(log / f"samples-{step:06d}.png")
                on_event(Message(f"step {step}: probe loss {loss:.4f}; right: " +
                                 ", ".join(f"{k} {v:.0%}" for k, v in found.scores.items())))
        finally:
            unet.train()
            if ema:
                ema.restore(params)

    evaluate(0)
    unet.train()
    text_encoder.train()
    budget = s.time_budget_minutes * 60 if s.time_budget_minutes else math.inf
    step = 0
    for step in range(1, u.steps + 1):
        gen = seeded(s.seed, 2, step)
        # 1. a batch of cached latents, sampled from their posteriors, and captions (some dropped)
        idx = torch.randint(0, len(means), (u.batch_size,), generator=gen)
        z = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * scaling
        drop = torch.rand(u.batch_size, generator=gen) < u.caption_dropout
        tokens = torch.where(drop[:, None], empty[None], ids[idx])
        # 2. noise at random timesteps; the loss every method trains with (training/step.py)
        noise, timesteps = draw_noise(gen, tuple(z.shape), noise_scheduler.config.num_train_timesteps)
        loss = diffusion_loss(unet, noise_scheduler, Batch(z, noise, timesteps), text_encoder(tokens)[0])
        # 3. backward, clip, step; the schedule and the EMA
        optimizer_step(loss, optimizer, params, u.max_grad_norm)
        after_step(lr_schedule, ema, params)
        result.unet_losses.append(loss.item())
        check_finite(result.unet_losses[-1], step, lambda: None, "Lower unet.learning_rate or set unet.max_grad_norm.")
        on_event(Progress("unet", step, u.steps, {"loss": f"{result.unet_losses[-1]:.4f}"}))
        if s.eval.every and step % s.eval.every == 0 and step < u.steps:
            evaluate(step)
        if time.monotonic() - started > budget and step < u.steps:
            on_event(Message(f"time budget of {s.time_budget_minutes:g} minutes reached: stopping the UNet phase "
                             f"at step {step} of {u.steps}", "warning"))
            break
    result.unet_steps = step
    result.seconds["unet"] = time.monotonic() - t0
    evaluate(step)
    # 4. save the EMA weights as a diffusers folder, and the training record
    if ema:
        ema.copy_to(params)
    save_pipeline_folder(pipe, out)
    _write_record(log, result, scaling, time.monotonic() - started)
    return result


def _write_record(log: Path, result: PretrainResult, scaling: float, seconds: float) -> None:
    with open(log / "losses.csv", "w", newline="") as fh:
        rows = [("phase", "step", "loss")]
        rows += [("vae", i + 1, f"{v:.6f}") for i, v in enumerate(result.vae_losses)]
        rows += [("unet", i + 1, f"{v:.6f}") for i, v in enumerate(result.unet_losses)]
        csv.writer(fh).writerows(rows)
    summary = {
        "unet_steps": result.unet_steps, "vae_scaling_factor": scaling, "seconds": round(seconds, 1),
        "seconds_per_phase": {k: round(v, 1) for k, v in result.seconds.items()},
        "probe_losses": [{"step": st, "loss": round(v, 5)} for st, v in result.probe_losses],
        "evals": result.evals,
    }
    (log / "summary.json").write_text(json.dumps(summary, indent=1))
