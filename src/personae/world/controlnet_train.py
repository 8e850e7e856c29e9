"""Train the world ControlNet: the world model's UNet copied into a ControlNet that places shapes.

    train_controlnet(WorldControlNet(), Path("./world-controlnet"))   # the shipped run (under 30 minutes)
    personae world controlnet ./world-controlnet --set steps=200      # the same from the command line, shortened

  1. the base model (frozen) and diffusers' `ControlNetModel.from_unet` of its UNet: the encoder
     and middle block copied, the zero convolutions at zero, a conditioning embedding that takes
     the 32 px control map to the 8x8 latents (two stride-2 stages);
  2. data: `dataset_size` rendered pairs at any position and size (world/placed.py: the held-out
     shapes and colour pairs never appear), every picture's VAE posterior and caption embedding
     computed once, both control maps drawn for every picture;
  3. the ControlNet learns the denoising loss of the frozen UNet with its residuals added, one
     control type per pair at random, captions dropped to "" at `caption_dropout`;
  4. every `eval.every` steps, and at the end, the ControlNet is written and measured as users run
     it (`personae generate --control`, world/control_eval.py) on held-out controls;
  5. OUT becomes the ControlNet's diffusers folder (`--controlnet canny=OUT`), with OUT/training/:
     settings, losses, the measurements and sample sheets (control maps above, results below).

Every random draw comes from a generator seeded by (seed, phase, step): same settings and thread
count, same weights.
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
from diffusers import ControlNetModel, DDPMScheduler
from diffusers.optimization import get_scheduler

from personae.events import EventHandler, Message, Progress, ignore
from personae.inference.session import open_session
from personae.models.folders import readable_by_others
from personae.models.resolve import load_pipeline, resolve_model
from personae.training.step import Batch, check_finite, diffusion_loss, draw_noise, optimizer_step, seeded
from personae.world.control_eval import measure_placement, sheet
from personae.world.controlnet_settings import WorldControlNet
from personae.world.model import world_model_dir
from personae.world.placed import eval_placed, random_placed, training_pair
from personae.world.pretrain import encode_all, to_pixels, tokenize, train_into_folder


@dataclass
class ControlNetResult:
    out: Path
    steps: int  # steps done (fewer than asked when the time budget ran out)
    losses: list[float] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)  # {"step": n, "canny": {"placed": .., ...}, "silhouette": {...}}
    seconds: dict[str, float] = field(default_factory=dict)  # data, train (without measurements), measure, total


class Controlled(torch.nn.Module):
    """The frozen UNet with the ControlNet's residuals for `cond` added: called like a UNet, so the training
    step's own loss (training/step.py) trains the ControlNet."""

    def __init__(self, unet, controlnet, cond: torch.Tensor):
        super().__init__()
        self.unet, self.controlnet, self.cond = unet, controlnet, cond

    def forward(self, sample, timesteps, encoder_hidden_states):
        down, mid = self.controlnet(sample, timesteps, encoder_hidden_states=encoder_hidden_states,
                                    controlnet_cond=self.cond, return_dict=False)
        return self.unet(sample, timesteps, encoder_hidden_states=encoder_hidden_states,
                         down_block_additional_residuals=down, mid_block_additional_residual=mid)


