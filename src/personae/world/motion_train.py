"""Train the world motion adapter: AnimateDiff's motion modules, sized to the world UNet, on rendered clips.

    train_motion(WorldMotion(), Path("./world-motion"))   # the run of docs/world.md ("World motion")
    personae world motion ./world-motion --set steps=200  # the same from the command line, shortened

  1. the base model (frozen) and a diffusers `MotionAdapter` with the world UNet's channels, layers per block and
     norm groups, joined into a `UNetMotionModel` by the code `personae animate` runs (inference/animate.py);
     each motion module's output projection starts at zero, as AnimateDiff's do, so the untrained adapter
     leaves every frame as the image model draws it;
  2. data: `dataset_size` rendered clips (world/clips.py: the held-out colour pairs never appear), every frame's
     VAE posterior and every caption's embedding (personae's own prompt encoder, clip skip 1) computed once;
  3. the motion modules learn the denoising loss of whole clips (one timestep and caption per clip) on the noise
     schedule animate samples with (AnimateDiff's linear betas), captions dropped to "" at `caption_dropout`;
     with them, at `lora.learning_rate`, a LoRA on the image UNet's cross-attention (world/motion_lora.py: the
     frozen UNet barely reads the motion words; the LoRA teaches it to), unless `lora.rank` is 0, and one
     embedding per motion phrase on a leash (world/motion_words.py), unless `words.learning_rate` is 0; and a motion
     condition (inference/motion_condition.py), unless `condition.learning_rate` is 0: the motion modules are given
     each clip's true motion as a track growing with the frame, and a head learns to read that motion from the
     caption's words (its squared error beside the denoising loss); animate then uses the head's reading;
  4. every `eval.every` steps, and at the end, the adapter is written and measured as users run it
     (`personae animate --motion-adapter`, world/motion_eval.py) on held-out clips;
  5. OUT becomes the adapter's diffusers folder (`--motion-adapter OUT`), with the LoRA as a kohya file
     (`--lora OUT/motion-lora.safetensors`), the words as A1111 embeddings (OUT/motion-words/), the condition
     (OUT/motion-condition.safetensors, which animate finds there) and OUT/training/:
     settings, losses,
     the measurements, a sheet (a row of frames per clip) and GIFs of the measured clips.

Every random draw comes from a generator seeded by (seed, phase, step): same settings and thread count, same
weights.
"""

from __future__ import annotations

import csv
import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from diffusers import DDPMScheduler, MotionAdapter
from diffusers.optimization import get_scheduler

from personae.events import EventHandler, Message, Progress, ignore
from personae.inference.animate import MOTION_SCHEDULE, motion_unet
from personae.inference.motion_condition import CONDITION_FILE, MotionCondition
from personae.inference.session import open_session
from personae.models.folders import readable_by_others
from personae.training.step import Batch, check_finite, diffusion_loss, draw_noise, optimizer_step, seeded
from personae.world.clips import MOTION_VECTORS, random_clip
from personae.world.model import world_model_dir
from personae.world.motion_eval import clip_sheet, measure_rows
from personae.world.motion_lora import add_motion_lora, lora_parameters, write_motion_lora
from personae.world.motion_settings import LORA_FILE, WORDS_DIR, WorldMotion
from personae.world.motion_words import (
    add_motion_words,
    caption_token_ids,
    leash,
    only_rows,
    world_norm,
    write_motion_words,
)
from personae.world.pretrain import encode_all, to_pixels, train_into_folder


@dataclass
class MotionResult:
    out: Path
    steps: int  # steps done (fewer than asked when the time budget ran out)
    losses: list[float] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)  # {"step": n, "rows": [{run, identity, direction, ...}]}
    seconds: dict[str, float] = field(default_factory=dict)  # data, train (without measurements), measure, total
    frames: dict = field(default_factory=dict)  # the last measurement's clips (a list of frames per clip), by row


def build_adapter(unet, s: WorldMotion) -> MotionAdapter:
    """A MotionAdapter with the UNet's levels, seeded by `s.seed`; output projections at zero (AnimateDiff's start)."""
    config = unet.config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        adapter = MotionAdapter(
            block_out_channels=tuple(config.block_out_channels), motion_layers_per_block=config.layers_per_block,
            motion_transformer_layers_per_block=1, motion_mid_block_layers_per_block=1,
            motion_num_attention_heads=s.heads, motion_norm_num_groups=config.norm_num_groups,
            motion_max_seq_length=s.max_seq_length, use_motion_mid_block=True)
    with torch.no_grad():
        for name, param in adapter.named_parameters():
            if ".proj_out." in name:
                param.zero_()
    return adapter


