"""One explicit training loop for every method: encode, add noise, predict, loss, step.

Randomness is derived from (seed, step): batches, latent samples, noise, timesteps,
caption shuffles. Each optimizer step draws for its whole global batch (batch_size x
processes x accumulation) and every process takes its slice, so 2 processes x batch 1
compute what 1 process x batch 2 does, and a resumed run continues exactly.
"""

from __future__ import annotations

import random
import signal
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel, compute_snr

from personae.config.methods import METHODS
from personae.config.train import TrainJob
from personae.data.dataset import BatchPlan, noisy_caption
from personae.data.stats import dataset_stats
from personae.errors import UserError
from personae.events import EventHandler, Message, Progress, ignore
from personae.methods import method_class
from personae.methods.base import ExportFile
from personae.models.resolve import load_pipeline, resolve_model
from personae.runs import RunLog, is_run, read_run
from personae.training import checkpoint as ckpt
from personae.training.max_norm import apply_max_norm, trained_layers
from personae.training.memory import GB, check_fits, estimate_training, free_memory
from personae.training.precision import DTYPES, halved, halved_trained
from personae.training.saving import DIVERGED_FIX, Saver, export_header
from personae.training.setup import (
    LatentCache,
    MaskCache,
    class_examples,
    load_example_groups,
    load_examples,
    make_accelerator,
    make_optimizer,
    preflight,
    swap_vae,
    uses_masks,
)
from personae.training.step import (
    Batch,
    LossShape,
    after_step,
    check_finite,
    diffusion_loss,
    draw_batch,
    optimizer_step,
    seeded,
)
from personae.training.stopping import NAMES, Commands, Stopped, stop_at_step_end
from personae.training.text import encode_text, long_captions, stack_padded
from personae.training.validation import validation_grid
from personae.training.verify import Check


@dataclass
class TrainResult:
    run: Path
    steps: int
    losses: list[float]
    exports: list[ExportFile] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # exports the method could not write, each with why


def training_noise_scheduler(base_scheduler: dict, zero_terminal_snr: bool
                             ) -> tuple[DDPMScheduler, torch.Tensor | None]:
    """The noise schedule a run trains on (the base model's, rescaled to zero terminal SNR when asked), and with
    the rescale the SNR of the schedule before it, which kohya's loss weights keep."""
    noise_scheduler = DDPMScheduler.from_config(base_scheduler)
    if not zero_terminal_snr:
        return noise_scheduler, None
    base_snr = compute_snr(noise_scheduler, torch.arange(noise_scheduler.config.num_train_timesteps))
    # an argument, not a config key: a base whose file left the key out lists it in _use_default_values, and
    # from_config would take its default (no rescale) again
    return DDPMScheduler.from_config(base_scheduler, rescale_betas_zero_snr=True), base_snr