def build_controlnet(unet, s: WorldControlNet) -> ControlNetModel:
    """ControlNetModel.from_unet with the settings' conditioning channels; its new layers seeded by `s.seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=tuple(s.conditioning_channels))


def train_controlnet(s: WorldControlNet, out: str | Path, overwrite: bool = False,
                     on_event: EventHandler = ignore) -> ControlNetResult:
    """The caller sets the torch thread count (the CLI sets `s.threads`): weights reproduce at a fixed count."""
    result = train_into_folder("personae world controlnet", s.threads, out, overwrite, on_event,
                               lambda partial, started: _train(s, partial, started, on_event))
    on_event(Message(f"wrote the world ControlNet to {result.out} ({result.steps} steps)"))
    return result


def _data(s: WorldControlNet, pipe, on_event: EventHandler):
    """Posteriors, control maps (uint8, one per type, N x 32 x 32), caption indices and the caption embeddings."""
    rng = np.random.default_rng([s.seed, 7])
    placements = [random_placed(rng, box_range=tuple(s.box_range)) for _ in range(s.dataset_size)]
    on_event(Message(f"rendering {len(placements)} (control, picture) pairs"))
    pairs = [training_pair(p, tuple(s.control_types)) for p in placements]
    pixels = to_pixels(np.stack([np.asarray(image) for image, _ in pairs]))
    maps = torch.stack([torch.from_numpy(np.stack([np.asarray(m[kind])[..., 0] for _, m in pairs]))
                        for kind in s.control_types])
    del pairs
    with torch.no_grad():
        means, stds = encode_all(pipe.vae, pixels)
        captions = sorted({p.caption() for p in placements})
        embeds = pipe.text_encoder(tokenize(pipe.tokenizer, captions + [""]))[0]
    index = {c: i for i, c in enumerate(captions)}
    caption_ids = torch.tensor([index[p.caption()] for p in placements])
    return means, stds, maps, caption_ids, embeds


def _train(s: WorldControlNet, out: Path, started: float, on_event: EventHandler) -> ControlNetResult:
    log = out / "training"
    log.mkdir()
    (log / "settings.yaml").write_text(yaml.safe_dump(s.model_dump(mode="json"), sort_keys=False))
    result = ControlNetResult(out, 0)
    # 1. the frozen base model and the ControlNet copied from its UNet
    base = world_model_dir(s.base)
    pipe = load_pipeline(resolve_model(str(base)))
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False)
        module.eval()
    controlnet = build_controlnet(pipe.unet, s)
    # 2. data
    t0 = time.monotonic()
    means, stds, maps, caption_ids, embeds = _data(s, pipe, on_event)
    empty = len(embeds) - 1
    scaling = pipe.vae.config.scaling_factor
    result.seconds["data"] = time.monotonic() - t0
    # 3. the ControlNet learns
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    params = [p for p in controlnet.parameters()]
    optimizer = torch.optim.AdamW(params, lr=s.learning_rate, weight_decay=0.0)
    lr_schedule = get_scheduler(s.lr_scheduler, optimizer, num_warmup_steps=s.warmup_steps, num_training_steps=s.steps)
    session = open_session(str(base), device="cpu")
    measuring = 0.0

    def evaluate(step: int) -> None:
        nonlocal measuring
        t = time.monotonic()
        controlnet.eval()
        with tempfile.TemporaryDirectory(prefix="personae-world-controlnet-") as tmp:
            saved = Path(tmp) / "controlnet"
            controlnet.save_pretrained(str(saved), safe_serialization=True)
            found, rows = {"step": step}, []
            for kind in s.control_types:
                placements = eval_placed(s.eval.controls)
                scores = measure_placement(session, str(saved), placements, kind, Path(tmp) / kind,
                                           steps=s.eval.steps, cfg=s.eval.cfg)
                found[kind] = {k: round(v, 4) for k, v in scores.shares.items()}
                found[kind]["mean_distance"] = round(scores.mean_distance, 3)
                rows += [[m for m in _maps(Path(tmp) / kind, kind, 16)], scores.images[:16]]
        sheet(rows).save(log / f"samples-{step:06d}.png")
        result.evals.append(found)
        on_event(Message(f"step {step}: " + "; ".join(
            f"{kind} placed {found[kind]['placed']:.0%} (prompt {found[kind]['prompt']:.0%})" for kind in s.control_types)))
        controlnet.train()
        measuring += time.monotonic() - t

    controlnet.train()
    budget = s.time_budget_minutes * 60 if s.time_budget_minutes else math.inf
    t0 = time.monotonic()
    step = 0
    for step in range(1, s.steps + 1):
        gen = seeded(s.seed, 5, step)
        # 1. pairs: a sampled latent, one of its control maps, its caption (some dropped)
        idx = torch.randint(0, len(means), (s.batch_size,), generator=gen)
        z = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * scaling
        kind = torch.randint(0, len(maps), (s.batch_size,), generator=gen)
        cond = (maps[kind, idx].float() / 255.0)[:, None].expand(-1, 3, -1, -1)
        drop = torch.rand(s.batch_size, generator=gen) < s.caption_dropout
        hidden = embeds[torch.where(drop, torch.full_like(idx, empty), caption_ids[idx])]
        # 2. noise at random timesteps; the UNet with the ControlNet's residuals predicts it
        noise, timesteps = draw_noise(gen, tuple(z.shape), noise_scheduler.config.num_train_timesteps)
        controlled = Controlled(pipe.unet, controlnet, cond)
        loss = diffusion_loss(controlled, noise_scheduler, Batch(z, noise, timesteps), hidden)
        # 3. backward, clip, step (the ControlNet only)
        optimizer_step(loss, optimizer, params, s.max_grad_norm)
        lr_schedule.step()
        result.losses.append(loss.item())
        check_finite(result.losses[-1], step, lambda: None, "Lower learning_rate or set max_grad_norm.")
        on_event(Progress("controlnet", step, s.steps, {"loss": f"{result.losses[-1]:.4f}"}))
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
    # 4. the ControlNet's folder and the training record
    controlnet.save_pretrained(str(out), safe_serialization=True)
    readable_by_others(out)
    result.seconds["total"] = time.monotonic() - started
    _write_record(log, result)
    return result


def _maps(folder: Path, kind: str, count: int):
    from PIL import Image

    return [Image.open(folder / f"map-{kind}-{i:02d}.png").convert("RGB") for i in range(count)
            if (folder / f"map-{kind}-{i:02d}.png").is_file()]


def _write_record(log: Path, result: ControlNetResult) -> None:
    with open(log / "losses.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("step", "loss")] + [(i + 1, f"{v:.6f}") for i, v in enumerate(result.losses)])
    summary = {"steps": result.steps, "seconds": {k: round(v, 1) for k, v in result.seconds.items()},
               "cpu_seconds": round(time.process_time(), 1), "evals": result.evals}
    (log / "summary.json").write_text(json.dumps(summary, indent=1))
