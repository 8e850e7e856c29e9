"""Turn what a user passes as --model into a loaded StableDiffusionPipeline.

Three kinds of input, one entry point (`load_pipeline`):
  - a local diffusers folder (has model_index.json);
  - a single-file checkpoint in the original layout, as shared on model sites
    (safetensors; a pickle `.ckpt`/`.pt`/`.bin` only with allow_pickle, read by PyTorch's
    weights-only unpickler; the file's content decides, not its name); its component
    configs come from the file's header when personae wrote it, else from the SD-1.5
    configs and CLIP tokenizer shipped in this package, so no network is needed;
  - a hub id (`owner/name`), loaded from the local cache or downloaded; with no network
    it fails within seconds, saying how to pass a local folder or file instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError

from personae.errors import UserError
from personae.hub import from_cache_or_hub, is_hub_id
from personae.models.model_files import (
    PICKLE,
    PICKLE_SUFFIXES,
    SD15_DIR,
    check_folder_weights,
    check_model_file,
    config_saying,
    header_json,
    named_by_content,
    sniff,
    tensor_shapes,
)
from personae.models.original_layout import CONFIG_METADATA_KEY
from personae.models.prediction import prediction_overrides


def load_errors() -> tuple[type[BaseException], ...]:
    """What diffusers' and transformers' loaders raise on a file or folder that is not what they expect (a function:
    this module locates models without importing diffusers, so that a wrong path is said at once)."""
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    return (OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError, IndexError, EOFError,
            pickle.UnpicklingError, SafetensorError, SingleFileComponentError)


@dataclass(frozen=True)
class Source:
    """Where a base model, ControlNet or motion adapter comes from, decided by `locate` before anything loads."""

    kind: Literal["folder", "single_file", "hub"]
    location: str  # absolute path, or the hub repository id
    name: str  # what A1111's infotext shows for it
    subfolder: str | None = None  # inside a hub repository

    @property
    def is_pickle(self) -> bool:
        return self.kind == "single_file" and sniff(Path(self.location)) == PICKLE


class ModelSource(Source):
    """A base model: a diffusers folder (model_index.json), one checkpoint file, or a hub id."""


def locate(spec: str, cls: type[Source], what: str, config_file: str, allow_pickle: bool, folder_fix: str,
           not_found_fix: str, subfolder: bool = False, file_noun: str | None = None) -> Source:
    """The one resolver: `spec` is a diffusers folder (holding `config_file`), one weights file (checked by
    content; a pickle only with the opt-in), or a hub id; anything else is a UserError naming `what`."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / config_file).is_file():
            raise UserError(f"{path} is a folder but not a diffusers {what} (no {config_file} in it).", folder_fix)
        check_folder_weights(path, allow_pickle)
        return cls("folder", str(path.resolve()), path.resolve().name)
    if path.exists():
        check_model_file(path, file_noun or what, allow_pickle)
        return cls("single_file", str(path.resolve()), path.stem)
    looks_local = spec.startswith((".", "/", "~")) or spec.endswith((".safetensors", *PICKLE_SUFFIXES))
    if looks_local or not is_hub_id(spec, subfolder):
        raise UserError(f'{what[0].upper() + what[1:]} "{spec}" was not found: no such folder or file, and it is not '
                        f"a hub id of the form owner/name{'[/subfolder]' if subfolder else ''}.", not_found_fix)
    owner, name, *rest = spec.split("/")
    return cls("hub", f"{owner}/{name}", spec if cls is ModelSource else name, "/".join(rest) or None)


def refuse_pickle(path: Path, allow_pickle: bool, flag: str = "--allow-pickle") -> str:
    """Check a model file by its content: damaged or foreign files are refused, and pickles (which can run code
    when loaded) unless the user opts in. Returns "safetensors" or "pickle" (see personae.models.model_files)."""
    return check_model_file(path, "model", allow_pickle, flag)


def resolve_model(spec: str, allow_pickle: bool = False) -> ModelSource:
    """Decide which kind of model `spec` names, without loading it."""
    return locate(spec, ModelSource, "model", "model_index.json", allow_pickle,
                  "Pass the folder that holds model_index.json, or a single .safetensors checkpoint file.",
                  "Check the path, or pass a diffusers folder, a .safetensors checkpoint, or a hub id.")


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


