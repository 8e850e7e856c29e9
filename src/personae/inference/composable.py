"""A1111's composable diffusion: a prompt split on AND, each part its own conditioning.

    "a red circle AND a blue square :0.5"      uncond + cfg * (1 * (circle - uncond) + 0.5 * (square - uncond))

As A1111's prompt_parser.get_multicond_prompt_list and CFGDenoiser.combine_denoised: the prompt (never the negative
prompt) is split on the word AND (capitals, a whole word: "ANDROID" and "and" are words); each part may end in a
weight `:NUMBER` (default 1, negative allowed), even a prompt without AND ("a cat :0.5" is half the guidance);
each part is encoded on its own with its own prompt-editing schedule and attention weights, and the guided
prediction is

    uncond + cfg * sum_i w_i * (cond_i - uncond)

The diffusers pipeline runs unchanged: for one sampling pass, hooks on the UNet turn its classifier-free-guidance
batch [uncond; cond] into one batch [uncond; cond_1; ...; cond_k] and hand back [uncond; uncond + sum_i w_i
(cond_i - uncond)], so the pipeline's own guidance gives the formula above. It is linear in the predictions, so it
holds for epsilon and v-prediction and for every sampler. A ControlNet's residuals are computed on the same
expanded batch, each part with its own text (as A1111's ControlNet extension runs it). With CFG at 1 or below
(diffusers then runs no uncond row) the hook adds the uncond row itself and returns A1111's formula at CFG 1.

Parts of different lengths are padded to the longest by repeating their last vector (A1111's
reconstruct_multicond_batch). The negative prompt then meets the parts as A1111's CFGDenoiser has it meet them, by
the pass's pad mode (inference/cond_lengths.py): "on" pads the shorter side with empty 75-token chunks, "v0" pads
the negative prompt by repeating its last vector or cuts it to the parts' length, and "off" runs the negative rows
through the UNet apart, over their own length, when the lengths differ.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext

import torch

from personae.inference.cond_lengths import apart, forward_replaced, unpadded
from personae.inference.prompt_schedule import ScheduledPrompts

_AND = re.compile(r"\bAND\b")
_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")  # A1111's re_weight
_RESIDUALS = ("down_block_additional_residuals", "mid_block_additional_residual",
              "down_intrablock_additional_residuals")


def split_prompt(prompt: str) -> list[tuple[str, float | None]]:
    """A1111's parts of a prompt: (text, the weight written after it, or None)."""
    parts = []
    for sub in _AND.split(prompt):
        text, weight = _WEIGHT.search(sub).groups()  # the pattern matches any text
        parts.append((text, None if weight is None else float(weight)))
    return parts


def composable_parts(prompt: str) -> list[tuple[str, float]] | None:
    """(text, weight) of each part, or None when the prompt is one part with no weight: drawn as a plain prompt."""
    parts = split_prompt(prompt)
    if len(parts) == 1 and parts[0][1] is None:
        return None
    return [(text, 1.0 if weight is None else weight) for text, weight in parts]


