"""Captioners that run a model: any transformers image-to-text model with a processor (BLIP, BLIP-2, GIT,
Florence-2...), loaded from a folder or a hub id. The ones that need no model are in data/captioners.py;
`load_captioner(spec)` returns either kind, for `prepare_dataset(..., captioner=...)`."""

from __future__ import annotations

from pathlib import Path

from personae.data.captioners import SIMPLE, Captioner
from personae.errors import UserError
from personae.hub import require_hub


def load_captioner(spec: str, device: str = "cpu") -> Captioner:
    """`filename`, `none`, or a model folder / hub id."""
    if spec in SIMPLE:
        return SIMPLE[spec]()
    return TransformersCaptioner(spec, device=device)


class TransformersCaptioner:
    """Any transformers image-to-text model with a processor (BLIP, BLIP-2, GIT, Florence-2...)."""

    def __init__(self, name_or_path: str, device: str = "cpu", max_new_tokens: int = 40, prompt: str | None = None):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.name = name_or_path
        local = Path(name_or_path).expanduser()
        local_only = local.is_dir()
        if not local_only and (name_or_path.startswith((".", "/", "~")) or local.suffix):
            raise UserError(f'Captioner "{name_or_path}" was not found.', "Pass a model folder or a hub id.")
        if not local_only:
            try:  # the local cache first, else one quick check that the hub answers
                AutoProcessor.from_pretrained(name_or_path, local_files_only=True)
            except OSError:
                require_hub(name_or_path, "captioner", "pass its folder with --captioner ./folder, "
                                                       "or use the offline default --captioner filename.")
        try:
            source = str(local) if local_only else name_or_path
            self.processor = AutoProcessor.from_pretrained(source, local_files_only=local_only)
            self.model = AutoModelForImageTextToText.from_pretrained(source, local_files_only=local_only).to(device).eval()
        except OSError as exc:
            raise UserError(
                f'Captioner "{name_or_path}" could not be loaded ({str(exc).splitlines()[0]}).',
                "With no network, download the model elsewhere and pass its folder with --captioner ./folder, "
                "or use the offline default --captioner filename.",
            ) from None
        self.device, self.max_new_tokens, self.prompt = device, max_new_tokens, prompt
        self._torch = torch

    def caption(self, images, paths):
        kwargs = {"text": [self.prompt] * len(images)} if self.prompt else {}
        inputs = self.processor(images=images, return_tensors="pt", **kwargs).to(self.device)
        with self._torch.no_grad():
            ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        texts = self.processor.batch_decode(ids, skip_special_tokens=True)
        if self.prompt:
            texts = [t[len(self.prompt):] if t.startswith(self.prompt) else t for t in texts]
        return [" ".join(t.split()) for t in texts]