def _native(configs: dict) -> int | None:
    unet, vae = configs.get("unet") or {}, configs.get("vae") or {}
    if not isinstance(unet.get("sample_size"), int) or not isinstance(vae.get("block_out_channels"), list):
        return None
    return unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1)  # the pipeline's vae_scale_factor


def native_size(source: ModelSource) -> int | None:
    """The model's training resolution in pixels (UNet sample size x the VAE's scale factor), read from its configs
    without loading it: what `Session.native_size` will say, before the load. None for a hub model not downloaded."""
    def read(folder: Path) -> dict:
        configs = {}
        for name in ("unet", "vae"):
            try:
                configs[name] = json.loads((folder / name / "config.json").read_text())
            except (OSError, ValueError):
                configs[name] = {}
        return configs

    if source.kind == "folder":
        return _native(read(Path(source.location)))
    if source.kind == "single_file":  # personae's own files carry their configs; others are SD 1.x
        configs = {}
        if not source.is_pickle:
            path = Path(source.location)
            configs = header_json(tensor_shapes(path)[1], CONFIG_METADATA_KEY, path) or {}
        return _native({**read(SD15_DIR), **configs})
    from huggingface_hub import try_to_load_from_cache

    found = {}
    for name in ("unet", "vae"):
        try:
            file = try_to_load_from_cache(source.location, "/".join(filter(None, [source.subfolder, name, "config.json"])))
        except ValueError:
            file = None
        found[name] = json.loads(Path(file).read_text()) if isinstance(file, str) else {}
    return _native(found)


def prediction_type(source: ModelSource) -> str | None:
    """What the model's UNet predicts ("epsilon", "v_prediction": its scheduler config's prediction_type, for a
    single file as load_pipeline reads it), without loading it; None for a hub model not downloaded yet."""
    if source.kind == "single_file":
        with tempfile.TemporaryDirectory(prefix="personae-config-") as tmp:
            _write_config_dir(Path(source.location), Path(tmp))
            return json.loads((Path(tmp) / "scheduler" / "scheduler_config.json").read_text()).get("prediction_type",
                                                                                                  "epsilon")
    if source.kind == "folder":
        file = Path(source.location) / "scheduler" / "scheduler_config.json"
    else:
        from huggingface_hub import try_to_load_from_cache

        try:
            file = try_to_load_from_cache(source.location, "/".join(filter(None, [source.subfolder, "scheduler",
                                                                                     "scheduler_config.json"])))
        except ValueError:
            file = None
        if not isinstance(file, str):
            return None
    try:
        return json.loads(Path(file).read_text()).get("prediction_type", "epsilon")
    except (OSError, ValueError):
        return "epsilon"  # diffusers' default, as the pipeline's scheduler would take it


def _write_config_dir(path: Path, target: Path) -> dict:
    """Fill `target` with the component configs and tokenizer a single file needs (refusing other architectures)."""
    shutil.copytree(SD15_DIR, target, dirs_exist_ok=True)
    shapes, meta = tensor_shapes(path)
    configs = header_json(meta, CONFIG_METADATA_KEY, path)
    if any(k.startswith("conditioner.embedders") for k in shapes):
        raise UserError(f"{path} is an SDXL checkpoint; personae supports Stable Diffusion 1.x models for now.")
    if any(k.startswith("cond_stage_model.model.") for k in shapes):
        raise UserError(f"{path} is a Stable Diffusion 2.x checkpoint; personae supports SD 1.x models for now.")
    if not any(k.startswith("model.diffusion_model.") for k in shapes):
        raise UserError(
            f"{path} is not a full Stable Diffusion checkpoint (no model.diffusion_model.* weights).",
            "If it is a LoRA or an embedding, pass it with --lora or --embedding and give the base model as --model.",
        )
    first = shapes.get("model.diffusion_model.input_blocks.0.0.weight", ())
    if configs is None and len(first) == 4 and first[1] != 4:  # SD-1.5 inpainting models take 9 channels
        unet = json.loads((target / "unet/config.json").read_text())
        unet["in_channels"] = first[1]
        configs = {"unet": unet}
    configs = dict(configs or {})
    for name, config in configs.items():
        if not re.fullmatch(r"[a-z_]+", str(name)) or not isinstance(config, dict):
            raise UserError(f"{path}: its header entry {CONFIG_METADATA_KEY!r} is not a set of component configs.")
    # what the file predicts and on which schedule: its header, ComfyUI's marker keys, the .yaml A1111 reads
    for name, values in prediction_overrides(path, shapes, meta, configs).items():
        file = target / name / ("scheduler_config.json" if name == "scheduler" else "config.json")
        configs[name] = config_saying(configs[name] if name in configs else json.loads(file.read_text()), values)
    for name, config in configs.items():
        sub = target / name
        sub.mkdir(exist_ok=True)
        file = "scheduler_config.json" if name == "scheduler" else "config.json"
        (sub / file).write_text(json.dumps(config, indent=1))
    return configs


