"""A1111's options that leave the negative prompt out of some model calls: "NGMS" (Negative Guidance minimum sigma),
"NGMS all steps" and "Skip Early CFG" (A1111 1.10).

    NGMS 1            every other model call whose sigma is below 1 runs the prompt alone
    NGMS all steps    every such call, not every other
    Skip Early CFG    the calls in the first share of the pass (call / calls <= share) run the prompt alone

As A1111's CFGDenoiser: the calls are counted from 0 over the pass (a second-order sampler makes two per step, and
the pass has its steps x 2 of them, A1111's total_steps); "sigma" is the sampler's sigma for k-diffusion's samplers
and the timestep for DDIM, PLMS and UniPC (A1111's timestep samplers hand the timestep over as sigma). A skipped
call runs the UNet on the prompt's rows only and uses the result for the negative prompt's rows too, so guidance
gives the prompt's prediction alone (A1111's fake uncond); with AND the first part stands in for the negative prompt.
The UNet then runs once instead of twice on those calls, and so does a ControlNet before it (as in A1111, where
the extension's ControlNet runs inside the UNet's call on the rows it is given).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

from personae.inference.cond_lengths import _rows, forward_replaced


def planned_calls(scheduler) -> int:
    """The model calls of the pass as A1111 counts them (total_steps): the steps it runs, twice for a second-order
    sampler."""
    from personae.inference.ksampler import KDiffusionScheduler

    if isinstance(scheduler, KDiffusionScheduler):
        start = scheduler.step_index or 0
        return len({step for step, _, _ in scheduler._calls[start:]}) * scheduler.order
    return len(scheduler.timesteps) - (getattr(scheduler, "begin_index", None) or 0)


def _sigma(scheduler, timestep) -> float:
    from personae.inference.ksampler import KDiffusionScheduler

    if isinstance(scheduler, KDiffusionScheduler):
        return float(scheduler._call_sigma())
    return float(timestep.reshape(-1)[0] if hasattr(timestep, "reshape") else timestep)


@contextmanager
def skipping_uncond(unet, scheduler, settings, images: int, controlnets: Sequence = ()) -> Iterator[None]:
    """Within the block (one sampling pass with `scheduler`, drawing `images` pictures), calls of `unet` leave the
    negative prompt out where NGMS / Skip Early CFG say so (`settings`: ngms, ngms_all_steps, skip_early_cfg); so
    do the calls of `controlnets` that come before such a UNet call (the UNet reads the prompt's residuals alone)."""
    ngms, every, early = settings.ngms, settings.ngms_all_steps, settings.skip_early_cfg
    if not ngms and not early:
        yield
        return
    state = {"call": 0, "calls": None}

    def skipped(timestep) -> bool:
        """Whether the next UNet call (and the ControlNet calls before it) leaves the negative prompt out."""
        call = state["call"]
        if state["calls"] is None:
            state["calls"] = max(planned_calls(scheduler), 1)
        return bool((early and call / state["calls"] <= early) or
                    ((call % 2 or every) and ngms > 0 and _sigma(scheduler, timestep) < ngms))

    def replaced(module, counts: bool):
        original = module.forward
        signature = inspect.signature(original)

        def forward(*args, **kwargs):
            arguments = dict(signature.bind(*args, **kwargs).arguments)
            skip = skipped(arguments["timestep"])
            state["call"] += counts
            rows = arguments["sample"].shape[0]
            if not skip or rows <= images or rows % images:
                return original(**arguments)
            conds = original(**{name: _rows(value, slice(images, rows), rows) for name, value in arguments.items()})
            return _as_uncond_too(conds, images)

        return forward_replaced(module, forward, signature)  # composable's hooks bind the arguments by name

    with ExitStack() as stack:
        for net in {id(net): net for net in controlnets}.values():  # two units may share one ControlNet
            stack.enter_context(replaced(net, counts=False))
        stack.enter_context(replaced(unet, counts=True))
        yield


def _as_uncond_too(conds, images: int):
    """A UNet's or ControlNet's output on the prompt's rows, with its first `images` rows standing in for the
    negative prompt's (the UNet's prediction, or each residual the ControlNet hands the UNet)."""
    if isinstance(conds, tuple) and conds and isinstance(conds[0], (list, tuple)):  # ControlNet: (down, mid)
        return (type(conds[0])(_with_uncond(d, images) for d in conds[0]), _with_uncond(conds[1], images))
    if isinstance(conds, tuple):
        return (_with_uncond(conds[0], images), *conds[1:])
    if hasattr(conds, "down_block_res_samples"):
        return type(conds)(down_block_res_samples=[_with_uncond(d, images) for d in conds.down_block_res_samples],
                           mid_block_res_sample=_with_uncond(conds.mid_block_res_sample, images))
    return type(conds)(sample=_with_uncond(conds.sample, images))


def _with_uncond(conds, images: int):
    """The prompt rows' predictions with the first `images` of them standing in for the negative prompt's rows."""
    import torch

    return torch.cat([conds[:images], conds])
