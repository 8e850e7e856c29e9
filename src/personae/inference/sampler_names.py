"""Which samplers personae has, by name, without their code (no torch, no diffusers).

The command line lists these names in its help, and the help must come up at once; inference/samplers.py builds
the samplers themselves from this table. Each entry is A1111's name and what runs it: "k-diffusion" (A1111's own
algorithm, inference/ksampler.py) on one of A1111's schedules, or one of diffusers' scheduler classes by its name.
A new sampler is one line here.
"""

from __future__ import annotations

from typing import NamedTuple

K_DIFFUSION = "k-diffusion"


class SamplerEntry(NamedTuple):
    sampler: str  # A1111's sampler name, without the schedule type
    runs: str  # K_DIFFUSION, or the diffusers scheduler class that runs it
    schedule: str = "Uniform"  # A1111's schedule type, for a k-diffusion sampler

    @property
    def name(self) -> str:
        """A1111's name: a k-diffusion sampler's schedule is part of it ("DPM++ 2M Karras"), Uniform's is not."""
        return self.sampler if self.schedule == "Uniform" else f"{self.sampler} {self.schedule}"


def _k(sampler: str, schedule: str = "Uniform") -> SamplerEntry:
    return SamplerEntry(sampler, K_DIFFUSION, schedule)


SAMPLER_TABLE: tuple[SamplerEntry, ...] = (
    _k("Euler"),
    _k("Euler a"),
    SamplerEntry("DDIM", "DDIMScheduler"),
    SamplerEntry("PLMS", "PNDMScheduler"),
    _k("LMS"),
    _k("LMS", "Karras"),
    _k("Heun"),
    _k("DPM2"),
    _k("DPM2 a"),
    _k("DPM++ 2M"),
    _k("DPM++ 2M", "Karras"),
    _k("DPM++ 2M SDE"),
    _k("DPM++ 2M SDE", "Karras"),
    _k("DPM++ 2M SDE Heun"),
    _k("DPM++ 2S a"),
    _k("DPM++ 2S a", "Karras"),
    _k("DPM++ SDE"),
    _k("DPM++ SDE", "Karras"),
    _k("DPM++ 3M SDE"),
    _k("DPM++ 3M SDE", "Karras"),
    SamplerEntry("UniPC", "UniPCMultistepScheduler"),
    SamplerEntry("LCM", "LCMScheduler"),  # for LCM models and LCM-LoRAs: 4-8 steps, CFG 1-2
)
SAMPLER_NAMES: tuple[str, ...] = tuple(entry.name for entry in SAMPLER_TABLE)
