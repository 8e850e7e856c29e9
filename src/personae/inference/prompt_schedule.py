"""A1111's prompt editing: a prompt that changes while the picture is drawn.

    "a [cat:dog:0.5] in a field"     a cat for the first half of the steps, then a dog (0.5 of the steps, or a step
                                     number when 1 or more)
    "a [hat:5] on a [dog::0.8]"      "hat" joins after step 5; "dog" leaves after 80 %
    "a [cat|dog] hybrid"             alternates every step

As A1111's prompt_parser: the prompt is parsed by a grammar (the syntax above nested in any way, emphasis brackets
kept as written for the attention parser, a prompt the grammar cannot read taken whole), every step where some
part changes is collected (a fraction below 1 is times the steps, rounded down, at most the steps; an
alternation changes at every step), and the prompt is written out at each of those steps: a list of
(last step, text). Step i of the sampler (counted from 0, in this pass) uses the first entry whose last step is at
least i: A1111's reconstruct_cond_batch, off-by-one included (`[b:3]` of 10 steps is without b for steps 0-3).
The negative prompt is scheduled the same way.
"""

from __future__ import annotations

from functools import lru_cache

import torch

_GRAMMAR = r"""
!start: (text | /[][():]/+)*
text: (group | edit | swap | WORD | SPACE)*
!group: "(" text ")" | "(" text ":" text ")" | "[" text "]"
edit: "[" [text ":"] text ":" [SPACE] NUMBER "]"
swap: "[" text ("|" text)+ "]"
SPACE: /\s+/
WORD: /([^\\\[\]():|]|\\.)+/
%import common.SIGNED_NUMBER -> NUMBER
"""


@lru_cache(maxsize=1)
def _parser():
    import lark

    return lark.Lark(_GRAMMAR)


def _when(node, steps: int) -> int:
    """The step an edit switches at: a fraction below 1 of the steps, else a step number; at most the steps."""
    when = float(node.children[-1])
    return min(steps, int(when * steps if when < 1 else when))


def _written(node, step: int, steps: int) -> str:
    from lark import Token

    if node is None:
        return ""
    if isinstance(node, Token):
        return node.value
    if node.data == "edit":
        before, after = node.children[0], node.children[1]
        return _written(before, step, steps) if step <= _when(node, steps) else _written(after, step, steps)
    if node.data == "swap":
        return _written(node.children[(step - 1) % len(node.children)], step, steps)
    return "".join(_written(child, step, steps) for child in node.children)


@lru_cache(maxsize=64)
def prompt_schedule(prompt: str, steps: int) -> tuple[tuple[int, str], ...]:
    """((last step, text), ...) of a prompt drawn in `steps` steps; one entry when nothing in it changes."""
    from lark.exceptions import LarkError

    if not any(c in prompt for c in "[|"):  # nothing to edit: the grammar is not needed
        return ((steps, prompt),)
    try:
        tree = _parser().parse(prompt)
    except LarkError:
        return ((steps, prompt),)
    ends = {steps}
    for node in tree.iter_subtrees():
        if node.data == "edit":
            ends.add(_when(node, steps))
        elif node.data == "swap":
            ends.update(range(1, steps + 1))
    return tuple((end, _written(tree, end, steps)) for end in sorted(ends))


def text_at(schedule: tuple[tuple[int, str], ...], step: int) -> str:
    """The text for sampler step `step` (0-based): the first entry whose last step is at least it."""
    return next((text for end, text in schedule if step <= end), schedule[0][1])


class ScheduledPrompts:
    """The prompt and negative prompt of one sampling pass of `steps` steps, encoded per step as the schedules
    say (each distinct pair once), and the diffusers step callback that swaps them in as the pass goes on."""

    def __init__(self, encoder, prompt: str, negative: str, clip_skip: int, steps: int, batch: int, dtype,
                 emphasis: str = "Original", backtrack: int = 20):
        self.encoder, self.clip_skip, self.batch, self.dtype = encoder, clip_skip, batch, dtype
        self.emphasis, self.backtrack = emphasis, backtrack
        self.prompts, self.negatives = prompt_schedule(prompt, steps), prompt_schedule(negative, steps)
        self._encoded: dict[tuple[str, str], tuple] = {}
        self.step = 0  # the sampler step of the pass: set by the step callback (and to 0 as a pass starts)

    @property
    def changes(self) -> bool:
        return len(self.prompts) > 1 or len(self.negatives) > 1

    def pair(self, step: int):
        """(positive, negative) EncodedPrompts for sampler step `step` (0-based)."""
        key = (text_at(self.prompts, step), text_at(self.negatives, step))
        if key not in self._encoded:
            self._encoded[key] = self.encoder.encode_pair(key[0], key[1], self.clip_skip, self.emphasis,
                                                          self.backtrack)
        return self._encoded[key]

    def every_pair(self) -> list:
        """Every (positive, negative) the pass will use, encoded now (so a NaN is found before any step)."""
        ends = sorted({end for end, _ in self.prompts} | {end for end, _ in self.negatives} | {0})
        return [self.pair(step) for step in ends]

    def call_kwargs(self) -> dict:
        """The pipeline arguments of the first step: its embeddings, and (when the prompt changes) the callback
        input that lets the step callback replace them."""
        positive, negative = self.pair(0)
        kwargs = dict(prompt_embeds=positive.embeds.to(self.dtype).repeat(self.batch, 1, 1),
                      negative_prompt_embeds=negative.embeds.to(self.dtype).repeat(self.batch, 1, 1))
        if self.changes:
            kwargs["callback_on_step_end_tensor_inputs"] = ["latents", "prompt_embeds"]
        return kwargs

    def after_step(self, pipeline, step: int, kwargs: dict) -> dict:
        """Step `step` is done: the embeddings of the next one (the classifier-free-guidance batch, negative first,
        as the pipeline holds them), when the prompt changes."""
        self.step = step + 1
        if self.changes and "prompt_embeds" in kwargs:
            positive, negative = self.pair(step + 1)
            embeds = positive.embeds.to(self.dtype).repeat(self.batch, 1, 1)
            if getattr(pipeline, "do_classifier_free_guidance", False):
                embeds = torch.cat([negative.embeds.to(self.dtype).repeat(self.batch, 1, 1), embeds])
            kwargs["prompt_embeds"] = embeds.to(kwargs["prompt_embeds"].device)
        return kwargs
