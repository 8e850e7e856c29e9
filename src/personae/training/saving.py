"""Saving a run while it trains: checkpoints, exports and their checks, validation grids, the loss record.

    saver = Saver(run, job, pipe, method, ...)
    saver.checkpoint(step)              # checkpoints/step-NNNNNN/: weights, optimizer state, exports
    saver.checkpoint(total, final=True) # the exports at the run's top level; run.json says "finished"
    saver.sample(step)                  # the validation grid now (the "sample" command)

A save that fails leaves no half-written checkpoint; a full disk is explained with what is
left to resume from. What is exported and sampled uses the EMA weights when there are any.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from personae.config.train import TrainJob
from personae.data.stats import DatasetStats
from personae.errors import UserError
from personae.events import CheckpointSaved, EventHandler, ImageReady
from personae.inference.nans import NansError
from personae.media.plot import loss_curve
from personae.methods.base import ExportFile, export_dtype
from personae.runs import CheckRecord, ExportRecord, RunLog
from personae.staging import atomic_file, disk_full, is_disk_full
from personae.training import checkpoint as ckpt
from personae.training.precision import full_precision
from personae.training.step import check_weights
from personae.training.validation import validation_grid
from personae.training.verify import TOLERANCES, Check, verify_exports

DIVERGED_FIX = "Lower train.learning_rate, or turn on train.max_grad_norm / min_snr_gamma."


@dataclass
class Saver:
    run: Path
    job: TrainJob
    pipe: object  # the pipeline being trained
    method: object  # the method instance (what is trainable, how it exports)
    source: object  # the resolved base model
    base_scheduler: dict
    prompts: list[str]  # validation prompts
    baseline: object  # the base model's validation grid (PIL image) or None
    optimizer: object
    lr_schedule: object
    ema: object  # EMAModel or None
    params: list  # the trained parameters (what the EMA averages)
    losses: list[float]  # the loss per step so far (shared with the loop)
    log: RunLog
    on_event: EventHandler
    halved: dict = field(default_factory=dict)  # frozen weights stored in half (training/precision.py)
    load_base: object = None  # (components=...) -> a fresh pipeline of the base model: fp32 values for saves
    trained_half: list = field(default_factory=list)  # trained parameters kept in bf16 (train.full_bf16)
    header: dict[str, str] = field(default_factory=dict)  # the exports' dataset and settings fields (kohya ss_*)
    saved_steps: list[int] = field(default_factory=list)

    def with_ema(self, work):
        """`work()` with the EMA weights in place of the trained ones (what is exported and sampled)."""
        if self.ema:
            self.ema.store(self.params)
            self.ema.copy_to(self.params)
        try:
            return work()
        finally:
            if self.ema:
                self.ema.restore(self.params)

    def _grid(self, step: int):
        return validation_grid(self.pipe, self.source, self.base_scheduler, self.prompts, self.job.train.validation,
                               f"step {step}", self.baseline, self.job.train.clip_skip)

    def _write_grid(self, step: int, grid) -> Path:
        path = self.run / "validation" / f"step-{step:06d}.png"
        with atomic_file(path) as tmp:
            grid.save(tmp, format="PNG")
        self.on_event(ImageReady(path, step))
        return path

    def _last(self) -> str | None:
        found = ckpt.list_checkpoints(self.run)
        return str(found[-1][1]) if found else None

    def _weights_finite(self, step: int) -> None:
        check_weights(self.params, step, self._last, DIVERGED_FIX)

    def _drawn(self, step: int, work):
        """`work()` (it draws with the trained model, on the base model's fp32 weights); NaNs out of the model mean
        the training diverged."""
        try:
            with full_precision(self.pipe, self.halved, self.load_base, self.trained_half):
                return self.with_ema(work)
        except NansError as exc:
            kept = f"The last good checkpoint is {self._last()}." if self._last() else "No checkpoint was written."
            raise UserError(f"The model draws NaNs after step {step} ({exc.what.split(',')[0]}): training "
                            f"diverged. {kept}", DIVERGED_FIX) from None

    def sample(self, step: int) -> Path:
        """The validation samples now."""
        self._weights_finite(step)
        return self._write_grid(step, self._drawn(step, lambda: self._grid(step)))

    def save(self, step: int, final: bool = False) -> tuple[list[ExportFile], list[Check]]:
        """Exports (checked against the model in memory), validation grid, checkpoint, loss curve, run record."""
        t, run = self.job.train, self.run
        self._weights_finite(step)  # a diverged run keeps its last good checkpoint, and no broken one is written
        folder = ckpt.checkpoint_dir(run, step)
        out = run if final else folder / "exports"

        def export():
            # the base model by name (folder or file name, hub id): the exports carry no path of this machine
            meta = {"steps": str(step), "base_model": self.source.name, "method": self.job.method, **self.header,
                    "ss_steps": str(step)}
            self.method.skipped = []
            files = self.method.export(self.pipe, out, meta)
            checks = self._verify(files) if t.verify_exports else []
            return files, checks, self._grid(step)

        files, checks, grid = self._drawn(step, export)
        self._write_grid(step, grid)
        ckpt.save_checkpoint(folder, self.method.trainable_state(self.pipe), {
            "step": step, "optimizer": self.optimizer.state_dict(), "lr_schedule": self.lr_schedule.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None, "losses": self.losses})
        ckpt.prune(run, t.keep_last)
        loss_curve(self.losses, run / "loss.png", f"{self.job.method} training loss")
        with atomic_file(run / "losses.csv") as tmp, open(tmp, "w", newline="") as fh:
            csv.writer(fh).writerows([("step", "loss")] + [(i + 1, f"{v:.6f}") for i, v in enumerate(self.losses)])
        bad = [c for c in checks if not c.ok]
        if bad:
            raise UserError(f"An exported file does not reproduce the trained model: {bad[0].files} differ by "
                            f"{bad[0].max_abs_diff:.2e} (tolerance {bad[0].tolerance:.0e}). The run is stopped; the "
                            f"checkpoint at {folder} is kept.", "Report this as a bug, with the job file.")
        done = {"metrics": {"steps": step, "final_loss": self.losses[-1] if self.losses else None}}
        if final:
            done.update(status="finished", error=None, checks=[CheckRecord(**vars(c)) for c in checks],
                        exports=[ExportRecord(path=f.path.relative_to(run).as_posix(), format=f.format,
                                              loader=f.loader, token=f.token) for f in files],
                        skipped_exports=list(self.method.skipped))
        self.log.update(**done)
        self.saved_steps.append(step)
        self.on_event(CheckpointSaved(step, folder))
        return files, checks

    def _verify(self, files: list[ExportFile]) -> list[Check]:
        """Reload and compare; with `output_dtype` fp16 / bf16 the model in memory is compared with its trained
        tensors rounded as the files hold them (then put back), within that precision's tolerance."""
        dtype = self.job.output_dtype
        if dtype == "fp32" or self.job.method == "dreambooth":  # DreamBooth models are written in fp32
            return verify_exports(self.pipe, files, self.source, self.prompts[0])
        exact = self.method.trainable_state(self.pipe)
        rounded = {k: v.to(export_dtype(self.job)).to(v.dtype) for k, v in exact.items()}
        self.method.load_trainable_state(self.pipe, rounded)
        try:
            return verify_exports(self.pipe, files, self.source, self.prompts[0], TOLERANCES[dtype])
        finally:
            self.method.load_trainable_state(self.pipe, exact)

    def checkpoint(self, step: int, final: bool = False) -> tuple[list[ExportFile], list[Check]]:
        """`save`, and on failure no half-written checkpoint; a full disk is explained, with what is left to resume."""
        try:
            return self.save(step, final)
        except BaseException as exc:
            ckpt.discard_incomplete(ckpt.checkpoint_dir(self.run, step))
            if not is_disk_full(exc):
                raise
            last = ckpt.list_checkpoints(self.run)
            kept = (f"the last complete checkpoint is step {last[-1][0]} ({last[-1][1]})" if last
                    else "no checkpoint was written yet")
            raise disk_full(f"the {'final exports' if final else 'checkpoint'} of step {step} in {self.run}", kept,
                            "Free some space, then continue with `personae train JOB.yaml --resume`.") from None


def export_header(job: TrainJob, stats: DatasetStats, steps_per_epoch: int, total: int,
                  size: tuple[int, int], vae_name: str | None = None) -> dict[str, str]:
    """The exports' header: the dataset (kohya's ss_* names) and the settings that made them; no paths (`vae_name`:
    the name of job.vae's file or folder)."""
    t = job.train
    epochs = -(-total // steps_per_epoch)
    m = job.metadata
    described = {f"modelspec.{key}": getattr(m, key) for key in ("title", "author", "description", "license", "tags")
                 if getattr(m, key)}
    if m.comment:
        described["ss_training_comment"] = m.comment
    return {**stats.kohya_fields(), **described, "ss_learning_rate": f"{t.learning_rate:g}",
            "ss_batch_size_per_device": str(t.batch_size),
            "ss_gradient_accumulation_steps": str(t.gradient_accumulation), "ss_max_train_steps": str(total),
            "ss_num_batches_per_epoch": str(steps_per_epoch), "ss_num_epochs": str(epochs),
            "ss_resolution": f"({size[0]}, {size[1]})", "ss_seed": str(t.seed), "ss_lr_scheduler": t.lr_scheduler,
            "ss_lr_warmup_steps": str(t.warmup_steps), "ss_optimizer": t.optimizer,
            "ss_mixed_precision": t.mixed_precision, "ss_save_precision": job.output_dtype,
            "ss_no_half_vae": str(t.no_half_vae), "ss_full_fp16": "False", "ss_full_bf16": str(t.full_bf16),
            "ss_max_grad_norm": f"{t.max_grad_norm:g}", "ss_noise_offset": f"{t.noise_offset:g}",
            "ss_min_snr_gamma": f"{t.min_snr_gamma:g}" if t.min_snr_gamma else "None",
            "ss_caption_dropout_rate": f"{job.data.caption_dropout:g}",
            "ss_caption_dropout_every_n_epochs": str(job.data.caption_dropout_every_n_epochs or None),
            "ss_caption_tag_dropout_rate": f"{job.data.caption_tag_dropout:g}", "ss_clip_skip": str(t.clip_skip),
            "ss_max_token_length": str(t.max_token_length),
            "ss_multires_noise_iterations": str(t.multires_noise_iterations or None),
            "ss_multires_noise_discount": f"{t.multires_noise_discount:g}",
            "ss_ip_noise_gamma": f"{t.ip_noise_gamma:g}" if t.ip_noise_gamma else "None",
            "ss_ip_noise_gamma_random_strength": str(t.ip_noise_gamma_random_strength),
            "ss_loss_type": t.loss_type, "ss_huber_c": f"{t.huber_c:g}", "ss_huber_schedule": t.huber_schedule,
            "ss_debiased_estimation": str(t.debiased_estimation), "ss_zero_terminal_snr": str(t.zero_terminal_snr),
            "ss_scale_v_pred_loss_like_noise_pred": str(t.scale_v_pred_loss_like_noise_pred),
            "ss_shuffle_caption": str(job.data.shuffle_tags),
            "ss_flip_aug": str(job.data.flip), "ss_prior_loss_weight": f"{job.dreambooth.prior_loss_weight:g}",
            "ss_noise_offset_random_strength": str(t.noise_offset_random_strength),
            "ss_adaptive_noise_scale": f"{t.adaptive_noise_scale:g}" if t.adaptive_noise_scale else "None",
            "ss_scale_weight_norms": f"{t.scale_weight_norms:g}" if t.scale_weight_norms else "None",
            **({"ss_vae_name": vae_name} if vae_name else {}),
            **({"ss_loraplus_lr_ratio": f"{job.lora.loraplus_lr_ratio:g}"} if job.lora.loraplus_lr_ratio else {})}
