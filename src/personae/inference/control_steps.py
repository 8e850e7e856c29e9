"""What each ControlNet unit gives at each model call, as A1111's ControlNet extension does it: its "Control Mode"
and its guidance window ("Guidance Start" / "Guidance End").

The window. The extension switches a unit off at a model call when the sampling percent is below its start or
above its end, inclusive at both ends. That percent is A1111's state.sampling_step / state.sampling_steps:
sampling_steps is the steps the pass runs (img2img: the last t_enc + 1 of its schedule), and sampling_step is set by
the sampler's callback, which k-diffusion and A1111's DDIM / PLMS call after a step's first model call. So step i's
first call sees i - 1 (step 0 sees 0) and a second-order sampler's second call sees i. With 20 steps and Guidance
End 0.3, A1111 controls steps 0 to 7 (8 steps); diffusers' own window, (i + 1) / 20 <= 0.3, would give 6. personae
hands diffusers the whole run and switches the unit off here, so an A1111 PNG's window draws A1111's picture.

A window by noise level (a unit's guidance_by "noise") is ComfyUI's start_percent / end_percent instead
(comfy/controlnet.py, ControlBase.get_control): each percent p is the sigma of the model's training schedule at
step (1 - p) x (T - 1), log sigma interpolated (model_sampling.percent_to_sigma; 0 and 1 are no bound), and a
model call is controlled while its own sigma lies between the two, inclusive. The same percents thus take in other
steps on a Karras schedule than on a uniform one, and a hires pass, whose sigmas start lower, may lie outside.

The mode: "My prompt is more important" scales the residuals of the shallow layers down (0.825 per layer from the
middle block, the extension's soft injection); "ControlNet is more important" does that and gives the negative
prompt's rows no control at all (its cfg injection: the first `batch` rows of a guided call, which carries negative
rows first; a call with only the prompt's rows, CFG 1, keeps them all). "Balanced" leaves the residuals as the
weight made them.

Global average pooling (ControlNet 1.1's shuffle model, models/controlnet.py): every residual is averaged over the
picture to one value per channel, and the negative prompt's rows get no control, whatever the mode (the extension's
global_average_pooling, which turns its cfg injection on). diffusers would do the same for a pooled ControlNet by
putting the whole pipeline into guess mode, which changes every other unit of a multi-ControlNet too; so the flag
is kept off diffusers' config and applied here, per unit.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

SOFT = 0.825  # A1111's soft injection: residual i of 13 (the middle block last) scaled by SOFT ** (12 - i)


@dataclass(frozen=True)
class UnitSteps:
    mode: str  # "Control Mode"
    start: float  # "Guidance Start"
    end: float  # "Guidance End"
    by_noise: bool = False  # ComfyUI's window: start and end are points of the noise levels, not of the steps
    pooled: bool = False  # global average pooling (a shuffle ControlNet)


def percent_sigma(scheduler, percent: float) -> float:
    """ComfyUI's percent_to_sigma on the model's training schedule (the scheduler's config)."""
    from personae.inference.sigmas import ModelSigmas

    if percent <= 0:
        return float("inf")
    if percent >= 1:
        return 0.0
    model = ModelSigmas(dict(scheduler.config))
    return model.t_to_sigma(torch.tensor((1 - percent) * (len(model.sigmas) - 1))).item()


def call_sigma(scheduler, iteration: int) -> float:
    """The sigma the model sees at the pass's model call number `iteration` (0-based)."""
    from personae.inference.ksampler import KDiffusionScheduler

    if isinstance(scheduler, KDiffusionScheduler):
        return float(scheduler._call_sigma())
    # DDIM, PLMS, UniPC, LCM: one call per timestep, from the pass's first (img2img: begin_index)
    t = int(scheduler.timesteps[(getattr(scheduler, "begin_index", None) or 0) + iteration])
    alphabar = scheduler.alphas_cumprod[t].item()
    return ((1 - alphabar) / alphabar) ** 0.5


def sampling_percent(scheduler, iteration: int) -> float:
    """A1111's sampling percent at the pipeline's model call number `iteration` of this pass (0-based): the last
    step whose callback has run, over the steps the pass runs."""
    from personae.inference.ksampler import KDiffusionScheduler

    if isinstance(scheduler, KDiffusionScheduler):  # one entry per model call: (step, stage, sigma)
        begin = scheduler.begin_index or 0
        step, stage, _ = scheduler._calls[scheduler.step_index]
        steps = len({s for s, _, _ in scheduler._calls[begin:]})
        i = step - scheduler._calls[begin][0]
    else:  # DDIM, PLMS, UniPC, LCM: one model call per step
        i, stage = iteration, 0
        steps = len(scheduler.timesteps) - (getattr(scheduler, "begin_index", None) or 0)
    return (i if stage else max(i - 1, 0)) / max(steps, 1)


@contextmanager
def unit_steps(controlnets: Sequence, units: Sequence[UnitSteps], batch: int, scheduler) -> Iterator[None]:
    """Within the block (one sampling pass with `scheduler`), each unit's residuals are switched off outside its
    window and scaled as its mode says. A ControlNet that two units share is called once per unit, in the units'
    order, so its hook takes them in turn."""
    by_net: dict[int, tuple] = {}
    for net, unit in zip(controlnets, units):
        by_net.setdefault(id(net), (net, []))[1].append(unit)

    bounds = {u: (percent_sigma(scheduler, u.start), percent_sigma(scheduler, u.end)) for u in units if u.by_noise}

    def controlled(unit: UnitSteps, iteration: int) -> bool:
        if unit.by_noise:
            high, low = bounds[unit]
            return low <= call_sigma(scheduler, iteration) <= high
        return unit.start <= sampling_percent(scheduler, iteration) <= unit.end

    def hook_for(shared: list[UnitSteps]):
        calls = itertools.count()

        def hook(module, args, kwargs, output):
            call = next(calls)
            unit = shared[call % len(shared)]
            on = controlled(unit, call // len(shared))
            if on and unit.mode == "Balanced" and not unit.pooled:
                return output
            down, mid = output if isinstance(output, tuple) else (output.down_block_res_samples,
                                                                   output.mid_block_res_sample)
            if not on:
                residuals = [torch.zeros_like(r) for r in (*down, mid)]
            else:
                residuals = [*down, mid]
                if unit.pooled:
                    residuals = [r.mean(dim=(2, 3), keepdim=True).expand_as(r) for r in residuals]
                if unit.mode != "Balanced":
                    residuals = [r * SOFT ** (len(down) - i) for i, r in enumerate(residuals[:-1])] + residuals[-1:]
                if (unit.mode == "ControlNet is more important" or unit.pooled) and mid.shape[0] >= 2 * batch:
                    keep = torch.ones(mid.shape[0], 1, 1, 1, dtype=mid.dtype, device=mid.device)
                    keep[:batch] = 0
                    residuals = [r * keep for r in residuals]
            return (residuals[:-1], residuals[-1]) if isinstance(output, tuple) else type(output)(
                down_block_res_samples=residuals[:-1], mid_block_res_sample=residuals[-1])
        return hook

    handles = [net.register_forward_hook(hook_for(shared), with_kwargs=True) for net, shared in by_net.values()
               if any(u.mode != "Balanced" or u.start > 0 or u.end < 1 or u.pooled for u in shared)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
