"""`personae world pretrain OUT`: pretrain the shapes-world model from scratch."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  personae world pretrain ./world                       # the full run: about 35 minutes on 2 CPU cores
  personae world pretrain ./world --steps 300 --set vae.steps=100 --set dataset_size=2048
  personae world pretrain ./world --set seed=1 --set threads=2 --overwrite
  personae generate --model ./world --prompt "a green square on a yellow background, close-up" --sampler DDIM --cfg 4

settings (--set KEY=VALUE; defaults are the full run):
  seed, dataset_size, threads, time_budget_minutes
  vae.steps, vae.batch_size, vae.learning_rate, vae.kl_weight
  unet.steps, unet.batch_size, unet.learning_rate, unet.lr_scheduler, unet.warmup_steps,
  unet.weight_decay, unet.max_grad_norm, unet.caption_dropout, unet.ema_decay
  eval.every, eval.samples, eval.steps, eval.cfg
"""


def add_parser(sub) -> None:
    p = sub.add_parser("world", help="pretrain the small shapes-world model",
                       description="The shapes world: a small SD-1.5-architecture model pretrained by us on "
                                   "procedural images whose every property can be checked exactly.")
    kinds = p.add_subparsers(dest="kind", metavar="ACTION")
    pre = kinds.add_parser("pretrain", help="train the VAE, text encoder and UNet from scratch", epilog=EXAMPLES,
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           description="Pretrain the world model from scratch and write it to OUT as a diffusers "
                                       "folder (with OUT/training/: settings, losses, evaluations, sample sheets). "
                                       "Same settings and thread count, same weights.")
    pre.add_argument("out", metavar="OUT", help="folder to write (diffusers layout)")
    pre.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    pre.add_argument("--steps", type=int, help="UNet steps (shortcut for --set unet.steps=N)")
    pre.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    pre.add_argument("--quiet", action="store_true", help="no progress bar")
    pre.set_defaults(run=run_pretrain)
    p.set_defaults(run=lambda args: p.print_help() or 2)


def run_pretrain(args) -> int:
    from personae.cli.progress import TerminalProgress
    from personae.config.base import apply_overrides, parse_settings
    from personae.config.world import WorldPretrain
    from personae.training.world_pretrain import pretrain

    overrides = list(args.set) + ([f"unet.steps={args.steps}"] if args.steps is not None else [])
    settings = parse_settings(WorldPretrain, apply_overrides({}, overrides), "--set")
    progress = TerminalProgress(quiet=args.quiet)
    try:
        result = pretrain(settings, args.out, overwrite=args.overwrite, on_event=progress)
    finally:
        progress.close()
    last = result.evals[-1] if result.evals else {}
    print(f"pretrained the world model in {sum(result.seconds.values()) / 60:.1f} min "
          f"({len(result.vae_losses)} VAE steps, {result.unet_steps} UNet steps) into {result.out}")
    if last:
        print("right on the 16 evaluation prompts: " +
              ", ".join(f"{k} {v:.0%}" for k, v in last.items() if k not in ("step", "probe_loss")))
    return 0
