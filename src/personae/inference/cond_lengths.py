"""A prompt and a negative prompt of different lengths (in chunks of 75 tokens), as A1111 draws them.

    on   "Pad conds": the shorter one padded with empty chunks, one UNet call for both (personae's default, what
         it always did, and A1111's "Pad prompt/negative prompt" option)
    off  A1111's default: the UNet runs the negative rows and the prompt rows apart, each over its own length (the
         attention then spreads over the text's own tokens only); its pictures without a "Pad conds" key were
         drawn so, and a long prompt with a short negative one is common
    v0   "Pad conds v0", A1111 1.7's earlier way: the negative prompt padded by repeating its last vector, or cut
         to the prompt's length

The pipeline is always given the pair padded with empty chunks (PromptEncoder.encode_pair: diffusers needs both of
one shape); for off and v0, `unpadded` wraps the UNet's forward for one pass and undoes the padding, reading the
step's lengths from the prompt schedule. With a ControlNet the residuals come from the padded pair and are split
with the rows.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from personae.inference.prompt_schedule import ScheduledPrompts


def pads(prompts) -> bool:
    """Whether any step of the pass pairs a prompt and a negative prompt of different lengths (a prompt with AND:
    the parts' length and the negative prompt's, inference/composable.py)."""
    if hasattr(prompts, "pads"):
        return prompts.pads()
    return any(positive.own_length != negative.own_length for positive, negative in prompts.every_pair())


def _rows(value, index: slice, rows: int):
    if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == rows:
        return value[index]
    if isinstance(value, (list, tuple)):
        return type(value)(_rows(v, index, rows) for v in value)
    if isinstance(value, dict):
        return {key: _rows(v, index, rows) for key, v in value.items()}
    return value


def apart(forward, arguments: dict, pieces) -> object:
    """One UNet call run as several: for each (rows, length) of `pieces` (slices in order, covering the batch) the
    rows alone over the first `length` tokens of their text; the predictions joined again."""
    rows = arguments["sample"].shape[0]
    outputs = []
    for index, length in pieces:
        part = {name: _rows(value, index, rows) for name, value in arguments.items()}
        part["encoder_hidden_states"] = arguments["encoder_hidden_states"][index, :length]
        outputs.append(forward(**part))
    if isinstance(outputs[0], tuple):
        return (torch.cat([out[0] for out in outputs]), *outputs[0][1:])
    return type(outputs[0])(sample=torch.cat([out.sample for out in outputs]))


@contextmanager
def forward_replaced(unet, forward, signature: inspect.Signature) -> Iterator[None]:
    """Within the block, `unet`'s forward is `forward` (which binds its arguments by the UNet's `signature`, and
    shows it to hooks that bind them too); then the forward it had again."""
    had_own = "forward" in vars(unet)  # accelerate's offload hooks put a forward of their own on the module
    original = unet.forward
    forward.__signature__ = signature
    unet.forward = forward
    try:
        yield
    finally:
        if had_own:
            unet.forward = original
        else:
            del unet.forward


@contextmanager
def unpadded(prompts, unet, mode: str = "on") -> Iterator[None]:
    """Within the block (one sampling pass of `prompts`), `unet` draws the pair as `mode` says."""
    if mode == "on" or not isinstance(prompts, ScheduledPrompts) or not pads(prompts):
        yield
        return
    prompts.step = 0
    original = unet.forward
    signature = inspect.signature(original)

    def forward(*args, **kwargs):
        arguments = dict(signature.bind(*args, **kwargs).arguments)
        hidden, n = arguments["encoder_hidden_states"], prompts.batch
        positive, negative = prompts.pair(prompts.step)
        cond, uncond = positive.own_length, negative.own_length
        rows = arguments["sample"].shape[0]
        if cond == uncond:
            return original(**arguments)
        if rows == n:  # no guidance (CFG 1): the prompt alone, over its own length
            return original(**{**arguments, "encoder_hidden_states": hidden[:, :cond]})
        if rows != 2 * n:
            raise RuntimeError(f"the UNet got {rows} rows for a batch of {n} with guidance")
        if mode == "v0":
            negative_rows = hidden[:n, :uncond]
            if uncond < cond:
                negative_rows = torch.cat([negative_rows, negative_rows[:, -1:].repeat(1, cond - uncond, 1)], dim=1)
            joined = torch.cat([negative_rows[:, :cond], hidden[n:, :cond]])
            return original(**{**arguments, "encoder_hidden_states": joined})
        return apart(original, arguments, ((slice(0, n), uncond), (slice(n, 2 * n), cond)))

    with forward_replaced(unet, forward, signature):
        yield