def train(job: TrainJob, run: Path, resume: bool = False, on_event: EventHandler = ignore,
          commands: Commands | None = None) -> TrainResult:
    """Train `job` into the run folder `run`; `commands` (stop, sample, save) are acted on at the end of a step.

    The run record (run.json) says "running" from the start, then "finished", "stopped" or "failed"."""
    log = RunLog(run)
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=cuda):  # the run seeds torch's generators; the caller's state comes back
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
    where = {"folder": "diffusers folder", "single_file": "single file", "hub": "hub id"}.get(source.kind, source.kind)
    on_event(Message(f"loading the base model {source.name} ({where} {source.location}) on {accelerator.device}"))
    pipe = load_pipeline(source).to(accelerator.device)
    vae = swap_vae(pipe, job, on_event) if job.vae else None
    check()
    pipe.set_progress_bar_config(disable=True)
    base_scheduler = dict(pipe.scheduler.config)
    noise_scheduler, base_snr = training_noise_scheduler(base_scheduler, t.zero_terminal_snr)
    timesteps = timestep_range(t.min_timestep, t.max_timestep, noise_scheduler.config.num_train_timesteps)
    if t.clip_skip > (layers := pipe.text_encoder.config.num_hidden_layers):
        raise UserError(f"train.clip_skip {t.clip_skip} is more than the base model's text encoder has layers "
                        f"({layers}).", "Use clip_skip 1 (the last layer) or 2 (the one before, for anime models).")
    # 3. data, and class images from the untouched base model
    groups = load_example_groups(job, run, on_event)
    examples = load_examples(job, run, on_event, groups)
    plan = BatchPlan(examples, t.batch_size * world * t.gradient_accumulation, t.seed)
    priors = None
    if job.dreambooth.prior_preservation:  # DreamBooth's class images, or kohya-style regularization images
        priors = class_examples(pipe, source, job, run, examples[0].size, on_event)
        prior_plan = BatchPlan(priors, plan.batch, t.seed + 1)
    total = t.steps or t.epochs * plan.steps_per_epoch
    stats = dataset_stats(examples, groups[0][0], _trigger_words(job), len(priors or []), groups)  # kohya's dirs
    on_event(Message(stats.summary()))
    on_event(Message(f"{total} steps, {plan.batch} image(s) per step ({plan.steps_per_epoch} steps per epoch)"))
    prompts = t.validation.prompts or [examples[0].caption]
    baseline = (validation_grid(pipe, source, base_scheduler, prompts, t.validation, "base model",
                                clip_skip=t.clip_skip) if main else None)
    check()
    # 4. the method decides what trains
    method = method_class(job.method)(job)
    torch.manual_seed(t.seed)  # new weights (LoRA matrices) start from the job's seed, not the process's
    groups = method.setup(pipe)
    for text in method.said:
        on_event(Message(text))
    params = [p for g in groups for p in g.params]
    if t.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
        if method.text_encoder_changes:
            pipe.text_encoder.gradient_checkpointing_enable()
    # 4b. the memory it needs, said now; a GPU that clearly lacks it is refused with the switch that would fit
    size = max((e.size for e in examples), key=lambda s: s[0] * s[1])
    memory = estimate_training(pipe, params, job, size, method.text_encoder_changes, passes=2 if priors else 1)
    on_event(Message(memory.summary()))
    if (free := free_memory(accelerator.device)) is not None:
        check_fits(memory, free, f"the GPU ({accelerator.device})")
    log.update(metrics={"memory_estimate_gb": round(memory.total() / GB, 2)})
    frozen = halved(pipe, t.mixed_precision)  # under mixed precision the weights that do not train are stored in half
    trained_half = halved_trained(pipe, params, t.full_bf16)  # and with full_bf16 those that do (before the optimizer)
    # 5. optimizer, LR schedule (stepped once per optimizer step, by us), EMA; accelerate wraps modules
    optimizer = make_optimizer(job, groups)
    lr_schedule = get_scheduler(t.lr_scheduler, optimizer, num_warmup_steps=t.warmup_steps, num_training_steps=total,
                                num_cycles=t.lr_scheduler_num_cycles, power=t.lr_scheduler_power)
    modules = method.modules(pipe)
    prepared = accelerator.prepare(*modules, optimizer)
    wrapped, optimizer = dict(zip([id(m) for m in modules], prepared[:-1])), prepared[-1]
    unet = wrapped.get(id(pipe.unet), pipe.unet)
    text_encoder = wrapped.get(id(pipe.text_encoder), pipe.text_encoder)
    ema = EMAModel(params, decay=t.ema_decay) if t.ema else None
    norm_layers = trained_layers([pipe.unet, pipe.text_encoder]) if t.scale_weight_norms else []
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
    half_vae = None if t.no_half_vae else DTYPES.get(t.mixed_precision)
    latents = LatentCache(pipe.vae, examples, job.data.flip, t.cache_latents, run / "cache" / "latents.safetensors",
                          f"{vae.name}:{vae.hash or ''}" if vae else "", half=half_vae)
    prior_latents = LatentCache(pipe.vae, priors, False, t.cache_latents, None, half=half_vae) if priors else None
    text_cache: dict[str, torch.Tensor] = {}
    scaling = float(pipe.vae.config.scaling_factor)
    log.update(metrics={"steps": start, "total_steps": total, "final_loss": losses[-1] if losses else None})
    check()

    saver = Saver(run, job, pipe, method, source, base_scheduler, prompts, baseline, optimizer, lr_schedule, ema,
                  params, losses, log, on_event, frozen, partial(load_pipeline, source), trained_half,
                  header=export_header(job, stats, plan.steps_per_epoch, total, examples[0].size,
                                       vae.name if vae else None))
    masks = MaskCache(examples) if uses_masks(job, examples, on_event) else None
    train_batch = _Draws(job, examples, latents, timesteps, scaling, tag=0, masks=masks,
                         steps_per_epoch=plan.steps_per_epoch)
    prior_batch = _Draws(job, priors, prior_latents, timesteps, scaling, tag=1) if priors else None

    loss_shape = LossShape(t.loss_type, t.huber_c, t.huber_schedule, t.debiased_estimation,
                           t.scale_v_pred_loss_like_noise_pred, base_snr)

    chunks = t.max_token_length // 75
    if cut := long_captions(pipe, [e.caption for e in examples], chunks):
        on_event(Message(f"{cut} caption(s) have more than {t.max_token_length} tokens: cut there (train."
                         "max_token_length 150 or 225 keeps more, encoded in chunks as generation encodes them)",
                         "warning"))

    def text_embeddings(captions):
        if method.text_encoder_changes:
            return encode_text(pipe, text_encoder, captions, t.clip_skip, chunks, t.weighted_captions)
        if not t.cache_text_encoder_outputs:
            with torch.no_grad():
                return encode_text(pipe, pipe.text_encoder, captions, t.clip_skip, chunks, t.weighted_captions)
        for c in (set(captions) | ({""} if chunks > 1 else set())) - set(text_cache):  # "": the empty chunk
            with torch.no_grad():
                text_cache[c] = encode_text(pipe, pipe.text_encoder, [c], t.clip_skip, chunks,
                                            t.weighted_captions)[0]
        if chunks == 1:
            return torch.stack([text_cache[c] for c in captions])
        return stack_padded([text_cache[c] for c in captions], text_cache[""][:77])

    def loss_of(batch: Batch) -> torch.Tensor:
        batch = batch.to(accelerator.device)
        with accelerator.autocast():  # every module, also those accelerate did not wrap (the UNet under TI)
            return diffusion_loss(unet, noise_scheduler, batch, text_embeddings(batch.captions), t.min_snr_gamma,
                                  loss_shape)

    # 8. the loop
    writer = _tensorboard(run, on_event) if main else None
    unet.train()
    step = start
    with stop_at_step_end(commands) as stop:
        for step in range(start, total):
            batch = train_batch(step, plan.batch_for_step(step))
            prior = prior_batch(step, prior_plan.batch_for_step(step)) if priors else None
            step_loss = 0.0
            for micro in range(t.gradient_accumulation):
                part = slice((micro * world + rank) * t.batch_size, (micro * world + rank + 1) * t.batch_size)
                torch.manual_seed(int(seeded(t.seed, step, micro, rank).initial_seed()))  # LoRA dropout
                with accelerator.accumulate(*modules):
                    loss = loss_of(batch.part(part))
                    if prior is not None:
                        loss = loss + job.dreambooth.prior_loss_weight * loss_of(prior.part(part))
                    optimizer_step(loss, optimizer, params, t.max_grad_norm, accelerator, method.frozen(step))
                step_loss += accelerator.reduce(loss.detach(), "mean").item() / t.gradient_accumulation
            check_finite(step_loss, step + 1, lambda: _last_checkpoint(run), DIVERGED_FIX)
            shown = {"loss": f"{step_loss:.4f}"}
            if norm_layers:  # kohya's max-norm: before the EMA takes the step's weights
                norms = apply_max_norm(norm_layers, t.scale_weight_norms)
                shown.update({"keys scaled": str(norms.scaled), "key norm": f"{norms.mean:.3g}"})
                if writer:
                    writer.add_scalar("keys_scaled", norms.scaled, step + 1)
                    writer.add_scalar("average_key_norm", norms.mean, step + 1)
                    writer.add_scalar("max_key_norm", norms.largest, step + 1)
            after_step(lr_schedule, ema, params)
            method.after_step(pipe)
            losses.append(step_loss)
            if writer:
                writer.add_scalar("loss", step_loss, step + 1)
                writer.add_scalar("lr", lr_schedule.get_last_lr()[0], step + 1)
            on_event(Progress("train", step + 1, total, shown))
            saved = bool(t.save_every and (step + 1) % t.save_every == 0 and step + 1 < total)
            asked = commands.take()  # "save" / "sample" from the job interface
            if "save" in asked and step + 1 < total and not saved:
                saved = True
                on_event(Message(f"saving a checkpoint at step {step + 1}, as asked"))
            if saved and main:
                saver.checkpoint(step + 1)
            if "sample" in asked and main:
                saver.sample(step + 1)
            accelerator.wait_for_everyone()
            if _stop_wanted(stop, accelerator):  # Ctrl-C / SIGTERM / "stop": a checkpoint of step + 1 steps, then exit
                name = NAMES.get(stop.signum, "stop")
                if main and not saved:
                    on_event(Message(f"{name}: saving a checkpoint at step {step + 1} before exiting", "warning"))
                    saver.checkpoint(step + 1)
                elif main:
                    on_event(Message(f"{name}: stopping after the checkpoint at step {step + 1}", "warning"))
                accelerator.wait_for_everyone()
                raise Stopped(stop.signum if stop.signum is not None else None if stop.stop_asked else signal.SIGTERM)
        # 9. the final exports, checked, at the run's top level (a stop asked for now waits for them)
        result = TrainResult(run, total, losses)
        if main:
            result.exports, result.checks = saver.checkpoint(total, final=True)
            result.skipped = list(method.skipped)
            for why in result.skipped:
                on_event(Message(f"not exported: {why}"))  # nothing to act on: the other exports hold the model
    accelerator.wait_for_everyone()
    if writer:
        writer.close()
    return result


