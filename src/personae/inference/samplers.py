"""Samplers by the names AUTOMATIC1111 users know.

A1111's k-diffusion samplers (Euler, Euler a, LMS, Heun, DPM2, DPM2 a, the DPM++ family) run k-diffusion's own
algorithms on A1111's schedules (inference/ksampler.py, inference/sigmas.py), so a seed and settings give A1111's
picture; DDIM, PLMS, UniPC and LCM are diffusers' schedulers. A new sampler is one line in inference/sampler_names.py.

Schedule types (A1111's "Schedule type", which it used to write into the sampler name) are a suffix: "Euler
Karras", "DPM++ 3M SDE Exponential", "DPM++ 2M Align Your Steps". A k-diffusion sampler takes every A1111 schedule
type, and "Automatic" picks the one A1111 1.9+ picks for it (Karras for DPM++ 2M); a bare name is the Uniform
schedule, what A1111 ran before 1.9. DDIM, PLMS and UniPC take the schedule types diffusers has (SCHEDULES).
ComfyUI's names are read too: its sampler name and its scheduler, e.g. "dpmpp_2m karras" or "dpmpp_2m + karras"
(COMFY_SAMPLERS, COMFY_SCHEDULERS); a name is always written back the A1111 way. Which samplers, schedule types
and ComfyUI names there are is declared in inference/sampler_names.py (no torch there, so the command line's help
lists them, and a wrong name is said, at once).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import diffusers
from diffusers import DDIMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from personae.errors import UserError
from personae.inference.ksampler import KSAMPLERS, KDiffusionScheduler
from personae.inference.sampler_names import (
    DEFAULT_SCHEDULES,
    K_DIFFUSION,
    SAMPLER_TABLE,
    SCHEDULES,
    SamplerEntry,
    entry_named,
    from_comfy,
    split_schedule,
    unknown_sampler,
)
from personae.inference.sigmas import A1111_LAST_ALPHABAR


@dataclass(frozen=True)
class Sampler:
    name: str  # the A1111 name
    scheduler: type[SchedulerMixin]
    options: dict = field(default_factory=dict)  # passed to from_config

    def prompt_steps(self, steps: int) -> int:
        """The step count A1111's prompt editing counts in: the model's calls, for its second-order samplers (Heun,
        DPM2, DPM2 a, DPM++ 2S a, DPM++ SDE) two a step, so "[a:b:0.5]" switches halfway through the calls."""
        two = self.scheduler is KDiffusionScheduler and KSAMPLERS[self.options["sampler"]].two_stage
        return steps * 2 if two else steps

    @property
    def takes_eta(self) -> bool:
        """A1111's "Eta" applies: a k-diffusion sampler that adds fresh noise (ancestral or SDE)."""
        return self.scheduler is KDiffusionScheduler and KSAMPLERS[self.options["sampler"]].noisy

    def eta_said(self, eta: float, eta_ddim: float) -> dict[str, float]:
        """The infotext's "Eta" / "Eta DDIM", as A1111 writes them: for a sampler they apply to, when not the
        default."""
        if self.takes_eta and eta != 1:
            return {"Eta": eta}
        if self.scheduler is DDIMScheduler and eta_ddim != 0:
            return {"Eta DDIM": eta_ddim}
        return {}

    def sigmas_said(self, churn: float, tmin: float, tmax: float, noise: float) -> dict[str, float]:
        """The infotext's "Sigma churn" / "Sigma tmin" / "Sigma tmax" / "Sigma noise", as A1111 writes them: for a
        sampler that takes each (Euler, Heun and DPM2 all four; most noisy samplers the noise), when not its
        default (0, 0, 0 = no bound, 1)."""
        if self.scheduler is not KDiffusionScheduler:
            return {}
        kind = KSAMPLERS[self.options["sampler"]]
        said = {"Sigma churn": churn, "Sigma tmin": tmin, "Sigma tmax": tmax} if kind.churns else {}
        said.update({"Sigma noise": noise} if kind.takes_s_noise else {})
        defaults = {"Sigma churn": 0.0, "Sigma tmin": 0.0, "Sigma tmax": 0.0, "Sigma noise": 1.0}
        return {key: value for key, value in said.items() if value != defaults[key]}

    def make(self, base_config: dict, tuning: dict | None = None, schedule: dict | None = None) -> SchedulerMixin:
        """A fresh scheduler built on the model's own noise schedule (betas, timesteps).

        Options that tell samplers apart are always set, so a model whose shipped scheduler
        config enables e.g. Karras sigmas does not turn "DPM++ 2M" into "DPM++ 2M Karras".
        `schedule`: config values that replace the model's own (animate's AnimateDiff schedule). They, the Zero
        Terminal SNR noise schedule and the prediction type are passed to from_config as arguments: merged into
        the config, a key the model's file left out would be dropped again (diffusers lists such keys in
        `_use_default_values` and takes its own defaults for them, whatever value the key then holds).
        """
        accepted = inspect.signature(self.scheduler.__init__).parameters
        tuning = dict(tuning or {})
        chosen = {k: v for k, v in (schedule or {}).items() if k in accepted}
        if tuning.pop("zero_terminal_snr", False):  # A1111's "Noise schedule for sampling: Zero Terminal SNR"
            if "rescale_betas_zero_snr" not in accepted:
                raise UserError(f"The sampler {self.name} cannot sample on the Zero Terminal SNR noise schedule "
                                "(its diffusers scheduler has no rescale_betas_zero_snr).",
                                "Use one of A1111's k-diffusion samplers (Euler, DPM++ 2M, ...) or DDIM with it.")
            chosen["rescale_betas_zero_snr"] = True
        prediction = tuning.pop("prediction_type", None)  # ComfyUI's ModelSamplingDiscrete sampling
        if prediction is not None:
            if "prediction_type" not in accepted:
                raise UserError(f"The sampler {self.name} cannot be told what the model predicts (its diffusers "
                                "scheduler has no prediction_type).", "Choose another sampler, or leave "
                                "--prediction-type at model.")
            chosen["prediction_type"] = prediction
        options = {k: v for k, v in _DISTINGUISHING.items() if k in accepted}
        options.update(self.options)
        options.update(chosen)
        if self.scheduler is KDiffusionScheduler:  # it reads the noise schedule alone: the rest would be warned of
            base_config = {k: v for k, v in base_config.items() if k in accepted}
            options.update(tuning or {})
        scheduler = self.scheduler.from_config(base_config, **options)
        table = getattr(scheduler, "alphas_cumprod", None)
        if table is not None and float(table[-1]) == 0.0 and scheduler.config.get("prediction_type") == "epsilon":
            # diffusers' DDIM keeps the rescaled schedule's exact 0, and an epsilon model's x0 divides by its root:
            # NaN from the first step at the last timestep. A1111 ends it at 4.8973451890853435e-08 (sigmas.py).
            scheduler.alphas_cumprod = table.clone()
            scheduler.alphas_cumprod[-1] = A1111_LAST_ALPHABAR
        return scheduler


