"""Prompt travel: a clip's prompt that changes across its frames, as A1111's AnimateDiff extension draws it.

config/prompt_travel.py reads the keyframes ("0: on a blue background" lines between head and tail lines).
- Every keyframe is encoded as any prompt is (A1111 weights, 75-token chunks, clip skip, emphasis), all padded to
  the longest, so the frames' conditionings have one length.
- A frame between two keyframes is conditioned on the spherical interpolation (slerp) of their two conditionings,
  by its distance to each, as the extension does. Frames before the first keyframe take the first's, frames after
  the last the last's.
- The negative prompt is one for every frame.
- `frame_conditions` hands the frames' conditionings to the motion UNet, in the rows the pipeline lays out (the
  negative prompt's frames, then the prompt's).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from personae.config.prompt_travel import Travel, TravelError, parse_travel
from personae.errors import UserError

DOT_THRESHOLD = 0.9995  # nearly parallel conditionings are interpolated linearly (slerp's division is unstable)


def read_travel(prompt: str, frames: int, flag: str = "--prompt") -> Travel | None:
    """parse_travel, its refusal as a UserError."""
    try:
        return parse_travel(prompt, frames, flag)
    except TravelError as exc:
        raise UserError(exc.what, exc.fix) from None


def slerp(v0: torch.Tensor, v1: torch.Tensor, t: float) -> torch.Tensor:
    """The spherical interpolation of two whole conditionings (each flattened to one vector) at t in [0, 1]."""
    a, b = v0.double(), v1.double()
    cos = (a / a.norm() * (b / b.norm())).sum()
    if cos.abs() > DOT_THRESHOLD:
        out = (1.0 - t) * a + t * b
    else:
        angle = cos.acos()
        out = (torch.sin((1.0 - t) * angle) * a + torch.sin(t * angle) * b) / torch.sin(angle)
    return out.to(v0.dtype)


def frame_blend(keys: list[int], frames: int) -> list[tuple[int, int, float]]:
    """For each frame: (the keyframe before it, the one after it, how far it is from the first to the second)."""
    blend = []
    for frame in range(frames):
        before = max((k for k in keys if k <= frame), default=keys[0])
        after = min((k for k in keys if k > frame), default=keys[-1])
        blend.append((before, after, 0.0 if after == before else (frame - before) / (after - before)))
    return blend


def frame_conditionings(keyframes: dict[int, torch.Tensor], frames: int) -> torch.Tensor:
    """[frames, tokens, hidden]: every frame's conditioning from the keyframes' ({frame: [1, tokens, hidden]})."""
    rows = []
    for before, after, t in frame_blend(sorted(keyframes), frames):
        rows.append(keyframes[before][0] if t == 0.0 else slerp(keyframes[before][0], keyframes[after][0], t))
    return torch.stack(rows)


@contextmanager
def frame_conditions(modules: list, positive: torch.Tensor | None, negative: torch.Tensor | None):
    """While open, the `modules` (the motion UNet, and a clip's ControlNets) are given `positive` ([frames, tokens,
    hidden]) frame by frame in place of the one prompt the pipeline repeats for every frame, and `negative` ([1,
    tokens, hidden], or None without guidance) for the negative rows before them. With no `positive` (one prompt for
    the clip) nothing changes."""
    if positive is None:
        yield
        return
    frames = positive.shape[0]
    rows = positive if negative is None else torch.cat([negative.expand(frames, -1, -1), positive])

    def swap(module, args, kwargs):
        given = kwargs.get("encoder_hidden_states")
        if given is None or given.shape != rows.shape:
            raise RuntimeError(f"prompt travel: the UNet was given conditioning of shape "
                               f"{None if given is None else tuple(given.shape)}, not {tuple(rows.shape)}")
        return args, {**kwargs, "encoder_hidden_states": rows.to(device=given.device, dtype=given.dtype)}

    handles = [module.register_forward_pre_hook(swap, with_kwargs=True) for module in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
