"""One explicit training loop for every method: encode, add noise, predict, loss, step.

Randomness is derived from (seed, step): batches, latent samples, noise, timesteps,
caption shuffles. Each optimizer step draws for its whole global batch (batch_size x
processes x accumulation) and every process takes its slice, so 2 processes x batch 1
compute what 1 process x batch 2 does, and a resumed run continues exactly.
"""

from __future__ import annotations

import csv
import math
import random
import signal
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel, compute_snr

from personae.config.train import TrainJob
from personae.data.dataset import BatchPlan, noisy_caption
from personae.errors import UserError
from personae.events import CheckpointSaved, EventHandler, ImageReady, Message, Progress, ignore
from personae.media.plot import loss_curve
from personae.methods import method_class
from personae.methods.base import ExportFile
from personae.models.resolve import load_pipeline, resolve_model
from personae.runs import CheckRecord, ExportRecord, RunLog, is_run, read_run
from personae.staging import atomic_file, disk_full, is_disk_full
from personae.training import checkpoint as ckpt
from personae.training.setup import (LatentCache, class_examples, load_examples, make_accelerator, make_optimizer,
                                     preflight, sample_latents, seeded)
from personae.training.stopping import NAMES, Commands, Stopped, stop_at_step_end
from personae.training.validation import validation_grid
from personae.training.verify import Check, verify_exports


@dataclass
class TrainResult:
    run: Path
    steps: int
    losses: list[float]
    exports: list[ExportFile] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)


def encode_text(pipe, text_encoder, captions: list[str]) -> torch.Tensor:
    """Training captions: plain CLIP encoding, new tokens expanded as diffusers' loader expands them."""
    captions = [pipe.maybe_convert_prompt(c, pipe.tokenizer) for c in captions]
    ids = pipe.tokenizer(captions, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids.to(pipe.text_encoder.device))[0]


def train(job: TrainJob, run: Path, resume: bool = False, on_event: EventHandler = ignore,
          commands: Commands | None = None) -> TrainResult:
    """Train `job` into the run folder `run`; `commands` (stop, sample, save) are acted on at the end of a step.

    The run record (run.json) says "running" from the start, then "finished", "stopped" or "failed"."""
    log = RunLog(run)
    try:
        return _train(job, run, resume, on_event, commands if commands is not None else Commands(), log)
    except KeyboardInterrupt:  # Stopped included: a checkpoint to resume from (or the last one) is kept
        log.end("stopped")
        raise
    except BaseException as exc:
        log.end("failed", f"{type(exc).__name__}: {exc}")
        raise