_DISTINGUISHING = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}


def _k(name: str, schedule: str = "Uniform") -> Sampler:
    """k-diffusion's sampler `name` on A1111's schedule `schedule` (inference/ksampler.py): A1111's own algorithm.
    A bare name is the Uniform schedule, as A1111 ran it before its separate "Schedule type" (1.9)."""
    return Sampler(SamplerEntry(name, K_DIFFUSION, schedule).name, KDiffusionScheduler,
                   {"sampler": name, "schedule": schedule})


def _built(entry: SamplerEntry) -> Sampler:
    if entry.runs == K_DIFFUSION:
        return _k(entry.sampler, entry.schedule)
    return Sampler(entry.name, getattr(diffusers, entry.runs))


SAMPLERS: dict[str, Sampler] = {entry.name: _built(entry) for entry in SAMPLER_TABLE}

def _lookup(name: str) -> Sampler | None:
    entry = entry_named(name)  # the name's table entry, as the torch-free check finds it
    return SAMPLERS[entry.name] if entry else None


def _with_schedule(name: str) -> Sampler | None:
    """"<sampler> <schedule type>", e.g. "Euler Karras", "DPM++ 2M SDE Exponential"; None if not of that form."""
    split = split_schedule(name)
    if split is None or split[0] is None:
        return None
    base, schedule = SAMPLERS[split[0].name], split[1]
    if base.scheduler is KDiffusionScheduler:
        if base.options["schedule"] != "Uniform":  # "DPM++ 2M Karras Exponential"
            return None
        sampler = base.options["sampler"]
        return _k(sampler, KSAMPLERS[sampler].schedule if schedule == "Automatic" else schedule)
    if schedule in DEFAULT_SCHEDULES:
        return base
    options = SCHEDULES.get(schedule)
    accepted = set(inspect.signature(base.scheduler.__init__).parameters)
    if options is None or not set(options) <= accepted:
        takes = [k for k in SCHEDULES if set(SCHEDULES[k]) <= accepted]
        raise UserError(f'"{base.name}" runs as diffusers\' {base.scheduler.__name__}, which has no {schedule} '
                        f"schedule{' (it has ' + ', '.join(takes) + ')' if takes else ''}.",
                        f'Use "{base.name}", or a k-diffusion sampler, which takes every A1111 schedule type, '
                        f'such as "Euler {schedule}".')
    return Sampler(f"{base.name} {schedule}", base.scheduler, {**base.options, **options})


