"""Seconds per step of `personae world pretrain` at its full-run batch sizes, and what fits in a budget.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_world.py --threads 1 2 --steps 20

Runs the real pretraining code on a small dataset (VAE and UNet phases, a few steps each)
and prints, per thread count, seconds per VAE and per UNet step (batch 64), the time of
one evaluation (64 images, DDIM 25, CFG 4) and how many UNet steps fit in 30 minutes.
Run it alone: other processes on the same cores change the numbers several-fold.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from personae.cli.main import quiet_libraries
from personae.config.base import apply_overrides, parse_settings
from personae.world.pretrain import pretrain
from personae.world.pretrain_settings import WorldPretrain


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eval", action="store_true", help="also time one full evaluation")
    args = parser.parse_args()
    quiet_libraries()
    print("threads  vae s/step  unet s/step  eval s  unet steps in 30 min")
    for threads in args.threads:
        overrides = [f"threads={threads}", "dataset_size=1024", f"vae.steps={args.steps}", f"unet.steps={args.steps}",
                     "eval.every=0", "time_budget_minutes=30"]
        if not args.eval:
            overrides += ["eval.samples=16", "eval.steps=1"]
        settings = parse_settings(WorldPretrain, apply_overrides({}, overrides))
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.monotonic()
            result = pretrain(settings, Path(tmp) / "world")
            total = time.monotonic() - t0
        vae = result.seconds["vae"] / args.steps  # includes encoding the 1024 images once
        unet = result.seconds["unet"] / args.steps
        rest = total - result.seconds["vae"] - result.seconds["unet"]
        print(f"{threads:7d}  {vae:10.3f}  {unet:11.3f}  {rest if args.eval else float('nan'):6.1f}  {1800 / unet:8.0f}")


if __name__ == "__main__":
    main()