def _train(job: TrainJob, run: Path, resume: bool, on_event: EventHandler, commands: Commands,
           log: RunLog) -> TrainResult:
    t = job.train
    # 1. check inputs; processes, devices, precision
    preflight(job)
    accelerator = make_accelerator(job)
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    previous = read_run(run) if is_run(run) else None  # read before this run's record replaces it
    if main:
        log.start(job.model_dump())

    def check():  # a stop asked for before the loop ends the run between stages (one process: no peers to wait)
        if world == 1:
            commands.check()

    # 2. the base model
    source = resolve_model(job.base_model, allow_pickle=job.allow_pickle)
    pipe = load_pipeline(source).to(accelerator.device)
    check()
    pipe.set_progress_bar_config(disable=True)
    base_scheduler = dict(pipe.scheduler.config)
    noise_scheduler = DDPMScheduler.from_config(base_scheduler)
    # 3. data, and class images from the untouched base model
    examples = load_examples(job, run, on_event)
    plan = BatchPlan(examples, t.batch_size * world * t.gradient_accumulation, t.seed)
    priors = None
    if job.dreambooth.prior_preservation:  # DreamBooth's class images, or kohya-style regularization images
        priors = class_examples(pipe, source, job, run, examples[0].size, on_event)
        prior_plan = BatchPlan(priors, plan.batch, t.seed + 1)
    total = t.steps or t.epochs * plan.steps_per_epoch
    prompts = t.validation.prompts or [examples[0].caption]
    baseline = validation_grid(pipe, source, base_scheduler, prompts, t.validation, "base model") if main else None
    check()
    # 4. the method decides what trains
    method = method_class(job.method)(job)
    torch.manual_seed(t.seed)  # new weights (LoRA matrices) start from the job's seed, not the process's
    groups = method.setup(pipe)
    params = [p for g in groups for p in g.params]
    if t.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
        if method.text_encoder_changes:
            pipe.text_encoder.gradient_checkpointing_enable()
    # 5. optimizer, LR schedule (stepped once per optimizer step, by us), EMA; accelerate wraps modules
    optimizer = make_optimizer(job, groups)
    lr_schedule = get_scheduler(t.lr_scheduler, optimizer, num_warmup_steps=t.warmup_steps, num_training_steps=total)
    modules = method.modules(pipe)
    prepared = accelerator.prepare(*modules, optimizer)
    wrapped, optimizer = dict(zip([id(m) for m in modules], prepared[:-1])), prepared[-1]
    unet = wrapped.get(id(pipe.unet), pipe.unet)
    text_encoder = wrapped.get(id(pipe.text_encoder), pipe.text_encoder)
    ema = EMAModel(params, decay=t.ema_decay) if t.ema else None
    # 6. resume: weights, optimizer, schedule, EMA, losses; the rest follows from the step
    start, losses = 0, []
    found = previous.checkpoints if previous else []
    if resume and found:
        step0, folder = found[-1].step, run / found[-1].path
        weights, state = ckpt.load_checkpoint(folder)
        method.load_trainable_state(pipe, weights)
        optimizer.load_state_dict(state["optimizer"])
        lr_schedule.load_state_dict(state["lr_schedule"])
        if ema and state.get("ema"):
            ema.load_state_dict(state["ema"])
        start, losses = step0, list(state["losses"])
        on_event(Message(f"resuming from {folder} (step {step0} of {total})"))
    elif resume:
        on_event(Message("no checkpoint to resume from: starting at step 0", "warning"))
    # 7. caches: VAE latents always; text embeddings while the text encoder does not change
    latents = LatentCache(pipe.vae, examples, job.data.flip, t.cache_latents, run / "cache" / "latents.safetensors")
    prior_latents = LatentCache(pipe.vae, priors, False, t.cache_latents, None) if priors else None
    text_cache: dict[str, torch.Tensor] = {}
    scaling = float(pipe.vae.config.scaling_factor)
    log.update(metrics={"steps": start, "total_steps": total, "final_loss": losses[-1] if losses else None})
    check()

    def text_embeddings(captions):
        if method.text_encoder_changes:
            return encode_text(pipe, text_encoder, captions)
        for c in set(captions) - set(text_cache):
            with torch.no_grad():
                text_cache[c] = encode_text(pipe, pipe.text_encoder, [c])[0]
        return torch.stack([text_cache[c] for c in captions])

    def draw(step: int, ids: list[int], cache: LatentCache, tag: int, captions_of):
        """The global batch's random inputs, identical whatever the process count."""
        gen = seeded(t.seed, step, tag)
        n = len(ids)
        shape = cache.get(ids[0], False).shape
        flips = (torch.rand(n, generator=gen) < 0.5).tolist() if job.data.flip and tag == 0 else [False] * n
        eps = torch.randn((n, shape[0] // 2, *shape[1:]), generator=gen)
        noise = torch.randn((n, shape[0] // 2, *shape[1:]), generator=gen)
        if t.noise_offset:
            noise = noise + t.noise_offset * torch.randn((n, shape[0] // 2, 1, 1), generator=gen)
        steps_ = torch.randint(0, noise_scheduler.config.num_train_timesteps, (n,), generator=gen)
        rng = random.Random(f"{t.seed}-{step}-{tag}")
        captions = [captions_of(i, rng) for i in ids]
        z = sample_latents([cache.get(i, f) for i, f in zip(ids, flips)], eps, scaling)
        return z, noise, steps_, captions

    def caption_of(i, rng):
        ex = examples[i]
        keep = ex.keep_tokens if job.data.keep_tokens is None else job.data.keep_tokens
        return noisy_caption(ex.caption, rng, job.data.shuffle_tags, keep, job.data.caption_dropout)

    def loss_of(z, noise, steps_, embeds):
        noisy = noise_scheduler.add_noise(z, noise, steps_)
        if noise_scheduler.config.prediction_type == "v_prediction":
            target = noise_scheduler.get_velocity(z, noise, steps_)
        else:
            target = noise
        pred = unet(noisy, steps_, encoder_hidden_states=embeds).sample
        per_example = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if t.min_snr_gamma:
            snr = compute_snr(noise_scheduler, steps_)
            weight = snr.clamp(max=t.min_snr_gamma)
            weight = weight / (snr + 1 if noise_scheduler.config.prediction_type == "v_prediction" else snr)
            per_example = per_example * weight
        return per_example.mean()

    def with_ema(work):
        """`work()` with the EMA weights in place of the trained ones (what is exported and sampled)."""
        if ema:
            ema.store(params)
            ema.copy_to(params)
        try:
            return work()
        finally:
            if ema:
                ema.restore(params)

    def write_grid(step: int, grid) -> Path:
        with atomic_file(run / "validation" / f"step-{step:06d}.png") as tmp:
            grid.save(tmp, format="PNG")
        on_event(ImageReady(run / "validation" / f"step-{step:06d}.png", step))
        return run / "validation" / f"step-{step:06d}.png"

    def sample(step: int) -> Path:
        """The validation samples now (the "sample" command)."""
        return write_grid(step, with_ema(lambda: validation_grid(pipe, source, base_scheduler, prompts, t.validation,
                                                                 f"step {step}", baseline)))

    def save(step: int, final: bool = False) -> tuple[list[ExportFile], list[Check]]:
        """Checkpoint, exports, checks, validation grid, loss curve."""
        folder = ckpt.checkpoint_dir(run, step)
        out = run if final else folder / "exports"

        def export():
            meta = {"steps": str(step), "base_model": job.base_model, "method": job.method}
            files = method.export(pipe, out, meta)
            checks = verify_exports(pipe, files, source, prompts[0]) if t.verify_exports else []
            grid = validation_grid(pipe, source, base_scheduler, prompts, t.validation, f"step {step}", baseline)
            return files, checks, grid

        files, checks, grid = with_ema(export)
        write_grid(step, grid)
        ckpt.save_checkpoint(folder, method.trainable_state(pipe), {
            "step": step, "optimizer": optimizer.state_dict(), "lr_schedule": lr_schedule.state_dict(),
            "ema": ema.state_dict() if ema else None, "losses": losses})
        ckpt.prune(run, t.keep_last)
        loss_curve(losses, run / "loss.png", f"{job.method} training loss")
        with atomic_file(run / "losses.csv") as tmp, open(tmp, "w", newline="") as fh:
            csv.writer(fh).writerows([("step", "loss")] + [(i + 1, f"{v:.6f}") for i, v in enumerate(losses)])
        bad = [c for c in checks if not c.ok]
        if bad:
            raise UserError(f"An exported file does not reproduce the trained model: {bad[0].files} differ by "
                            f"{bad[0].max_abs_diff:.2e} (tolerance 1e-4). The run is stopped; the checkpoint at "
                            f"{folder} is kept.", "Report this as a bug, with the job file.")
        done = {"metrics": {"steps": step, "final_loss": losses[-1] if losses else None}}
        if final:
            done.update(status="finished", error=None, checks=[CheckRecord(**vars(c)) for c in checks],
                        exports=[ExportRecord(path=f.path.relative_to(run).as_posix(), format=f.format,
                                              loader=f.loader, token=f.token) for f in files])
        log.update(**done)
        on_event(CheckpointSaved(step, folder))
        return files, checks

    def checkpoint(step: int, final: bool = False):
        """`save`, and on failure no half-written checkpoint; a full disk is explained, with what is left to resume."""
        try:
            return save(step, final)
        except BaseException as exc:
            ckpt.discard_incomplete(ckpt.checkpoint_dir(run, step))
            if not is_disk_full(exc):
                raise
            last = ckpt.list_checkpoints(run)
            kept = (f"the last complete checkpoint is step {last[-1][0]} ({last[-1][1]})" if last
                    else "no checkpoint was written yet")
            raise disk_full(f"the {'final exports' if final else 'checkpoint'} of step {step} in {run}", kept,
                            "Free some space, then continue with `personae train JOB.yaml --resume`.") from None

    # 8. the loop
    writer = _tensorboard(run) if main else None
    unet.train()
    step = start
    with stop_at_step_end(commands) as stop:
        for step in range(start, total):
            ids = plan.batch_for_step(step)
            z, noise, steps_, captions = draw(step, ids, latents, 0, caption_of)
            if priors:
                pids = prior_plan.batch_for_step(step)
                pz, pnoise, psteps, pcaptions = draw(step, pids, prior_latents, 1, lambda i, rng: priors[i].caption)
            step_loss = 0.0
            for micro in range(t.gradient_accumulation):
                part = slice((micro * world + rank) * t.batch_size, (micro * world + rank + 1) * t.batch_size)
                torch.manual_seed(int(seeded(t.seed, step, micro, rank).initial_seed()))  # LoRA dropout
                with accelerator.accumulate(*modules):
                    dev = accelerator.device
                    embeds = text_embeddings(captions[part])
                    loss = loss_of(z[part].to(dev), noise[part].to(dev), steps_[part].to(dev), embeds)
                    if priors:
                        pembeds = text_embeddings(pcaptions[part])
                        prior = loss_of(pz[part].to(dev), pnoise[part].to(dev), psteps[part].to(dev), pembeds)
                        loss = loss + job.dreambooth.prior_loss_weight * prior
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and t.max_grad_norm:
                        accelerator.clip_grad_norm_(params, t.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                step_loss += accelerator.reduce(loss.detach(), "mean").item() / t.gradient_accumulation
            if not math.isfinite(step_loss):
                last = ckpt.list_checkpoints(run)
                raise UserError(f"The loss became {step_loss} at step {step + 1}: training diverged. "
                                + (f"The last good checkpoint is {last[-1][1]}." if last else "No checkpoint was written."),
                                "Lower train.learning_rate, or turn on train.max_grad_norm / min_snr_gamma.")
            lr_schedule.step()
            method.after_step(pipe)
            if ema:
                ema.step(params)
            losses.append(step_loss)
            if writer:
                writer.add_scalar("loss", step_loss, step + 1)
                writer.add_scalar("lr", lr_schedule.get_last_lr()[0], step + 1)
            on_event(Progress("train", step + 1, total, {"loss": f"{step_loss:.4f}"}))
            saved = bool(t.save_every and (step + 1) % t.save_every == 0 and step + 1 < total)
            asked = commands.take()  # "save" / "sample" from the job interface
            if "save" in asked and step + 1 < total and not saved:
                saved = True
                on_event(Message(f"saving a checkpoint at step {step + 1}, as asked"))
            if saved and main:
                checkpoint(step + 1)
            if "sample" in asked and main:
                sample(step + 1)
            accelerator.wait_for_everyone()
            if _stop_wanted(stop, accelerator):  # Ctrl-C / SIGTERM / "stop": a checkpoint of step + 1 steps, then exit
                name = NAMES.get(stop.signum, "stop")
                if main and not saved:
                    on_event(Message(f"{name}: saving a checkpoint at step {step + 1} before exiting", "warning"))
                    checkpoint(step + 1)
                elif main:
                    on_event(Message(f"{name}: stopping after the checkpoint at step {step + 1}", "warning"))
                accelerator.wait_for_everyone()
                raise Stopped(stop.signum if stop.signum is not None else None if stop.stop_asked else signal.SIGTERM)
        # 9. the final exports, checked, at the run's top level (a stop asked for now waits for them)
        result = TrainResult(run, total, losses)
        if main:
            result.exports, result.checks = checkpoint(total, final=True)
    accelerator.wait_for_everyone()
    if writer:
        writer.close()
    return result


def _stop_wanted(stop, accelerator) -> bool:
    """Has any process been asked to stop? (All processes must leave the loop at the same step.)"""
    if accelerator.num_processes == 1:
        return stop.stopping
    flag = torch.tensor([1.0 if stop.stopping else 0.0], device=accelerator.device)
    return accelerator.reduce(flag, "sum").item() > 0


def _tensorboard(run: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run / "logs"))