class _Draws:
    """The batch of one optimizer step from a set of examples: flips, then `draw_batch`, then caption noise."""

    def __init__(self, job: TrainJob, examples, cache: LatentCache, timesteps: tuple[int, int], scaling: float,
                 tag: int, masks: MaskCache | None = None, steps_per_epoch: int = 1):
        self.job, self.examples, self.cache, self.tag, self.masks = job, examples, cache, tag, masks
        self.scaling, self.timesteps = scaling, timesteps  # drawn from timesteps[0] .. timesteps[1] - 1
        self.steps_per_epoch = steps_per_epoch

    def caption(self, i: int, rng: random.Random, step: int = 0) -> str:
        if self.tag:  # class images: their caption as is
            return self.examples[i].caption
        d, ex = self.job.data, self.examples[i]
        every = d.caption_dropout_every_n_epochs  # kohya counts epochs from 1: epochs N, 2N, ... go uncaptioned
        if every and (step // self.steps_per_epoch + 1) % every == 0:
            return ""
        keep = ex.keep_tokens if d.keep_tokens is None else d.keep_tokens
        return noisy_caption(ex.caption, rng, d.shuffle_tags, keep, d.caption_dropout, d.caption_tag_dropout)

    def __call__(self, step: int, ids: list[int]) -> Batch:
        t = self.job.train
        gen = seeded(t.seed, step, self.tag)
        n = len(ids)
        flips = (torch.rand(n, generator=gen) < 0.5).tolist() if self.job.data.flip and not self.tag else [False] * n
        posteriors = [self.cache.get(i, f) for i, f in zip(ids, flips)]
        rng = random.Random(f"{t.seed}-{step}-{self.tag}")
        captions = [self.caption(i, rng, step) for i in ids]
        batch = draw_batch(gen, posteriors, captions, self.scaling, self.timesteps[1], t.noise_offset,
                           self.timesteps[0], t.multires_noise_iterations, t.multires_noise_discount,
                           t.ip_noise_gamma, t.ip_noise_gamma_random_strength, t.noise_offset_random_strength,
                           t.adaptive_noise_scale)
        if self.masks is not None:  # the loss weights, flipped with their images (class images have none)
            size = tuple(batch.latents.shape[-2:])
            batch.masks = torch.stack([self.masks.get(i, f, size) for i, f in zip(ids, flips)])
        return batch


def timestep_range(min_timestep: int, max_timestep: int | None, num_train_timesteps: int) -> tuple[int, int]:
    """The timesteps a run trains on, [min, max), checked against the model's scheduler."""
    high = num_train_timesteps if max_timestep is None else max_timestep
    if high > num_train_timesteps or min_timestep >= high:
        raise UserError(f"train.min_timestep / max_timestep ({min_timestep} / {max_timestep}) ask for timesteps "
                        f"the base model's scheduler does not have: it has 0 .. {num_train_timesteps - 1}",
                        f"Set train.max_timestep to at most {num_train_timesteps} and train.min_timestep below it, or "
                        "remove them to train on every timestep.")
    return min_timestep, high


def _stop_wanted(stop, accelerator) -> bool:
    """Has any process been asked to stop? (All processes must leave the loop at the same step.)"""
    if accelerator.num_processes == 1:
        return stop.stopping
    flag = torch.tensor([1.0 if stop.stopping else 0.0], device=accelerator.device)
    return accelerator.reduce(flag, "sum").item() > 0


def _last_checkpoint(run: Path) -> str | None:
    last = ckpt.list_checkpoints(run)
    return str(last[-1][1]) if last else None


def _tensorboard(run: Path, on_event: EventHandler = ignore):
    """A TensorBoard writer into <run>/logs, or None (said once) when TensorBoard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        on_event(Message("TensorBoard is not installed: no logs/ (pip install tensorboard)"))
        return None
    on_event(Message(f"TensorBoard logs: {run / 'logs'} (tensorboard --logdir {run / 'logs'})"))
    return SummaryWriter(str(run / "logs"))


def _trigger_words(job: TrainJob) -> list[str]:
    """What the captions should hold: the trigger word and the method's new tokens."""
    section = METHODS[job.method].tokens_section
    return [job.trigger] + ([spec.token for spec in getattr(job, section).tokens] if section else [])
