"""Which samplers personae has, by name, without their code (no torch, no diffusers).

The command line lists these names in its help, and the help must come up at once; inference/samplers.py builds
the samplers themselves from this table. Each entry is A1111's name and what runs it: "k-diffusion" (A1111's own
algorithm, inference/ksampler.py) on one of A1111's schedules, or one of diffusers' scheduler classes by its name.
A new sampler is one line here.
"""

from __future__ import annotations

from typing import NamedTuple

from personae.errors import UserError, did_you_mean

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

# A1111's schedule types, which every k-diffusion sampler takes (their code: inference/sigmas.SCHEDULES, this order)
K_SCHEDULE_NAMES: tuple[str, ...] = ("Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform",
                                     "KL Optimal", "Align Your Steps", "Simple", "Normal", "DDIM", "Beta")
# A1111's schedule types that mean the sampler's own; "Automatic" is A1111 1.9+'s, which picks per sampler
DEFAULT_SCHEDULES = ("Automatic", "Uniform")
# the schedule types diffusers' own schedulers (DDIM, PLMS, UniPC) take, as their options
SCHEDULES: dict[str, dict] = {
    "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True},
    "Beta": {"use_beta_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing"},
}
# ComfyUI's sampler and scheduler names -> A1111's ("normal" is the sampler's own schedule)
COMFY_SAMPLERS = {"euler": "Euler", "euler_ancestral": "Euler a", "heun": "Heun", "dpm_2": "DPM2",
                  "dpm_2_ancestral": "DPM2 a", "lms": "LMS", "dpmpp_2s_ancestral": "DPM++ 2S a",
                  "dpmpp_sde": "DPM++ SDE",
                  "dpmpp_2m": "DPM++ 2M", "dpmpp_2m_sde": "DPM++ 2M SDE", "dpmpp_3m_sde": "DPM++ 3M SDE",
                  "dpmpp_2m_sde_heun": "DPM++ 2M SDE Heun",
                  "ddim": "DDIM", "uni_pc": "UniPC", "lcm": "LCM"}
COMFY_SCHEDULERS = {"normal": "", "karras": "Karras", "exponential": "Exponential", "beta": "Beta",
                    "sgm_uniform": "SGM Uniform", "simple": "Simple", "ddim_uniform": "DDIM"}


def from_comfy(name: str) -> str | None:
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
    if schedule is None:  # "kl_optimal", "linear_quadratic": no counterpart; the error lists what there is
        return None
    return f"{COMFY_SAMPLERS[words[0].lower()]} {schedule}".strip()


def entry_named(name: str) -> SamplerEntry | None:
    wanted = " ".join(name.split()).lower()
    return next((entry for entry in SAMPLER_TABLE if entry.name.lower() == wanted), None)


def split_schedule(name: str) -> tuple[SamplerEntry | None, str] | None:
    """"<sampler> <schedule type>" as (the sampler's entry or None, the schedule type); None if `name` ends in no
    schedule type. The longest schedule name that ends it is taken (SGM Uniform before Uniform)."""
    for schedule in sorted((*K_SCHEDULE_NAMES, *DEFAULT_SCHEDULES), key=len, reverse=True):
        if name.lower().endswith(" " + schedule.lower()):
            return entry_named(name[: -len(schedule)]), schedule
    return None


def is_sampler_name(name: str) -> bool:
    """Whether `name` names a sampler as `samplers.get_sampler` reads names (A1111's, with a schedule type, or
    ComfyUI's), without loading any library: the command line says a wrong name at once. get_sampler may still
    refuse a schedule type that a diffusers scheduler lacks ("DDIM Polyexponential"), with its own message."""
    name = " ".join(name.split())
    a1111 = from_comfy(name) or name
    if entry_named(a1111):
        return True
    split = split_schedule(a1111)
    if split is None or split[0] is None:
        return False
    base, _ = split
    return base.runs != K_DIFFUSION or base.schedule == "Uniform"  # not "DPM++ 2M Karras Exponential"


def unknown_sampler(name: str) -> UserError:
    name = " ".join(name.split())
    return UserError(
        f'Unknown sampler "{name}".{did_you_mean(name, [*SAMPLER_NAMES, *COMFY_SAMPLERS])}',
        "Valid names: " + ", ".join(SAMPLER_NAMES) + "; any of them with an A1111 schedule type after it ("
        + ", ".join((*K_SCHEDULE_NAMES, "Automatic")) + "; DDIM, PLMS and UniPC take " + ", ".join(SCHEDULES)
        + "), or ComfyUI's names (" + ", ".join(COMFY_SAMPLERS) + ", with "
        + "/".join(COMFY_SCHEDULERS) + ").",
    )


def check_sampler_names(*names: str) -> None:
    """The first of `names` (empty ones skipped) that names no sampler, as a UserError."""
    for name in names:
        if name and not is_sampler_name(name):
            raise unknown_sampler(name)