def uniform_said(name: str, key: str = "Schedule type") -> dict[str, str]:
    """{key: "Uniform"} for a k-diffusion sampler on the Uniform schedule whose A1111 "Automatic" is another: A1111
    1.9+ reads a bare "DPM++ 2M" as its Automatic (Karras), so the infotext must name the schedule drawn with."""
    sampler = get_sampler(name)
    if sampler.scheduler is KDiffusionScheduler and sampler.options["schedule"] == "Uniform" \
            and KSAMPLERS[sampler.options["sampler"]].schedule != "Uniform":
        return {key: "Uniform"}
    return {}


def schedule_said(base_scheduler: dict) -> dict[str, str]:
    """{"Noise Schedule": "Zero Terminal SNR"} for a model whose own scheduler config sets rescale_betas_zero_snr:
    it samples so whatever the setting says, and A1111 needs the setting to draw it again (Forge writes the same
    for a checkpoint with a `ztsnr` key)."""
    return {"Noise Schedule": "Zero Terminal SNR"} if base_scheduler.get("rescale_betas_zero_snr") else {}


def k_tuning(settings) -> dict:
    """A1111's options that reach a k-diffusion sampler, from `settings` (those without them keep A1111's defaults):
    Eta, K-sampler quantization, Schedule rho / min sigma / max sigma, Discard penultimate sigma, Sigma churn / tmin /
    tmax / noise."""
    names = {"eta": "eta", "quantize": "quantize", "rho": "schedule_rho", "sigma_min": "schedule_min_sigma",
             "sigma_max": "schedule_max_sigma", "discard_penultimate": "discard_penultimate",
             "s_churn": "sigma_churn", "s_tmin": "sigma_tmin", "s_tmax": "sigma_tmax", "s_noise": "sigma_noise"}
    tuning = {option: getattr(settings, field) for option, field in names.items() if hasattr(settings, field)}
    if getattr(settings, "noise_schedule", "Default") == "Zero Terminal SNR":
        tuning["zero_terminal_snr"] = True
    if getattr(settings, "prediction_type", "model") != "model":
        tuning["prediction_type"] = settings.prediction_type
    return tuning


def with_schedule_type(sampler: str, schedule: str) -> str | None:
    """A1111's "Sampler" and "Schedule type" as one personae name ("DPM++ 2M" + "Karras": "DPM++ 2M Karras"), or
    None when personae cannot run that pair (the sampler's own schedule is then used)."""
    try:
        return get_sampler(f"{sampler} {schedule}").name if schedule else get_sampler(sampler).name
    except UserError:
        return None


def get_sampler(name: str) -> Sampler:
    """Look a sampler up by its A1111 name (case and spacing forgiven), with an A1111 schedule type after it, or by
    its ComfyUI sampler and scheduler names."""
    name = " ".join(name.split())
    a1111 = from_comfy(name) or name
    found = _lookup(a1111) or _with_schedule(a1111)
    if found:
        return found
    raise unknown_sampler(name)
