"""Turn what a user passes as --model into a loaded StableDiffusionPipeline.

Three kinds of input, one entry point (`load_pipeline`):
  - a local diffusers folder (has model_index.json);
  - a single-file checkpoint in the original layout, as shared on model sites
    (`.safetensors`; pickle `.ckpt`/`.pt`/`.bin` only with allow_pickle); its component
    configs come from the file's header when personae wrote it, else from the SD-1.5
    configs and CLIP tokenizer shipped in this package, so no network is needed;
  - a hub id (`owner/name`), loaded from the local cache or downloaded; with no network
    it fails within seconds, saying how to pass a local folder or file instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open

from personae.errors import UserError
from personae.hub import require_hub
from personae.models.original_layout import CONFIG_METADATA_KEY
from personae.models.tiny import SD15_DIR

PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSource:
    kind: Literal["folder", "single_file", "hub"]
    location: str  # absolute path, or the hub id
    name: str  # what A1111 shows as "Model"

    @property
    def is_pickle(self) -> bool:
        return self.kind == "single_file" and Path(self.location).suffix.lower() in PICKLE_SUFFIXES


def refuse_pickle(path: Path, allow_pickle: bool, flag: str = "--allow-pickle") -> None:
    """Pickle files can run arbitrary code when loaded: refuse them unless the user opts in."""
    if path.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
        raise UserError(
            f"{path} is a pickle file ({path.suffix}); loading one can run arbitrary code hidden in it.",
            f"Use a .safetensors version of it if one exists, or pass {flag} if you trust where it came from.",
        )


def resolve_model(spec: str, allow_pickle: bool = False) -> ModelSource:
    """Decide which kind of model `spec` names, without loading it."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise UserError(
                f"{path} is a folder but not a diffusers model (no model_index.json in it).",
                "Pass the folder that holds model_index.json, or a single .safetensors checkpoint file.",
            )
        return ModelSource("folder", str(path.resolve()), path.resolve().name)
    if path.is_file():
        refuse_pickle(path, allow_pickle)
        if path.suffix.lower() not in PICKLE_SUFFIXES | {".safetensors"}:
            raise UserError(f"{path} is not a model checkpoint (expected .safetensors, or .ckpt with --allow-pickle).")
        return ModelSource("single_file", str(path.resolve()), path.stem)
    looks_local = spec.startswith((".", "/", "~")) or spec.endswith((".safetensors", ".ckpt", ".pt", ".bin"))
    if looks_local or not _HUB_ID.match(spec):
        raise UserError(
            f'Model "{spec}" was not found: no such folder or file, and it is not a hub id of the form owner/name.',
            "Check the path, or pass a diffusers folder, a .safetensors checkpoint, or a hub id.",
        )
    return ModelSource("hub", spec, spec)


def model_hash(source: ModelSource) -> str | None:
    """A1111's "Model hash": the first 10 hex digits of the file's sha256 (cached by size and mtime)."""
    if source.kind != "single_file":
        return None
    path = Path(source.location)
    stat = path.stat()
    cache_file = Path(os.environ.get("PERSONAE_CACHE", Path.home() / ".cache" / "personae")) / "hashes.json"
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        cache[key] = digest.hexdigest()[:10]
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            cache_file.write_text(json.dumps(cache))
        except OSError:
            pass  # a read-only home only costs a re-hash next time
    return cache[key]


def _write_config_dir(path: Path, target: Path) -> dict:
    """Fill `target` with the component configs and tokenizer a single file needs."""
    shutil.copytree(SD15_DIR, target, dirs_exist_ok=True)
    configs = None
    keys: list[str] = []
    if path.suffix.lower() == ".safetensors":
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            keys = list(fh.keys())
            if CONFIG_METADATA_KEY in meta:
                configs = json.loads(meta[CONFIG_METADATA_KEY])
            elif "model.diffusion_model.input_blocks.0.0.weight" in keys:
                in_channels = fh.get_slice("model.diffusion_model.input_blocks.0.0.weight").get_shape()[1]
                if in_channels != 4:  # SD-1.5 inpainting models take 9 channels
                    unet = json.loads((target / "unet/config.json").read_text())
                    unet["in_channels"] = in_channels
                    configs = {"unet": unet}
        if any(k.startswith("conditioner.embedders") for k in keys):
            raise UserError(f"{path} is an SDXL checkpoint; personae supports Stable Diffusion 1.x models for now.")
        if any(k.startswith("cond_stage_model.model.") for k in keys):
            raise UserError(f"{path} is a Stable Diffusion 2.x checkpoint; personae supports SD 1.x models for now.")
        if keys and not any(k.startswith("model.diffusion_model.") for k in keys):
            raise UserError(
                f"{path} is not a full Stable Diffusion checkpoint (no model.diffusion_model.* weights).",
                "If it is a LoRA or an embedding, pass it with --lora or --embedding and give the base model as --model.",
            )
    for name, config in (configs or {}).items():
        sub = target / name
        sub.mkdir(exist_ok=True)
        file = "scheduler_config.json" if name == "scheduler" else "config.json"
        (sub / file).write_text(json.dumps(config, indent=1))
    return configs or {}


def _load_from_hub(repo_id: str, **kwargs):
    from diffusers import StableDiffusionPipeline

    try:  # 1. already in the local cache: no network needed
        return StableDiffusionPipeline.from_pretrained(repo_id, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass
    # 2. one quick request decides whether the hub is reachable at all (no retry loop)
    require_hub(repo_id, "model", "pass the local folder with --model ./path/to/folder, "
                                  "or a checkpoint file with --model ./model.safetensors.")
    return StableDiffusionPipeline.from_pretrained(repo_id, **kwargs)


def load_pipeline(source: ModelSource, dtype: torch.dtype = torch.float32):
    """Load a StableDiffusionPipeline (no safety checker) from any kind of source, on the CPU."""
    from diffusers import StableDiffusionPipeline

    kwargs = dict(dtype=dtype, safety_checker=None, requires_safety_checker=False)
    if source.kind == "folder":
        return StableDiffusionPipeline.from_pretrained(source.location, local_files_only=True, **kwargs)
    if source.kind == "hub":
        return _load_from_hub(source.location, **kwargs)
    path = Path(source.location)
    with tempfile.TemporaryDirectory(prefix="personae-config-") as tmp:
        configs = _write_config_dir(path, Path(tmp))
        pipe = StableDiffusionPipeline.from_single_file(str(path), config=tmp, local_files_only=True, **kwargs)
    # from_single_file takes the VAE's scaling factor from the original SD config (0.18215), not from `config`
    scaling = configs.get("vae", {}).get("scaling_factor")
    if scaling is not None and scaling != pipe.vae.config.scaling_factor:
        pipe.vae.register_to_config(scaling_factor=scaling)
    return pipe
