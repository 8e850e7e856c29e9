"""Comparison metrics behind one small interface.

A metric scores every generated image (one number each, or None where it does not
apply, e.g. "no face found"); the report averages them per variant. A metric whose model
cannot be loaded raises `Unavailable` when it is built, and the report says why it was
skipped. New metric: a class with `name`, `title`, `score()`, and one line in `build_metrics`.

Offline metrics (always available):
- pixel: 1 - mean absolute pixel difference to the nearest reference image (0..1)
- ssim: the best structural similarity to any reference image (-1..1)
- diversity: per image, the mean pixel distance to the other seeds of the same variant and
  prompt; averaged, the mean pairwise distance across seeds (the paper uses LPIPS; this is
  its offline stand-in)

The shapes world's exact checker (world_metric.py, `world: {subject: star}`): subject fidelity, prompt
fidelity and prior of shapes-world models, read from each image against what its prompt asks.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from personae.evaluation.metric import Metric, Sample, Unavailable  # noqa: F401  (Sample: re-exported)
from personae.evaluation.pixels import as_array


def _stack(images: list[Image.Image], size: tuple[int, int]) -> np.ndarray:
    return np.stack([as_array(image, size) for image in images])


class PixelSimilarity(Metric):
    name, title, needs_references = "pixel", "pixel sim. ↑", True

    def score(self, samples, references):
        size = references[0].size
        refs = _stack(references, size)
        return [float(1 - np.abs(refs - as_array(s.image, size)[None]).mean(axis=(1, 2, 3)).min()) for s in samples]


class SSIMSimilarity(Metric):
    name, title, needs_references = "ssim", "SSIM ↑", True

    def score(self, samples, references):
        from skimage.metrics import structural_similarity

        size = references[0].size
        refs = _stack(references, size)
        window = max(3, min(7, min(size) // 2 * 2 - 1))  # odd, no larger than the image
        return [max(float(structural_similarity(ref, as_array(s.image, size), channel_axis=2, data_range=1.0,
                                                win_size=window)) for ref in refs) for s in samples]


class Diversity(Metric):
    name, title = "diversity", "diversity ↑"

    def score(self, samples, references):
        groups: dict[tuple[str, int], list[int]] = {}
        for i, s in enumerate(samples):
            groups.setdefault((s.variant, s.prompt_index), []).append(i)
        size = samples[0].image.size
        out: list[float | None] = [None] * len(samples)
        for members in groups.values():
            if len(members) < 2:
                continue
            arrays = _stack([samples[i].image for i in members], size)
            for j, i in enumerate(members):
                others = np.delete(arrays, j, axis=0)
                out[i] = float(np.abs(others - arrays[j][None]).mean(axis=(1, 2, 3)).mean())
        return out


def build_metrics(settings, device: str = "cpu", has_references: bool = True) -> tuple[list[Metric], dict[str, str]]:
    """The metrics a suite asks for, and {metric: why it was skipped} for those that cannot run here."""
    from personae.evaluation.face import FaceIdentity
    from personae.evaluation.model_metrics import ClipImage, ClipText, DinoImage

    wanted: list[tuple[str, object]] = []
    if settings.pixel:
        wanted.append(("pixel", PixelSimilarity))
    if settings.ssim:
        wanted.append(("ssim", SSIMSimilarity))
    if settings.diversity:
        wanted.append(("diversity", Diversity))
    if settings.dino:
        wanted.append(("dino", lambda: DinoImage(settings.dino, device)))
    if settings.clip:
        wanted.append(("clip_i", lambda: ClipImage(settings.clip, device)))
        wanted.append(("clip_t", lambda: ClipText(settings.clip, device)))
    if settings.face:
        wanted.append(("face", FaceIdentity))
    if settings.world:
        from personae.evaluation.world_metric import world_metrics

        made = world_metrics(settings.world)
        wanted += [(m.name, lambda m=m: m) for m in made]
    metrics, skipped = [], {}
    for name, make in wanted:
        try:
            metric = make()
        except Unavailable as exc:
            skipped[name] = str(exc)
            continue
        if metric.needs_references and not has_references:
            skipped[name] = "no reference images (set `references:` to the training images)"
            continue
        metrics.append(metric)
    return metrics, skipped