def motion_state(model) -> dict[str, torch.Tensor]:
    """The motion modules' weights of a UNetMotionModel, under the MotionAdapter's names (the same keys)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if ".motion_modules." in k}


def train_motion(s: WorldMotion, out: str | Path, overwrite: bool = False,
                 on_event: EventHandler = ignore) -> MotionResult:
    """The caller sets the torch thread count (the CLI sets `s.threads`): weights reproduce at a fixed count."""
    result = train_into_folder("personae world motion", s.threads, out, overwrite, on_event,
                               lambda partial, started: _train(s, partial, started, on_event))
    on_event(Message(f"wrote the world motion adapter to {result.out} ({result.steps} steps)"))
    return result


def _data(s: WorldMotion, session, on_event: EventHandler):
    """Posteriors (N x frames x 4 x 8 x 8, mean and std), caption indices, the caption embeddings ("" last), the
    captions and each clip's motion vector (clips.MOTION_VECTORS: the motion condition's target)."""
    rng = np.random.default_rng([s.seed, 7])
    clips = [random_clip(rng, frames=s.frames) for _ in range(s.dataset_size)]
    on_event(Message(f"rendering {len(clips)} clips of {s.frames} frames"))
    means, stds = [], []
    with torch.no_grad():
        for start in range(0, len(clips), 64):
            part = clips[start:start + 64]
            pixels = to_pixels(np.stack([np.asarray(f) for c in part for f in c.frames()]))
            m, d = encode_all(session.pipe.vae, pixels)
            means.append(m.reshape(len(part), s.frames, *m.shape[1:]))
            stds.append(d.reshape(len(part), s.frames, *d.shape[1:]))
            on_event(Progress("clips", start + len(part), len(clips)))
        captions = sorted({c.caption() for c in clips})
        embeds = torch.cat([session.encoder.encode(c, clip_skip=1).embeds for c in captions + [""]])
    index = {c: i for i, c in enumerate(captions)}
    return (torch.cat(means), torch.cat(stds), torch.tensor([index[c.caption()] for c in clips]), embeds,
            captions + [""], torch.tensor([MOTION_VECTORS[c.motion] for c in clips]))


def _train(s: WorldMotion, out: Path, started: float, on_event: EventHandler) -> MotionResult:
    log = out / "training"
    log.mkdir()
    (log / "settings.yaml").write_text(yaml.safe_dump(s.model_dump(mode="json"), sort_keys=False))
    result = MotionResult(out, 0)
    # 1. the frozen base model and the motion UNet animate builds from it
    base = str(world_model_dir(s.base))
    session = open_session(base, device="cpu")
    pipe = session.pipe
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False)
        module.eval()
    if s.lora.rank:  # on the image UNet, carried into the motion UNet as animate carries a --lora
        add_motion_lora(pipe.unet, s.lora, s.seed)
    word_ids = add_motion_words(pipe, s.seed) if s.words.learning_rate else []
    adapter = build_adapter(pipe.unet, s)
    model = motion_unet(pipe.unet, adapter)
    motion_params = [p for name, p in model.named_parameters() if ".motion_modules." in name]
    lora_params = lora_parameters(model) if s.lora.rank else []
    condition = None
    if s.condition.learning_rate:  # seeded like the adapter; its layers start at zero, so the model is unchanged
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s.seed + 1)
            condition = MotionCondition.for_unet(model, pipe.tokenizer, s.condition.from_timestep)
        condition.attach(model)
    condition_params = list(condition.parameters()) if condition else []
    params = motion_params + lora_params
    model.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    params += condition_params
    # 2. data
    t0 = time.monotonic()
    means, stds, caption_ids, embeds, captions, vectors = _data(s, session, on_event)
    words_of = condition.token_ids(pipe.tokenizer, captions) if condition else []  # what the head reads ("" last)
    if word_ids:  # captions are encoded every step, through the new tokens' vectors
        table = pipe.text_encoder.get_input_embeddings().weight
        table.requires_grad_(True)
        only_rows(table, word_ids)
        params.append(table)
        token_ids, limit = caption_token_ids(pipe.tokenizer, captions), world_norm(pipe) * s.words.max_norm
        leash(pipe.text_encoder, word_ids, limit)
    empty = len(embeds) - 1
    scaling = pipe.vae.config.scaling_factor
    result.seconds["data"] = time.monotonic() - t0
    # 3. the motion modules learn
    noise_scheduler = DDPMScheduler.from_config({**pipe.scheduler.config, **MOTION_SCHEDULE})
    groups = [{"params": motion_params, "lr": s.learning_rate}]
    if lora_params:
        groups.append({"params": lora_params, "lr": s.lora.learning_rate})
    if word_ids:
        groups.append({"params": [table], "lr": s.words.learning_rate})
    if condition:
        groups.append({"params": condition_params, "lr": s.condition.learning_rate})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    lr_schedule = get_scheduler(s.lr_scheduler, optimizer, num_warmup_steps=s.warmup_steps, num_training_steps=s.steps)
    measuring = 0.0

    def evaluate(step: int) -> None:
        nonlocal measuring
        t = time.monotonic()
        model.eval()
        adapter.load_state_dict(motion_state(model))
        with tempfile.TemporaryDirectory(prefix="personae-world-motion-") as tmp:
            adapter.save_pretrained(tmp, safe_serialization=True)
            lora = str(write_motion_lora(model, Path(tmp) / LORA_FILE, s.lora, step, s.base)) if lora_params else None
            words = [(str(p), p.stem) for p in write_motion_words(pipe, word_ids, Path(tmp) / WORDS_DIR)] \
                if word_ids else []
            if condition:  # animate finds it in the adapter's folder
                condition.save(Path(tmp) / CONDITION_FILE)
            rows, frames = measure_rows(base, tmp, s.eval.clips, s.eval.long_clips, s.eval.steps, s.eval.cfg, on_event,
                                        lora=lora, embeddings=words)
        clip_sheet(next(iter(frames.values()))).save(log / f"samples-{step:06d}.png")
        result.evals.append({"step": step, "rows": rows})
        result.frames = frames
        model.train()
        measuring += time.monotonic() - t

    model.train()
    budget = s.time_budget_minutes * 60 if s.time_budget_minutes else math.inf
    t0 = time.monotonic()
    step = 0
    for step in range(1, s.steps + 1):
        gen = seeded(s.seed, 5, step)
        # 1. clips: sampled latents (batch, channels, frames, h, w), one caption per clip (some dropped)
        idx = torch.randint(0, len(means), (s.batch_size,), generator=gen)
        z = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * scaling
        z = z.permute(0, 2, 1, 3, 4)
        drop = torch.rand(s.batch_size, generator=gen) < s.caption_dropout
        chosen = torch.where(drop, torch.full_like(idx, empty), caption_ids[idx])
        hidden = pipe.text_encoder(token_ids[chosen])[0] if word_ids else embeds[chosen]
        hidden = hidden.repeat_interleave(s.frames, dim=0)  # the motion UNet takes one embedding per frame
        # 2. noise at one random timestep per clip; the motion UNet predicts it
        noise, timesteps = draw_noise(gen, tuple(z.shape), noise_scheduler.config.num_train_timesteps)
        if condition:  # the modules learn from the true motion; the head learns to read it from the caption
            target = torch.where(drop[:, None], torch.zeros(3), vectors[idx])
            condition.given = target
        loss = diffusion_loss(model, noise_scheduler, Batch(z, noise, timesteps), hidden)
        if condition:
            read = condition.read(pipe.tokenizer, ids=[words_of[i] for i in chosen.tolist()])
            loss = loss + s.condition.head_weight * torch.nn.functional.mse_loss(read, target)
        # 3. backward, clip, step (the motion modules, the LoRA, the new words' rows), the words back on the leash
        optimizer_step(loss, optimizer, params, s.max_grad_norm)
        if word_ids:
            leash(pipe.text_encoder, word_ids, limit)
        lr_schedule.step()
        result.losses.append(loss.item())
        check_finite(result.losses[-1], step, lambda: None, "Lower learning_rate or set max_grad_norm.")
        on_event(Progress("motion", step, s.steps, {"loss": f"{result.losses[-1]:.4f}"}))
        if s.eval.every and step % s.eval.every == 0 and step < s.steps:
            evaluate(step)
        if time.monotonic() - started > budget and step < s.steps:
            on_event(Message(f"time budget of {s.time_budget_minutes:g} minutes reached: stopping at step {step} "
                             f"of {s.steps}", "warning"))
            break
    result.steps = step
    result.seconds["train"] = time.monotonic() - t0 - measuring
    evaluate(step)
    result.seconds["measure"] = measuring
    # 4. the adapter's folder and the training record
    adapter.load_state_dict(motion_state(model))
    adapter.save_pretrained(str(out), safe_serialization=True)
    if lora_params:
        write_motion_lora(model, out / LORA_FILE, s.lora, step, s.base)
    if word_ids:
        write_motion_words(pipe, word_ids, out / WORDS_DIR)
    if condition:
        condition.save(out / CONDITION_FILE)
    readable_by_others(out)
    _write_gifs(log, result.frames)
    result.seconds["total"] = time.monotonic() - started
    _write_record(log, result)
    return result


def _write_gifs(log: Path, frames: dict) -> None:
    """The first measured clip of each motion at scale 1 (clip i moves as MOTIONS[i mod 6]), as animate writes GIFs."""
    from personae.media.video import write_gif
    from personae.world.clips import MOTIONS

    first = next(iter(frames.values()))
    for i, motion in enumerate(MOTIONS[:len(first)]):
        write_gif(first[i], log / f"clip-{motion}.gif", fps=8.0)


def _write_record(log: Path, result: MotionResult) -> None:
    with open(log / "losses.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("step", "loss")] + [(i + 1, f"{v:.6f}") for i, v in enumerate(result.losses)])
    summary = {"steps": result.steps, "seconds": {k: round(v, 1) for k, v in result.seconds.items()},
               "cpu_seconds": round(time.process_time(), 1), "evals": result.evals}
    (log / "summary.json").write_text(json.dumps(summary, indent=1))