def _load_from_hub(repo_id: str, **kwargs):
    from diffusers import StableDiffusionPipeline

    return from_cache_or_hub(repo_id, "model", "pass the local folder with --model ./path/to/folder, or a checkpoint "
                             "file with --model ./model.safetensors.",
                             lambda cached: StableDiffusionPipeline.from_pretrained(repo_id, local_files_only=cached,
                                                                                    **kwargs))


def load_pipeline(source: ModelSource, dtype: torch.dtype = torch.float32, components: dict | None = None,
                  mapped: bool = False):
    """Load a StableDiffusionPipeline (no safety checker) from any kind of source, on the CPU; `components`
    (name: module) are taken as they are instead of being read from the source. `mapped`: the weights may stay
    views of the files as safetensors maps them (not `aligned`: memory is taken only as they are read), for a
    caller that copies each one where it goes."""
    from diffusers import StableDiffusionPipeline

    done = (lambda pipe: pipe) if mapped else aligned

    kwargs = dict(dtype=dtype, safety_checker=None, requires_safety_checker=False, **(components or {}))
    if source.kind == "folder":
        try:
            return done(StableDiffusionPipeline.from_pretrained(source.location, local_files_only=True, **kwargs))
        except load_errors() as exc:
            raise UserError(f"{source.location} could not be loaded as a diffusers model folder ({_short(exc)}).",
                            "Check that it is a complete Stable Diffusion 1.x model folder (model_index.json, unet/, "
                            "vae/, text_encoder/, tokenizer/, scheduler/).") from None
    if source.kind == "hub":
        return done(_load_from_hub(source.location, **kwargs))
    path = Path(source.location)
    kind = check_model_file(path, "model", allow_pickle=True)  # the opt-in was checked by resolve_model
    with tempfile.TemporaryDirectory(prefix="personae-config-") as tmp, named_by_content(path, kind) as named:
        configs = _write_config_dir(path, Path(tmp))
        try:
            pipe = StableDiffusionPipeline.from_single_file(str(named), config=tmp, local_files_only=True, **kwargs)
        except load_errors() as exc:
            raise UserError(f"{path} could not be loaded as a Stable Diffusion 1.x checkpoint ({_short(exc)}).",
                            "Check that it is a full SD 1.x model in the original layout (as shared on model sites), "
                            "not damaged, and made for this architecture.") from None
    # from_single_file takes the VAE's scaling factor from the original SD config (0.18215), not from `config`
    scaling = configs.get("vae", {}).get("scaling_factor")
    if scaling is not None and scaling != pipe.vae.config.scaling_factor and "vae" not in (components or {}):
        pipe.vae.register_to_config(scaling_factor=scaling)
    return done(pipe)


ALIGNMENT = 64  # bytes: what torch's CPU allocator gives every new tensor


def aligned(pipe):
    """Move every weight that sits at an odd address (safetensors maps a file and hands out views at the
    offsets it holds them) into memory of its own. CPU kernels pick their code path by alignment, and the
    paths round differently: one model from a folder and from a single file gave images 1 level apart with one
    thread. Aligned, the same weights give the same pixels whatever file they came from."""
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            for tensor in [*module.parameters(), *module.buffers()]:
                if tensor.device.type == "cpu" and tensor.data_ptr() % ALIGNMENT:
                    tensor.data = tensor.data.clone()
    return pipe


def _short(exc: BaseException) -> str:
    """An exception as one short line for a message."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
