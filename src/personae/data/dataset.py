"""What the trainer reads: examples from a prepared set, a deterministic batch plan, caption noise.

Everything random here is a pure function of (seed, epoch) or (seed, step), so a resumed
run sees exactly the batches and captions an uninterrupted run would, and N processes
split one global batch exactly as one process would take it whole.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from personae.data.captions import keep_and_shuffle_split
from personae.data.masks import sidecar_mask
from personae.data.prepare import load_manifest, read_caption_file
from personae.events import EventHandler, Message, ignore


@dataclass(frozen=True)
class Example:
    image: Path
    caption: str
    size: tuple[int, int]  # (width, height): examples batch only with their own size (bucket)
    repeats: int = 1
    keep_tokens: int = 0
    mask: Path | None = None  # images/<name>.mask.png when there is one (data.masked_loss; data/masks.py)


def examples_from_prepared(folder: str | Path, on_event: EventHandler = ignore) -> list[Example]:
    """The set's images with their captions. Captions on disk are the truth: an image's `.txt` beside it (which
    users and tagging tools edit, as with kohya) wins over manifest.jsonl; how many did is said once."""
    folder = Path(folder)
    examples, edited = [], 0
    for e in load_manifest(folder):
        caption, sidecar = e.caption, (folder / e.image).with_suffix(".txt")
        if sidecar.is_file():
            caption = read_caption_file(sidecar)
            edited += caption != e.caption
        mask = sidecar_mask(folder / e.image)
        examples.append(Example(folder / e.image, caption, (e.width, e.height), e.repeats, e.keep_tokens,
                                mask if mask.is_file() else None))
    if edited:
        on_event(Message(f"{edited} of {len(examples)} captions come from edited .txt files in {folder / 'images'} "
                         "(they differ from manifest.jsonl; the .txt files are used)"))
    return examples


def load_pixels(path: Path, flip: bool = False) -> np.ndarray:
    """An image as float32 CHW in [-1, 1] (what the VAE encodes)."""
    with Image.open(path) as img:
        array = np.asarray(img.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    if flip:
        array = array[:, ::-1]
    return np.ascontiguousarray(array.transpose(2, 0, 1))


class BatchPlan:
    """Which examples make up the global batch of each optimizer step.

    Per epoch: every example `repeats` times, shuffled within its size bucket, cut into
    batches of `batch` (a bucket's last short batch is filled from the same bucket's
    start), and the batches shuffled. Each epoch has the same number of batches.
    """

    def __init__(self, examples: list[Example], batch: int, seed: int):
        if not examples:
            raise ValueError("no training examples")
        self.examples, self.batch, self.seed = examples, batch, seed
        self.steps_per_epoch = len(self._epoch(0))

    def _epoch(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        buckets: dict[tuple[int, int], list[int]] = {}
        for i, ex in enumerate(self.examples):
            buckets.setdefault(ex.size, []).extend([i] * ex.repeats)
        batches = []
        for size in sorted(buckets):
            items = [buckets[size][j] for j in rng.permutation(len(buckets[size]))]
            for start in range(0, len(items), self.batch):
                chunk = items[start:start + self.batch]
                fill = 0
                while len(chunk) < self.batch:
                    chunk.append(items[fill % len(items)])
                    fill += 1
                batches.append(chunk)
        return [batches[j] for j in rng.permutation(len(batches))]

    def batch_for_step(self, step: int) -> list[int]:
        epoch, index = divmod(step, self.steps_per_epoch)
        return self._epoch(epoch)[index]


def noisy_caption(caption: str, rng: random.Random, shuffle: bool, keep_tokens: int, dropout: float,
                  tag_dropout: float = 0.0) -> str:
    """Caption dropout (-> ""), then tag shuffle and tag dropout after the first `keep_tokens` tags, as kohya does
    (its process_caption: shuffle first, then each remaining tag kept with probability 1 - tag_dropout)."""
    if dropout and rng.random() < dropout:
        return ""
    if (shuffle or tag_dropout) and "," in caption:
        kept, rest = keep_and_shuffle_split(caption, keep_tokens)
        if shuffle:
            rng.shuffle(rest)
        if tag_dropout:
            rest = [tag for tag in rest if rng.random() >= tag_dropout]
        return ", ".join(kept + rest)
    return caption
