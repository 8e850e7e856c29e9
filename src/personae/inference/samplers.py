"""Samplers by the names AUTOMATIC1111 users know, mapped to diffusers schedulers.

The mapping follows diffusers' documented A1111 equivalents. Where diffusers has no
exact counterpart (A1111's "DPM++ 2S a" and "DPM++ SDE" are k-diffusion samplers), the
closest scheduler is used and `exact` says so; `personae generate --help` lists them.
A new sampler is one line in SAMPLERS.

Schedule types (A1111's "Schedule type", which it used to write into the sampler name) are
a suffix any sampler whose diffusers scheduler supports it takes: "Euler Karras", "DPM++ 3M
SDE Exponential", "UniPC SGM Uniform" (SCHEDULES). ComfyUI's names are read too: its sampler
name and its scheduler, e.g. "dpmpp_2m karras" or "dpmpp_2m + karras" (COMFY_SAMPLERS,
COMFY_SCHEDULERS); a name is always written back the A1111 way.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from personae.errors import UserError, did_you_mean


@dataclass(frozen=True)
class Sampler:
    name: str  # the A1111 name
    scheduler: type[SchedulerMixin]
    options: dict = field(default_factory=dict)  # passed to from_config
    exact: bool = True  # False: the nearest diffusers scheduler, not the same algorithm

    def make(self, base_config: dict) -> SchedulerMixin:
        """A fresh scheduler built on the model's own noise schedule (betas, timesteps).

        Options that tell samplers apart are always set, so a model whose shipped scheduler
        config enables e.g. Karras sigmas does not turn "DPM++ 2M" into "DPM++ 2M Karras".
        """
        accepted = inspect.signature(self.scheduler.__init__).parameters
        options = {k: v for k, v in _DISTINGUISHING.items() if k in accepted}
        options.update(self.options)
        return self.scheduler.from_config(base_config, **options)


_KARRAS = {"use_karras_sigmas": True}
_DISTINGUISHING = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}
SAMPLERS: dict[str, Sampler] = {s.name: s for s in [
    Sampler("Euler", EulerDiscreteScheduler),
    Sampler("Euler a", EulerAncestralDiscreteScheduler),
    Sampler("DDIM", DDIMScheduler),
    Sampler("PLMS", PNDMScheduler),
    Sampler("LMS", LMSDiscreteScheduler),
    Sampler("LMS Karras", LMSDiscreteScheduler, _KARRAS),
    Sampler("Heun", HeunDiscreteScheduler),
    Sampler("DPM2", KDPM2DiscreteScheduler),
    Sampler("DPM2 a", KDPM2AncestralDiscreteScheduler),
    Sampler("DPM++ 2M", DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    Sampler("DPM++ 2M Karras", DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", **_KARRAS}),
    Sampler("DPM++ 2M SDE", DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}),
    Sampler("DPM++ 2M SDE Karras", DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++", **_KARRAS}),
    Sampler("DPM++ 2S a", DPMSolverSinglestepScheduler, exact=False),
    Sampler("DPM++ 2S a Karras", DPMSolverSinglestepScheduler, _KARRAS, exact=False),
    Sampler("DPM++ SDE", DPMSolverSinglestepScheduler, exact=False),
    Sampler("DPM++ SDE Karras", DPMSolverSinglestepScheduler, _KARRAS, exact=False),
    Sampler("DPM++ 3M SDE", DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
    Sampler("DPM++ 3M SDE Karras", DPMSolverMultistepScheduler,
            {"algorithm_type": "sde-dpmsolver++", "solver_order": 3, **_KARRAS}),
    Sampler("UniPC", UniPCMultistepScheduler),
    Sampler("LCM", LCMScheduler),  # for LCM models and LCM-LoRAs: 4-8 steps, CFG 1-2
]}

# A1111's schedule types -> the scheduler options that give them (a sampler takes one if its scheduler has the option)
DEFAULT_SCHEDULES = ("Automatic", "Uniform", "Normal")  # A1111 schedule types that mean the sampler's own
SCHEDULES: dict[str, dict] = {
    "Karras": _KARRAS,
    "Exponential": {"use_exponential_sigmas": True},
    "Beta": {"use_beta_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing"},
}
# ComfyUI's sampler and scheduler names -> A1111's ("normal" is the sampler's own schedule)
COMFY_SAMPLERS = {"euler": "Euler", "euler_ancestral": "Euler a", "heun": "Heun", "dpm_2": "DPM2",
                  "dpm_2_ancestral": "DPM2 a", "lms": "LMS", "dpmpp_2s_ancestral": "DPM++ 2S a", "dpmpp_sde": "DPM++ SDE",
                  "dpmpp_2m": "DPM++ 2M", "dpmpp_2m_sde": "DPM++ 2M SDE", "dpmpp_3m_sde": "DPM++ 3M SDE",
                  "ddim": "DDIM", "uni_pc": "UniPC", "lcm": "LCM"}
COMFY_SCHEDULERS = {"normal": "", "karras": "Karras", "exponential": "Exponential", "beta": "Beta",
                    "sgm_uniform": "SGM Uniform"}


def _lookup(name: str) -> Sampler | None:
    wanted = " ".join(name.split()).lower()
    return next((sampler for sampler in SAMPLERS.values() if sampler.name.lower() == wanted), None)


def _from_comfy(name: str) -> str | None:
    """ComfyUI's "dpmpp_2m karras" / "dpmpp_2m + karras" / "dpmpp_2m_karras" as A1111's "DPM++ 2M Karras"."""
    words = name.replace("+", " ").replace("/", " ").replace(",", " ").split()
    if len(words) == 1:
        for scheduler in COMFY_SCHEDULERS:
            if words[0].lower().endswith("_" + scheduler):
                words = [words[0][: -len(scheduler) - 1], scheduler]
                break
    if not words or words[0].lower() not in COMFY_SAMPLERS or len(words) > 2:
        return None
    schedule = COMFY_SCHEDULERS.get(words[1].lower()) if len(words) == 2 else ""
    if schedule is None:  # "simple", "ddim_uniform", ...: no diffusers counterpart; the error lists what there is
        return None
    return f"{COMFY_SAMPLERS[words[0].lower()]} {schedule}".strip()


def _with_schedule(name: str) -> Sampler | None:
    """"<sampler> <schedule type>", e.g. "Euler Karras", "DPM++ 2M SDE Exponential"; None if not of that form."""
    for schedule, options in SCHEDULES.items():
        if not name.lower().endswith(" " + schedule.lower()):
            continue
        base = _lookup(name[: -len(schedule)])
        if base is None:
            return None
        if not set(options) <= set(inspect.signature(base.scheduler.__init__).parameters):
            raise UserError(f'"{base.name}" has no {schedule} schedule in diffusers ({base.scheduler.__name__}).',
                            f'Use "{base.name}", or a sampler that takes {schedule}, such as "Euler {schedule}".')
        return Sampler(f"{base.name} {schedule}", base.scheduler, {**base.options, **options}, base.exact)
    return None


def get_sampler(name: str) -> Sampler:
    """Look a sampler up by its A1111 name (case and spacing forgiven), with an A1111 schedule type after it, or by
    its ComfyUI sampler and scheduler names."""
    name = " ".join(name.split())
    a1111 = _from_comfy(name) or name
    found = _lookup(a1111) or _with_schedule(a1111)
    if found:
        return found
    raise UserError(
        f'Unknown sampler "{name}".{did_you_mean(name, [*SAMPLERS, *COMFY_SAMPLERS])}',
        "Valid names: " + ", ".join(SAMPLERS) + "; any of them with a schedule type after it where diffusers has it ("
        + ", ".join(SCHEDULES) + "), or ComfyUI's names (" + ", ".join(COMFY_SAMPLERS) + ", with "
        + "/".join(COMFY_SCHEDULERS) + ").",
    )
