"""ComfyUI's prompts (media/comfy_graph.py reads the rest of the graph): the text encoders a sampler's conditioning
comes from, and how ComfyUI joins them, in A1111's words.

    CLIPTextEncode                      the text; `embedding:name` written as the name (A1111's way)
    ConditioningCombine(a, b)           "a :0.5 AND b :0.5": ComfyUI's sampler averages the conds' predictions
    ConditioningConcat(a, b)            "a BREAK b": b's tokens appended to a's, a new 75-token chunk
    CLIPSetLastLayer, LoraLoader        the clip chain: clip skip, and the LoRAs' strength_clip

Every text of one prompt pair must come through one clip chain (personae encodes a pair with one text encoder).
"""

from __future__ import annotations

import re
from pathlib import PureWindowsPath

_EMBEDDING = re.compile(r"embedding:([^\s,()\[\]:]+)", re.IGNORECASE)
_A1111_ONLY = re.compile(r"(?<!\\)\[|\bBREAK\b|\bAND\b")


def text_of(graph, node_id: str, reading) -> tuple[str, tuple]:
    """A CLIPTextEncode's text (ComfyUI's `embedding:name` as the name, A1111's way) and its clip chain."""
    _, inputs = graph.node(node_id, ("CLIPTextEncode",))
    text = graph.value(node_id, inputs, "text", str)
    reading.texts.append(text)
    for match in _EMBEDDING.finditer(text):
        name = re.sub(r"\.(pt|pth|bin|safetensors)$", "", match.group(1), flags=re.IGNORECASE)
        reading.embeddings.append(PureWindowsPath(name).name)
    text = _EMBEDDING.sub(lambda m: PureWindowsPath(re.sub(r"\.(pt|pth|bin|safetensors)$", "", m.group(1),
                                                           flags=re.IGNORECASE)).name, text)
    return text, _clip(graph, *graph.link(node_id, inputs, "clip"))


def conditioning_texts(graph, node_id: str, reading) -> tuple[list[tuple[str, int]], tuple]:
    """The conds of a CONDITIONING output, each (its text in A1111's words, how many encodings it joins), and the
    one clip chain that encodes them all.

    ComfyUI's conditioning is a list of conds. ConditioningCombine joins two lists, and the sampler averages the
    predictions of a list's conds: A1111's AND with weights 1/n (joined_prompt). ConditioningConcat appends the
    tokens of conditioning_from's first cond to each cond of conditioning_to: A1111's BREAK, which ends a 75-token
    chunk where ComfyUI's encoding of the text ends."""
    kind, inputs = graph.node(node_id, ("CLIPTextEncode", "ConditioningCombine", "ConditioningConcat"))
    if kind == "CLIPTextEncode":
        text, clip = text_of(graph, node_id, reading)
        return [(text, 1)], clip
    first, second = ("conditioning_1", "conditioning_2") if kind == "ConditioningCombine" else \
        ("conditioning_to", "conditioning_from")
    conds, clip = conditioning_texts(graph, graph.link(node_id, inputs, first)[0], reading)
    others, other_clip = conditioning_texts(graph, graph.link(node_id, inputs, second)[0], reading)
    if other_clip != clip:
        raise graph.refuse(f"joins texts encoded through different CLIP chains (clip skip or LoRAs) in "
                           f"{graph.name(node_id)}; personae encodes every part of a prompt with one.")
    if kind == "ConditioningCombine":
        return conds + others, clip
    (appended, pieces), = others[:1]  # ComfyUI too appends only the first
    return [(f"{text} BREAK {appended}", n + pieces) for text, n in conds], clip


def joined_prompt(graph, node_id: str, conds: list[tuple[str, int]], negative: bool, reading) -> str:
    """One prompt in A1111's syntax for a list of conds: ComfyUI's average of their predictions is
    uncond + cfg * sum_i (cond_i - uncond) / n, A1111's AND with weight 1/n on each part."""
    if len(conds) == 1:
        return conds[0][0]
    if negative:
        raise graph.refuse(f"combines {len(conds)} conditionings into {graph.name(node_id)}'s negative prompt "
                           "(ConditioningCombine); A1111 and personae take one negative prompt.",
                           "Join the negative texts with ConditioningConcat (A1111's BREAK), or pass the settings on "
                           "the command line.")
    if len({pieces for _, pieces in conds}) > 1:
        reading.notes.append(f"{graph.name(node_id)} combines prompts joined from different numbers of texts "
                             "(ConditioningConcat), so of different lengths: ComfyUI runs each over its own tokens, "
                             "personae (as A1111's AND) pads the shorter by repeating its last token, so the picture "
                             "differs a little")
    weight = repr(1 / len(conds))
    return " AND ".join(f"{text} :{weight}" for text, _ in conds)


def _clip(graph, node_id: str, output: int) -> tuple:
    """(clip skip, ((LoRA node, strength_clip), ...), checkpoint node) of a CLIP output."""
    kind, inputs = graph.node(node_id, ("CLIPSetLastLayer", "LoraLoader", "CheckpointLoaderSimple"))
    if kind == "CheckpointLoaderSimple":
        return 1, (), node_id
    skip, loras, checkpoint = _clip(graph, *graph.link(node_id, inputs, "clip"))
    if kind == "CLIPSetLastLayer":
        layer = graph.value(node_id, inputs, "stop_at_clip_layer", int)
        if not -12 <= layer <= -1:
            raise graph.refuse(f"sets stop_at_clip_layer {layer} in {graph.name(node_id)}; personae's clip skip "
                               "goes from 1 to 12 (stop_at_clip_layer -1 to -12).")
        return -layer, loras, checkpoint
    return skip, ((node_id, float(graph.value(node_id, inputs, "strength_clip", (int, float)))), *loras), checkpoint


def prompt_notes(texts: list[str], reading) -> None:
    """What ComfyUI reads as plain text and A1111's syntax does not. Weighted words, (word:1.2), are read alike
    and weighted as ComfyUI weights them (the reading's emphasis "ComfyUI", jobs/generate.py)."""
    if any(_A1111_ONLY.search(t) for t in texts):
        reading.notes.append("[...], BREAK or AND in the prompts: plain text to ComfyUI, A1111 syntax to personae")
