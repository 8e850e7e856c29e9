"""Samplers by the names AUTOMATIC1111 users know, mapped to diffusers schedulers.

The mapping follows diffusers' documented A1111 equivalents. Where diffusers has no
exact counterpart (A1111's "DPM++ 2S a" and "DPM++ SDE" are k-diffusion samplers), the
closest scheduler is used and `exact` says so; `personae generate --help` lists them.
A new sampler is one line in SAMPLERS.
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
    Sampler("UniPC", UniPCMultistepScheduler),
]}


def get_sampler(name: str) -> Sampler:
    """Look a sampler up by its A1111 name (case and spacing forgiven)."""
    wanted = " ".join(name.split()).lower()
    for sampler in SAMPLERS.values():
        if sampler.name.lower() == wanted:
            return sampler
    raise UserError(
        f'Unknown sampler "{name}".{did_you_mean(name, SAMPLERS)}',
        "Valid names: " + ", ".join(SAMPLERS) + ".",
    )