class ComposablePrompts:
    """The parts of a prompt with AND, and the negative prompt, for one sampling pass of `steps` steps: each part a
    ScheduledPrompts with the negative (its own schedule, encoded once per text), and the step the pass is at."""

    def __init__(self, encoder, parts: list[tuple[str, float]], negative: str, clip_skip: int, steps: int,
                 batch: int, dtype, emphasis: str = "Original", backtrack: int = 20):
        self.parts = [ScheduledPrompts(encoder, text, negative, clip_skip, steps, batch, dtype, emphasis, backtrack)
                      for text, _ in parts]
        self.weights = [weight for _, weight in parts]
        self.batch, self.dtype = batch, dtype
        self.step = 0  # the sampler step of the pass: 0 as it starts (composing), then set by the step callback
        self.pad = "on"  # how the negative prompt meets the parts when their lengths differ: set by `composing`
        self._encoder, self._clip_skip, self._emphasis, self._empty_chunk = encoder, clip_skip, emphasis, None

    @property
    def changes(self) -> bool:
        return any(part.changes for part in self.parts)

    @property
    def prompts(self) -> tuple:
        """Every part's stages (for the prompt-editing message)."""
        return tuple(stage for part in self.parts for stage in part.prompts)

    @property
    def negatives(self) -> tuple:
        return self.parts[0].negatives

    def pair(self, step: int):
        """(positive, negative) of the part with the most tokens at `step` (for the long-prompt message)."""
        return max((part.pair(step) for part in self.parts), key=lambda pair: pair[0].tokens)

    def every_pair(self) -> list:
        return [pair for part in self.parts for pair in part.every_pair()]

    def lengths(self, step: int) -> tuple[int, int]:
        """(the negative prompt's own length, the parts' length: the longest part's own) at `step`, in tokens."""
        pairs = [part.pair(step) for part in self.parts]
        return pairs[0][1].own_length, max(positive.own_length for positive, _ in pairs)

    def split(self, step: int) -> tuple[int, int] | None:
        """The two lengths when the UNet runs the negative rows apart at `step` (pad "off", lengths unequal)."""
        lengths = self.lengths(step)
        return lengths if self.pad == "off" and lengths[0] != lengths[1] else None

    def pads(self) -> bool:
        """Whether some step meets a negative prompt and parts of different lengths (A1111's "Pad conds" key)."""
        ends = sorted({end for part in self.parts for end, _ in (*part.prompts, *part.negatives)} | {0})
        return any(negative != parts for negative, parts in map(self.lengths, ends))

    def _empty(self) -> torch.Tensor:
        """The empty prompt's chunk, A1111's padding for "Pad conds"."""
        if self._empty_chunk is None:
            self._empty_chunk = self._encoder.encode("", self._clip_skip, emphasis=self._emphasis).embeds
        return self._empty_chunk

    def embeddings(self, step: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(negative, [part, ...]) at sampler step `step`, each [1, tokens, hidden], all of one length: the parts
        padded to the longest by their last vector, then the two sides met as `pad` says (for "off" the shorter
        side padded with empty chunks, which the UNet's split call leaves out again)."""
        pairs = [part.pair(step) for part in self.parts]
        negative_length, length = self.lengths(step)
        negative = pairs[0][1].embeds[:, :negative_length]

        def repeated(embeds: torch.Tensor, own: int, to: int) -> torch.Tensor:
            embeds = embeds[:, :own]
            return torch.cat([embeds, embeds[:, -1:].repeat(1, to - own, 1)], dim=1) if to > own else embeds[:, :to]

        parts = [repeated(positive.embeds, positive.own_length, length) for positive, _ in pairs]
        if self.pad == "v0":
            return repeated(negative, negative_length, length), parts
        empty = self._empty() if negative_length != length else None
        if negative_length < length:
            negative = torch.cat([negative, empty.repeat(1, (length - negative_length) // empty.shape[1], 1)], dim=1)
        elif negative_length > length:
            pad = empty.repeat(1, (negative_length - length) // empty.shape[1], 1)
            parts = [torch.cat([part, pad], dim=1) for part in parts]
        return negative, parts

    def hidden_states(self, step: int, device, dtype) -> torch.Tensor:
        """The UNet's text input for the expanded batch: [negative x batch; part 1 x batch; ...; part k x batch]."""
        negative, parts = self.embeddings(step)
        rows = [embeds.to(device, dtype).repeat(self.batch, 1, 1) for embeds in [negative, *parts]]
        return torch.cat(rows)

    def call_kwargs(self) -> dict:
        """The pipeline's arguments: the first part and the negative prompt, which set the pipeline's batch (the
        hooks give the UNet every part at every step)."""
        negative, parts = self.embeddings(0)
        return dict(prompt_embeds=parts[0].to(self.dtype).repeat(self.batch, 1, 1),
                    negative_prompt_embeds=negative.to(self.dtype).repeat(self.batch, 1, 1))

    def after_step(self, pipeline, step: int, kwargs: dict) -> dict:
        """Step `step` is done: the hooks take the parts' texts of the next one."""
        self.step = step + 1
        return kwargs


def scheduled_prompts(encoder, prompt: str, negative: str, clip_skip: int, steps: int, batch: int, dtype,
                      emphasis: str = "Original", backtrack: int = 20):
    """ComposablePrompts for a prompt with AND (or a trailing weight), else the plain ScheduledPrompts."""
    parts = composable_parts(prompt)
    if parts is None:
        return ScheduledPrompts(encoder, prompt, negative, clip_skip, steps, batch, dtype, emphasis, backtrack)
    return ComposablePrompts(encoder, parts, negative, clip_skip, steps, batch, dtype, emphasis, backtrack)


class _Composition:
    """The hooks of one pass: expand a call's batch to every part, then combine the UNet's predictions."""

    def __init__(self, prompts: ComposablePrompts):
        self.prompts = prompts
        self.guided = False  # whether the UNet call being run came with the uncond rows (CFG above 1)

    def _expanded(self, module, args: tuple, kwargs: dict, what: str) -> tuple[tuple, dict]:
        arguments = inspect.signature(module.forward).bind(*args, **kwargs).arguments
        sample, n, k = arguments["sample"], self.prompts.batch, len(self.prompts.weights)
        rows = sample.shape[0]
        if rows not in (n, 2 * n):
            raise RuntimeError(f"composable diffusion: the {what} got {rows} rows for a batch of {n}")
        self.guided = rows == 2 * n
        uncond, cond = list(range(n)), list(range(n, 2 * n) if self.guided else range(n))
        index = torch.tensor(uncond + cond * k, device=sample.device)

        def rows_of(value):
            if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == rows:
                return value.index_select(0, index.to(value.device))
            if isinstance(value, dict):
                return {key: rows_of(v) for key, v in value.items()}
            if isinstance(value, (list, tuple)):  # an IP-Adapter's embeddings: one tensor per adapter
                return type(value)(rows_of(v) for v in value)
            return value

        hidden = arguments["encoder_hidden_states"]
        for name, value in arguments.items():
            if name == "encoder_hidden_states":
                arguments[name] = self.prompts.hidden_states(self.prompts.step, hidden.device, hidden.dtype)
            elif name in _RESIDUALS:  # a ControlNet's, already computed on the expanded batch (control_inputs)
                first = value[0] if isinstance(value, (list, tuple)) else value
                if first is not None and first.shape[0] != (k + 1) * n:
                    raise RuntimeError("composable diffusion: the UNet got residuals of another batch")
            else:
                arguments[name] = rows_of(value)
        return (), arguments

    def control_inputs(self, module, args, kwargs):
        if kwargs.get("guess_mode"):  # diffusers would give the ControlNet the cond rows alone
            raise RuntimeError("composable diffusion does not run a ControlNet in guess mode")
        return self._expanded(module, args, kwargs, "ControlNet")

    def unet_inputs(self, module, args, kwargs):
        return self._expanded(module, args, kwargs, "UNet")

    def unet_output(self, module, args, kwargs, output):
        predicted = output[0] if isinstance(output, tuple) else output.sample
        n = self.prompts.batch
        uncond, conds = predicted[:n], predicted[n:].unflatten(0, (len(self.prompts.weights), n))
        combined = uncond.clone()
        for weight, cond in zip(self.prompts.weights, conds):
            combined += (cond - uncond) * weight
        result = torch.cat([uncond, combined]) if self.guided else combined
        return (result, *output[1:]) if isinstance(output, tuple) else type(output)(sample=result)


@contextmanager
def composing(prompts, unet, controlnets: Sequence = (), pad: str = "on") -> Iterator[None]:
    """Within the block (one sampling pass), calls of `unet` and of `controlnets` compose the parts of `prompts`
    when it is ComposablePrompts; a plain prompt and a negative prompt of different lengths are drawn as `pad`
    says (inference/cond_lengths.py). The hooks are removed when the block ends."""
    if not isinstance(prompts, ComposablePrompts):
        with unpadded(prompts, unet, pad):
            yield
        return
    prompts.step, prompts.pad = 0, pad
    composition = _Composition(prompts)
    handles = [unet.register_forward_pre_hook(composition.unet_inputs, with_kwargs=True),
               unet.register_forward_hook(composition.unet_output, with_kwargs=True)]
    unique = {id(net): net for net in controlnets}.values()  # two units may share one ControlNet: one hook each
    handles += [net.register_forward_pre_hook(composition.control_inputs, with_kwargs=True) for net in unique]
    original = unet.forward
    signature = inspect.signature(original)

    def forward(*args, **kwargs):  # beneath the hooks: the expanded batch, run in two calls when pad "off" says
        arguments = dict(signature.bind(*args, **kwargs).arguments)
        lengths = prompts.split(prompts.step)
        if lengths is None:
            return original(**arguments)
        n, rows = prompts.batch, arguments["sample"].shape[0]
        return apart(original, arguments, ((slice(0, n), lengths[0]), (slice(n, rows), lengths[1])))

    try:
        with forward_replaced(unet, forward, signature) if pad == "off" else nullcontext():
            yield
    finally:
        for handle in handles:
            handle.remove()
