"""Scores of a taught shapes-world concept, read back by the exact checker (the bench's measurements).

    prompts = bench_prompts("<star>", colour="white", train_backgrounds=["blue", "green"],
                            train_sizes=["close-up", "medium shot"])
    scores = score_concept("star", prompts, images)

- subject fidelity: share of "a {colour} {word} on a {bg} background" images that show the taught
  shape (every background the shape's colour can stand on);
- prompt fidelity: share of "a {colour} {word} on a {bg} background, {size}" images, for backgrounds or
  sizes not in the training images, whose background and size follow the prompt;
- diversity: how far the taught shape's positions spread across seeds (pixels, standard deviation
  of the centre)
  and how many of the three sizes appear, as entropy in bits (log2 3 = 1.58 at most);
- prior preservation is `evaluate_world` before and after (world_eval.py).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from personae.world.check import check
from personae.world.scene import BACKGROUNDS, SIDE, SIZES


@dataclass(frozen=True)
class BenchPrompt:
    text: str
    kind: str  # "subject" (no size) or "edit" (a background or size the training images lacked)
    background: str
    size: str | None
    seen: bool = False  # the background (and size) appear in the training images


def bench_prompts(word: str, colour: str, train_backgrounds: list[str], train_sizes: list[str]) -> list[BenchPrompt]:
    """The subject prompts, then the editability prompts (unseen background or unseen size)."""
    backgrounds = [b for b in BACKGROUNDS if b != colour]  # a white star cannot stand on white
    out = [BenchPrompt(f"a {colour} {word} on a {b} background", "subject", b, None, b in train_backgrounds)
           for b in backgrounds]
    for b in backgrounds:
        for size in SIZES:
            if b not in train_backgrounds or size not in train_sizes:
                out.append(BenchPrompt(f"a {colour} {word} on a {b} background, {size}", "edit", b, size))
    return out


def _entropy(values: list[str]) -> float:
    counts = Counter(values)
    n = sum(counts.values())
    return 0.0 - sum(c / n * math.log2(c / n) for c in counts.values()) if n else 0.0  # 0.0, never -0.0


def score_concept(shape: str, prompts: list[BenchPrompt], images_per_prompt: list[list]) -> dict[str, float]:
    """Subject fidelity, prompt fidelity, their shape-on-edit share, and diversity, from generated images."""
    subject, edit, edit_shape, spreads, sizes, seen, unseen = [], [], [], [], [], [], []
    for prompt, images in zip(prompts, images_per_prompt):
        found = [check(image) for image in images]
        if prompt.kind == "subject":
            subject += [f.shape == shape for f in found]
            (seen if prompt.seen else unseen).extend(f.shape == shape for f in found)
            sizes += [f.size for f in found if f.shape == shape]
            centres = np.array([f.position for f in found if f.shape == shape]) * SIDE
            if len(centres) > 1:
                spreads.append(float(np.sqrt(centres.var(axis=0).sum())))
        else:
            edit += [f.background == prompt.background and f.size == prompt.size for f in found]
            edit_shape += [f.shape == shape for f in found]
    return {
        "subject_fidelity": float(np.mean(subject)) if subject else 0.0,
        "prompt_fidelity": float(np.mean(edit)) if edit else 0.0,
        "subject_seen_bg": float(np.mean(seen)) if seen else 0.0,
        "subject_unseen_bg": float(np.mean(unseen)) if unseen else 0.0,
        "subject_on_edit": float(np.mean(edit_shape)) if edit_shape else 0.0,
        "position_spread_px": float(np.mean(spreads)) if spreads else 0.0,
        "size_entropy_bits": _entropy(sizes),
    }
