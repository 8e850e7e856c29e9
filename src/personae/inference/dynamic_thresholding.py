"""Dynamic Thresholding (CFG Scale Fix), the sd-dynamic-thresholding extension for A1111 (mcmonkey's): a high CFG
scale's guidance, its denoised estimate brought back to the value range a lower "mimic" scale would give.

At every model call of a k-diffusion sampler the extension replaces A1111's CFG combination (combine_denoised) on
the denoised estimates: the prompt's estimate (AND's parts weighted) and the negative prompt's are combined twice,
at the CFG scale and at the mimic scale; per picture and latent channel, the CFG result, centred on its mean, is
clamped to the larger of the two spreads (the mimic result's largest deviation, the CFG result's deviation at the
threshold percentile) and scaled to the mimic result's spread ("MEAN", "AD"; "ZERO" scales from 0, "STD" uses
standard deviations), then mixed back with the plain CFG result by "Interpolate Phi". Both scales can follow a
schedule over the pass (Linear Down, Cosine Up, Power Up, ...: the extension's twelve modes), counted in model calls
against A1111's total_steps.

personae computes the same on the UNet's output (`thresholded`): the predictions of the negative prompt's rows and
of the prompt's rows (AND already composed by inference/composable.py, which is the extension's weighted sum) are
turned into denoised estimates with the sampler's sigma, thresholded, and turned back into a prediction given to
both rows, so the pipeline's own CFG step passes it through unchanged.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

MODES = ("Constant", "Linear Down", "Cosine Down", "Half Cosine Down", "Linear Up", "Cosine Up", "Half Cosine Up",
         "Power Up", "Power Down", "Linear Repeating", "Cosine Repeating", "Sawtooth")
MODES_WITH_VALUE = ("Power Up", "Power Down", "Linear Repeating", "Cosine Repeating", "Sawtooth")


def scheduled(scale: float, mode: str, minimum: float, frac: float, value: float) -> float:
    """`scale` at `frac` (0-1) of the pass under `mode`, from `minimum` (the extension's interpret_scale)."""
    scale -= minimum
    if mode == "Linear Down":
        scale *= 1.0 - frac
    elif mode == "Half Cosine Down":
        scale *= math.cos(frac)
    elif mode == "Cosine Down":
        scale *= math.cos(frac * 1.5707)
    elif mode == "Linear Up":
        scale *= frac
    elif mode == "Half Cosine Up":
        scale *= 1.0 - math.cos(frac)
    elif mode == "Cosine Up":
        scale *= 1.0 - math.cos(frac * 1.5707)
    elif mode == "Power Up":
        scale *= math.pow(frac, value)
    elif mode == "Power Down":
        scale *= 1.0 - math.pow(frac, value)
    elif mode == "Linear Repeating":
        portion = (frac * value) % 1.0
        scale *= (0.5 - portion) * 2 if portion < 0.5 else (portion - 0.5) * 2
    elif mode == "Cosine Repeating":
        scale *= math.cos(frac * 6.28318 * value) * 0.5 + 0.5
    elif mode == "Sawtooth":
        scale *= (frac * value) % 1.0
    return scale + minimum


@dataclass(frozen=True)
class DynamicThresholding:
    mimic_scale: float = 7.0
    threshold_percentile: float = 100.0  # percent, as the extension's slider and infotext
    mimic_mode: str = "Constant"
    mimic_scale_min: float = 0.0
    cfg_mode: str = "Constant"
    cfg_scale_min: float = 0.0
    scheduler_value: float = 4.0
    separate_feature_channels: bool = True
    scaling_startpoint: str = "MEAN"
    variability_measure: str = "AD"
    interpolate_phi: float = 1.0

    @classmethod
    def of(cls, settings) -> DynamicThresholding | None:
        if not getattr(settings, "dynamic_thresholding", False):
            return None
        return cls(settings.mimic_scale, settings.dt_threshold_percentile, settings.dt_mimic_mode,
                   settings.dt_mimic_scale_min, settings.dt_cfg_mode, settings.dt_cfg_scale_min,
                   settings.dt_scheduler_value, settings.dt_separate_feature_channels, settings.dt_scaling_startpoint,
                   settings.dt_variability_measure, settings.dt_interpolate_phi)

    def combine(self, uncond: torch.Tensor, guided: torch.Tensor, cfg: float, frac: float) -> torch.Tensor:
        """The denoised estimate of one model call: `uncond` the negative prompt's, `guided` the prompt's (AND's
        parts already summed with their weights: uncond + sum w (cond - uncond)), `cfg` the CFG scale, `frac` how far
        through the pass the call is."""
        mimic = scheduled(self.mimic_scale, self.mimic_mode, self.mimic_scale_min, frac, self.scheduler_value)
        cfg = scheduled(cfg, self.cfg_mode, self.cfg_scale_min, frac, self.scheduler_value)
        relative = guided - uncond
        mimic_target, cfg_target = uncond + relative * mimic, uncond + relative * cfg
        mimic_flat, cfg_flat = mimic_target.flatten(2), cfg_target.flatten(2)
        cfg_means = cfg_flat.mean(dim=2, keepdim=True)
        mimic_centred = mimic_flat - mimic_flat.mean(dim=2, keepdim=True)
        cfg_centred = cfg_flat - cfg_means
        percentile = self.threshold_percentile / 100
        if self.separate_feature_channels:
            if self.variability_measure == "STD":
                mimic_ref, cfg_ref = mimic_centred.std(dim=2, keepdim=True), cfg_centred.std(dim=2, keepdim=True)
            else:
                mimic_ref = mimic_centred.abs().max(dim=2, keepdim=True).values
                cfg_ref = torch.quantile(cfg_centred.abs(), percentile, dim=2, keepdim=True)
        elif self.variability_measure == "STD":
            mimic_ref, cfg_ref = mimic_centred.std(), cfg_centred.std()
        else:
            mimic_ref, cfg_ref = mimic_centred.abs().max(), torch.quantile(cfg_centred.abs(), percentile)
        if self.scaling_startpoint == "ZERO":
            result = cfg_flat * (mimic_ref / cfg_ref)
        elif self.variability_measure == "STD":
            result = cfg_centred / cfg_ref * mimic_ref + cfg_means
        else:
            largest = torch.maximum(mimic_ref, cfg_ref)
            result = cfg_centred.clamp(-largest, largest) / largest * mimic_ref + cfg_means
        result = result.unflatten(2, mimic_target.shape[2:])
        if self.interpolate_phi != 1.0:
            result = result * self.interpolate_phi + cfg_target * (1.0 - self.interpolate_phi)
        return result


def thresholding_checked(settings) -> DynamicThresholding | None:
    """The Dynamic Thresholding `settings` ask for, refused where it cannot run, before any model loads: with
    DDIM, PLMS, UniPC or LCM in any pass (the extension refuses DDIM and PLMS and has its own UniPC, which personae's
    diffusers UniPC is not), at CFG 1 or below (no negative prompt's prediction to combine), or with an inpaint_only
    unit (whose restoration runs inside the UNet, before the extension's combination)."""
    from personae.errors import UserError
    from personae.inference.ksampler import KDiffusionScheduler
    from personae.inference.samplers import get_sampler

    dt = DynamicThresholding.of(settings)
    if dt is None:
        return None
    passes = [("--sampler", settings.sampler)]
    if settings.hires_scale and settings.hires_sampler:
        passes.append(("--hires-sampler", settings.hires_sampler))
    if settings.ad_model and settings.ad_sampler:
        passes.append(("--ad-sampler", settings.ad_sampler))
    for flag, name in passes:
        if get_sampler(name).scheduler is not KDiffusionScheduler:
            raise UserError(f"Dynamic Thresholding runs with A1111's k-diffusion samplers; {flag} {name} is not one "
                            "(the extension refuses DDIM and PLMS, and its UniPC is its own).",
                            f"Choose a k-diffusion sampler for {flag} (Euler a, DPM++ 2M, ...), or leave "
                            "--dynamic-thresholding out.")
    scales = [("--cfg", settings.cfg), ("--hires-cfg", settings.hires_cfg if settings.hires_scale else None),
              ("--ad-cfg-scale", settings.ad_cfg_scale if settings.ad_model else None)]
    for flag, value in scales:
        if value is not None and value <= 1:
            raise UserError(f"Dynamic Thresholding combines the prompt's and the negative prompt's predictions; at "
                            f"{flag} {value:g} there is no guidance to combine.",
                            f"Raise {flag} above 1 (the point is a high one), or leave --dynamic-thresholding out.")
    if any(ref.type == "inpaint_only" for ref in settings.controls):
        raise UserError("Dynamic Thresholding with an inpaint_only unit: the unit's restoration runs inside the UNet "
                        "before the extension's combination, which personae cannot order so.",
                        "Use inpaint_global_harmonious, or leave --dynamic-thresholding out.")
    return dt


@contextmanager
def thresholded(unet, scheduler, dt: DynamicThresholding | None, cfg: float, images: int) -> Iterator[None]:
    """Within the block (one sampling pass of a k-diffusion `scheduler` drawing `images` pictures at `cfg`), each
    UNet call with the negative prompt's rows has its prediction replaced by the thresholded one on both rows."""
    if dt is None:
        yield
        return
    from personae.inference.skip_uncond import planned_calls

    state = {"call": 0, "calls": None}
    signature = inspect.signature(unet.forward)

    def after(module, args, kwargs, output):
        if state["calls"] is None:
            state["calls"] = planned_calls(scheduler)
        frac = state["call"] / (state["calls"] - 1) if state["calls"] > 1 else 0.0
        state["call"] += 1
        predicted = output[0] if isinstance(output, tuple) else output.sample
        if predicted.shape[0] != 2 * images:  # no negative prompt's rows (guidance off): nothing to combine
            return None
        # every row holds the same latents (guidance repeats them; AND's hook repeats them again before the call)
        sample = signature.bind(*args, **kwargs).arguments["sample"][:images].float()
        sigma = scheduler._call_sigma().to(sample.device, torch.float32)
        x = sample * (sigma ** 2 + 1) ** 0.5  # the sampler's latents (the UNet sees them scaled by c_in)
        x = torch.cat([x, x])
        out = predicted.float()
        if scheduler.model.v_prediction:  # k-diffusion's CompVisVDenoiser, both ways
            c_skip, c_out = 1 / (sigma ** 2 + 1), -sigma / (sigma ** 2 + 1) ** 0.5
            denoised = out * c_out + x * c_skip
        else:
            denoised = x - out * sigma
        result = dt.combine(denoised[:images], denoised[images:], cfg, frac)
        x_rows = x[images:]
        back = (result - x_rows * c_skip) / c_out if scheduler.model.v_prediction else (x_rows - result) / sigma
        back = back.to(predicted.dtype)
        combined = torch.cat([back, back])
        return (combined, *output[1:]) if isinstance(output, tuple) else type(output)(sample=combined)

    handle = unet.register_forward_hook(after, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
