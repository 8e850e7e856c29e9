"""The DreamBooth paper's learned metrics, through transformers (local folder or hub id).

- DINO: mean cosine similarity between the DINO ViT-S/16 [CLS] embedding of a generated image
  and of each reference image (subject fidelity; DINO separates individuals of one class
  better than CLIP does).
- CLIP-I: the same with CLIP image embeddings.
- CLIP-T: cosine similarity between the image's CLIP embedding and the prompt's, with the
  trigger token left out (prompt fidelity: does the image show what was asked?).

No such weights ship in any package: offline, a hub id that is not in the local cache
makes the metric `Unavailable`, and the report lists it as skipped with the reason.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from personae.errors import UserError
from personae.evaluation.metric import Metric, Unavailable


def _sources(name: str, *loads) -> tuple:
    """Each of `loads` (from_pretrained functions) on one model: from a local folder, from the hub cache, or from
    the hub; anything else is Unavailable. The cache is taken only when it holds every part: a repo cached in part
    (the weights fetched, not yet the image processor) is fetched the rest of the way, not loaded half."""
    path = Path(name).expanduser()
    if path.is_dir():
        return tuple(load(str(path)) for load in loads)
    if path.suffix or name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise Unavailable(f'"{name}" is not a model folder (and not a hub id)')
    from personae.hub import from_cache_or_hub

    try:
        return from_cache_or_hub(name, "the metric model", "set it in the suite's metrics section as a local folder.",
                                 lambda cached: tuple(load(name, local_files_only=cached) for load in loads))
    except UserError as exc:
        raise Unavailable(str(exc)) from None


@lru_cache(maxsize=4)
def load_clip(name: str, device: str):
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    model, processor, tokenizer = _sources(name, CLIPModel.from_pretrained, AutoImageProcessor.from_pretrained,
                                           AutoTokenizer.from_pretrained)
    return model.to(device).eval(), processor, tokenizer


@lru_cache(maxsize=2)
def load_dino(name: str, device: str):
    from transformers import AutoImageProcessor, AutoModel

    model, processor = _sources(name, AutoModel.from_pretrained, AutoImageProcessor.from_pretrained)
    return model.to(device).eval(), processor


def _pooled(output) -> torch.Tensor:
    """transformers 5 returns a model output whose pooler_output is the projection; 4.x a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


@torch.no_grad()
def clip_image_embeddings(model, processor, images, device) -> torch.Tensor:
    pixels = processor(images=[i.convert("RGB") for i in images], return_tensors="pt")["pixel_values"]
    return _unit(_pooled(model.get_image_features(pixel_values=pixels.to(device))))


@torch.no_grad()
def clip_text_embeddings(model, tokenizer, texts, device) -> torch.Tensor:
    tokens = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    return _unit(_pooled(model.get_text_features(input_ids=tokens["input_ids"].to(device),
                                                 attention_mask=tokens["attention_mask"].to(device))))


@torch.no_grad()
def dino_embeddings(model, processor, images, device) -> torch.Tensor:
    pixels = processor(images=[i.convert("RGB") for i in images], return_tensors="pt")["pixel_values"]
    return _unit(model(pixel_values=pixels.to(device)).last_hidden_state[:, 0])


def _in_batches(fn, items, size=16) -> torch.Tensor:
    return torch.cat([fn(items[i:i + size]) for i in range(0, len(items), size)])


class ReferenceSimilarity(Metric):
    """Mean cosine similarity between an image's embedding and each reference image's (the paper's CLIP-I, DINO)."""

    needs_references = True

    def embed(self, images) -> torch.Tensor:
        raise NotImplementedError

    def score(self, samples, references):
        refs = _in_batches(self.embed, references)
        gens = _in_batches(self.embed, [s.image for s in samples])
        return (gens @ refs.T).mean(dim=1).tolist()


class ClipImage(ReferenceSimilarity):
    name, title = "clip_i", "CLIP-I ↑"

    def __init__(self, model: str, device: str = "cpu"):
        self.model, self.processor, _ = load_clip(model, device)
        self.device = device

    def embed(self, images):
        return clip_image_embeddings(self.model, self.processor, images, self.device)


class ClipText(Metric):
    name, title = "clip_t", "CLIP-T ↑"

    def __init__(self, model: str, device: str = "cpu"):
        self.model, self.processor, self.tokenizer = load_clip(model, device)
        self.device = device

    def score(self, samples, references):
        images = _in_batches(lambda imgs: clip_image_embeddings(self.model, self.processor, imgs, self.device),
                             [s.image for s in samples])
        texts = _in_batches(lambda t: clip_text_embeddings(self.model, self.tokenizer, t, self.device),
                            [s.class_prompt or s.prompt for s in samples])
        return (images * texts).sum(dim=1).tolist()


class DinoImage(ReferenceSimilarity):
    name, title = "dino", "DINO ↑"

    def __init__(self, model: str, device: str = "cpu"):
        self.model, self.processor = load_dino(model, device)
        self.device = device

    def embed(self, images):
        return dino_embeddings(self.model, self.processor, images, self.device)
