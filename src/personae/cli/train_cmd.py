"""`personae train JOB.yaml`: LoRA, DreamBooth, textual inversion or pivotal tuning."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

EXAMPLES = """examples:
  personae train job.yaml
  personae train job.yaml --set train.steps=400 --set lora.rank=8
  personae train job.yaml --resume            # continue from the newest checkpoint
  personae train config_lora.toml             # kohya's sd-scripts / kohya_ss config: the same run
  accelerate launch --num_processes 2 -m personae train job.yaml

a job file:
  version: 1
  base_model: ./tiny            # folder, single file, or hub id
  method: lora                  # lora | dreambooth | textual_inversion | pivotal
  data: {path: ./prepared}      # a `personae prepare` output, or a raw folder
  train: {steps: 200, batch_size: 2, learning_rate: 1.0e-4, min_snr_gamma: 5, seed: 0, resolution: 64}
  lora: {rank: 8, alpha: 8, text_encoder: false}
  output: ./runs/demo
"""


def add_parser(sub) -> None:
    from personae.cli.options import settings_epilog
    from personae.config.train import TrainJob

    settings = settings_epilog(TrainJob, "settings (keys of JOB.yaml; on the command line --set KEY=VALUE)")
    p = sub.add_parser("train", help="train a LoRA, DreamBooth, textual inversion or pivotal tuning",
                       description="Run one training job; writes checkpoints, validation grids, a loss curve and "
                                   "exports (kohya/A1111 and diffusers layouts), each reloaded and checked.",
                       epilog=EXAMPLES + "\n" + settings, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("job", metavar="JOB.yaml", help="a personae job file, or kohya's training config (.toml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a job setting")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the run folder")
    p.add_argument("--overwrite", action="store_true",
                   help="start again in an existing run folder (removes only what earlier runs wrote there)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args) -> int:
    from personae.cli.progress import TerminalProgress
    from personae.jobs.runner import JobHandle
    from personae.jobs.train import load_job
    from personae.training.stopping import NAMES, Stopped

    notes: list[str] = []
    job = load_job(args.job, args.set, notes)
    if notes:  # a kohya config: what it sets that personae does not need, said once
        print(f"{args.job}: not needed here: " + "; ".join(notes), file=sys.stderr)
    progress = TerminalProgress(quiet=args.quiet)
    handle = JobHandle(job, resume=args.resume, overwrite=args.overwrite)

    def on_signal(signum, frame):
        """Ctrl-C / SIGTERM send "stop" (a checkpoint at the step's end); a second Ctrl-C stops at once."""
        if handle.commands.signum is not None and signum == signal.SIGINT:
            handle.interrupt()  # asked twice: at once (KeyboardInterrupt in the run; the last checkpoint is kept)
        else:
            handle.stop(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        handle.start()  # a signal before this is a stop the job sees before its first stage
        for event in handle.events():
            progress(event)
        result = handle.result()
    except Stopped as stop:
        progress.close()
        how = NAMES.get(stop.signum, "a signal") if stop.signum is not None else "a stop command"
        print(f"stopped by {how}; continue with: personae train {args.job} --resume", file=sys.stderr)
        return 128 + (stop.signum or signal.SIGINT)
    finally:
        progress.close()
        for s, h in previous.items():
            signal.signal(s, h)
    print(summary(job, result))
    return 0


def summary(job, result) -> str:
    """Every output of a finished run: exports with their format, what was not exported and why, the reload
    checks, checkpoints kept, validation grids, the loss record, TensorBoard logs."""
    from personae.runs import read_run

    run = result.run
    lines = [f"trained {job.method} for {result.steps} steps; files in {run}:"]
    for f in result.exports:
        dtype = job.output_dtype if f.loader in ("lora", "embedding") else "fp32"
        lines.append(f"  {f.path.relative_to(run)}  ({f.format}, loads as {f.loader}, {dtype})")
    for why in result.skipped:
        lines.append(f"  not exported: {why}")
    for c in result.checks:
        lines.append(f"  reload check [{c.family}]: max difference {c.max_abs_diff:.1e} "
                     f"(tolerance {c.tolerance:.0e}: {'ok' if c.ok else 'MISMATCH'})")
    kept = read_run(run).checkpoints
    if kept:
        lines.append(f"  checkpoints/  ({len(kept)} kept: steps {', '.join(str(c.step) for c in kept)}; "
                     f"continue with --resume)")
    grids = sorted((run / "validation").glob("step-*.png"))
    if grids:
        lines.append(f"  validation/  ({len(grids)} grids, base model above each step's samples; "
                     f"last {grids[-1].name})")
    for name, what in [("loss.png", "loss curve"), ("losses.csv", "loss per step"), ("run.json", "run record")]:
        if (run / name).is_file():
            lines.append(f"  {name}  ({what})")
    if (run / "logs").is_dir():
        lines.append(f"  logs/  (TensorBoard: tensorboard --logdir {run / 'logs'})")
    return "\n".join(lines)
