"""LoRA training step: personae's loop vs a minimal diffusers + peft loop on the same data and settings.

The reference is the plain recipe (encode latents each step, noise, UNet, MSE, AdamW) with
the same LoRA config and batch; personae adds caching, the deterministic batch plan,
checkpoints and export checks (switched off here so only the step is compared).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from peft import LoraConfig

from personae.cli.main import quiet_libraries
from personae.config.prepare import PrepareSettings
from personae.config.train import TrainJob
from personae.data.dataset import examples_from_prepared, load_pixels
from personae.data.prepare import prepare_dataset
from personae.data.samples import write_sample_subject
from personae.jobs.train import run_training
from personae.models.resolve import load_pipeline, resolve_model
from personae.models.tiny import write_tiny_model

STEPS, BATCH = 100, 4


def plain_loop(model: Path, prepared: Path) -> float:
    pipe = load_pipeline(resolve_model(str(model)))
    for part in (pipe.unet, pipe.vae, pipe.text_encoder):
        part.requires_grad_(False)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                     init_lora_weights="gaussian"))
    params = [p for p in pipe.unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    examples = examples_from_prepared(prepared)
    pixels = torch.stack([torch.from_numpy(load_pixels(e.image)) for e in examples])
    ids = pipe.tokenizer([e.caption for e in examples], padding="max_length", max_length=77, truncation=True,
                         return_tensors="pt").input_ids
    start = time.perf_counter()
    for step in range(STEPS):
        pick = torch.arange(step * BATCH, (step + 1) * BATCH) % len(examples)
        with torch.no_grad():
            latents = pipe.vae.encode(pixels[pick]).latent_dist.sample() * pipe.vae.config.scaling_factor
            embeds = pipe.text_encoder(ids[pick])[0]
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (BATCH,))
        pred = pipe.unet(noise_scheduler.add_noise(latents, noise, t), t, embeds).sample
        loss = F.mse_loss(pred, noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return (time.perf_counter() - start) / STEPS


def personae_loop(model: Path, prepared: Path, out: Path) -> float:
    job = TrainJob(base_model=str(model), method="lora", data={"path": str(prepared)}, output=str(out),
                   lora={"rank": 4, "alpha": 4},
                   train={"steps": STEPS, "batch_size": BATCH, "verify_exports": False, "validation": {"steps": 1}})
    times = []

    def on_event(event):
        if getattr(event, "stage", "") == "train":
            times.append(time.perf_counter())

    run_training(job, overwrite=True, on_event=on_event)
    return (times[-1] - times[0]) / (len(times) - 1)


def main() -> None:
    quiet_libraries()
    root = Path(tempfile.mkdtemp())
    model = write_tiny_model(root / "tiny")
    write_sample_subject(root / "photos", count=8)
    prepare_dataset(root / "photos", root / "prepared", PrepareSettings(resolution=64))
    theirs = plain_loop(model, root / "prepared")
    ours = personae_loop(model, root / "prepared", root / "run")
    print(f"threads {torch.get_num_threads()}, tiny model, LoRA rank 4, batch {BATCH}, {STEPS} steps")
    print(f"{'loop':<28}{'s / step':>10}")
    print(f"{'plain diffusers + peft':<28}{theirs:>10.4f}")
    print(f"{'personae train':<28}{ours:>10.4f}")
    print(f"ratio personae / plain: {ours / theirs:.2f}")


if __name__ == "__main__":
    sys.exit(main())
