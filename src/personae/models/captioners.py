"""Captioners that run a model: a WD14-style ONNX tagger (`wd14:FOLDER_OR_HUB_ID`, models/wd14.py) or any
transformers image-to-text model with a processor (BLIP, BLIP-2, GIT, Florence-2...), loaded from a folder or a hub id.
The ones that need no model are in data/captioners.py; `load_captioner(spec)` returns either kind, for
`prepare_dataset(..., load_captioner=...)`. Only transformers' own classes run: a checkpoint that needs code from its
repository (trust_remote_code) is refused."""

from __future__ import annotations

import json
from pathlib import Path

from personae.config.prepare import PrepareSettings
from personae.data.captioners import SIMPLE, Captioner
from personae.errors import UserError
from personae.hub import from_cache_or_hub

WD14 = "wd14:"
FLORENCE_TASKS = ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>")


def load_captioner(spec: str, device: str = "cpu", settings: PrepareSettings | None = None) -> Captioner:
    """`filename`, `none`, `wd14:FOLDER_OR_HUB_ID`, or a transformers model folder / hub id; `settings` gives the
    tagger's thresholds and Florence-2's task (defaults when None)."""
    settings = settings or PrepareSettings()
    if spec in SIMPLE:
        return SIMPLE[spec]()
    if spec.startswith(WD14):
        from personae.models.wd14 import TagChoice, WD14Tagger

        choice = TagChoice(general_threshold=settings.tag_threshold, character_threshold=settings.character_threshold,
                           underscores_to_spaces=not settings.keep_underscores, rating=settings.rating_tags,
                           undesired={t.strip() for t in settings.undesired_tags.split(",") if t.strip()},
                           max_tags=settings.max_tags)
        return WD14Tagger.load(spec[len(WD14):], choice)
    return TransformersCaptioner(spec, device=device, florence_task=settings.caption_task)


def check_native(config: dict, name: str) -> None:
    """Refuse a checkpoint that only its own repository's code can run (personae never runs code from a model)."""
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type")
    vision = (config.get("vision_config") or {}).get("model_type")
    if model_type == "florence2" and vision not in (None, "florence_vision"):
        raise UserError(f'"{name}" is a Florence-2 checkpoint in the original Microsoft format, which needs code from '
                        "its repository (trust_remote_code); personae never runs code from a model.",
                        "Use the copy converted for transformers' own classes: florence-community/Florence-2-base "
                        "or florence-community/Florence-2-large (or a fine-tune saved with transformers 4.56+).")
    if model_type not in CONFIG_MAPPING:
        raise UserError(f'"{name}" is a model of type "{model_type}", which transformers does not know: it needs code '
                        "from its repository (trust_remote_code), and personae never runs code from a model.",
                        "Use a captioner transformers ships (BLIP, BLIP-2, GIT, Florence-2 from florence-community), "
                        "a WD14 tagger with --captioner wd14:FOLDER, or --captioner filename.")


def _config_of(source: str, folder: bool, cache_only: bool) -> dict:
    """config.json of a folder or a hub repo (from the cache alone with `cache_only`), read as data."""
    if folder:
        path = Path(source) / "config.json"
    else:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(source, "config.json", local_files_only=cache_only))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} could not be read as a model config ({type(exc).__name__}).",
                        "Pass the folder of a transformers image-to-text model (it holds config.json).") from None


def _parts(source: str, name: str, folder: bool, cache_only: bool):
    """(config, processor, model) of a folder, the hub cache or the hub; the config is read, and a model that needs
    code of its own refused, before anything else loads."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    config = _config_of(source, folder, cache_only)
    check_native(config, name)
    local = folder or cache_only
    return (config, AutoProcessor.from_pretrained(source, local_files_only=local),
            AutoModelForImageTextToText.from_pretrained(source, local_files_only=local))


class TransformersCaptioner:
    """Any transformers image-to-text model with a processor (BLIP, BLIP-2, GIT, Florence-2...)."""

    def __init__(self, name_or_path: str, device: str = "cpu", max_new_tokens: int | None = None,
                 prompt: str | None = None, florence_task: str = "<DETAILED_CAPTION>"):
        """max_new_tokens: 40, or 256 for Florence-2; florence_task: the task prompt when the model is Florence-2."""
        import torch

        self.name = name_or_path
        local = Path(name_or_path).expanduser()
        folder = local.is_dir()
        if not folder and (name_or_path.startswith((".", "/", "~")) or local.suffix):
            raise UserError(f'Captioner "{name_or_path}" was not found.', "Pass a model folder or a hub id.")
        hint = "pass its folder with --captioner ./folder, or use the offline default --captioner filename."
        try:
            if folder:
                config, self.processor, model = _parts(str(local), name_or_path, True, True)
            else:  # the hub's refusals said as the user's to act on
                config, self.processor, model = from_cache_or_hub(
                    name_or_path, "captioner", hint, lambda cached: _parts(name_or_path, name_or_path, False, cached))
        except OSError as exc:
            raise UserError(f'Captioner "{name_or_path}" could not be loaded ({str(exc).splitlines()[0]}).',
                            "With no network, download the model elsewhere and pass its folder with --captioner "
                            "./folder, or use the offline default --captioner filename.") from None
        if config.get("model_type") == "florence2":  # a task prompt in, and room for a whole paragraph out:
            prompt, max_new_tokens = florence_task, max_new_tokens or 256  # no caption cut mid-sentence
        self.model = model.to(device).eval()
        self.device, self.max_new_tokens, self.prompt = device, max_new_tokens or 40, prompt
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
