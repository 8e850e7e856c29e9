"""`--vae`: another VAE in place of the model's, as A1111's "SD VAE" setting does.

Two kinds of input: a diffusers AutoencoderKL folder (config.json + weights), or a single-file VAE as
shared for A1111 (`models/VAE/*.safetensors`, LDM names with or without the `first_stage_model.` prefix),
read by diffusers' `AutoencoderKL.from_single_file` with the SD-1.5 VAE config shipped in this package (or
the config personae stored in the file's header), so no network is needed. A1111's infotext names it
("VAE: name.safetensors, VAE hash: 10 hex").
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from personae.errors import UserError
from personae.models.model_files import (
    SD15_DIR,
    check_folder_weights,
    check_model_file,
    header_json,
    named_by_content,
    tensor_shapes,
)
from personae.models.original_layout import CONFIG_METADATA_KEY


@dataclass(frozen=True)
class LoadedVae:
    vae: object  # a diffusers AutoencoderKL
    name: str  # as A1111's infotext shows it: the file or folder name
    hash: str | None  # sha256 of the file, first 10 hex, for a single file


def load_vae(spec: str, dtype: torch.dtype = torch.float32, allow_pickle: bool = False) -> LoadedVae:
    from diffusers import AutoencoderKL

    from personae.models.addons import file_sha256
    from personae.models.resolve import _short, load_errors

    path = Path(spec).expanduser()
    fix = "Pass a diffusers AutoencoderKL folder (config.json and weights) or a single-file SD-1.x VAE .safetensors."
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"--vae {path} is a folder but not a diffusers VAE (no config.json in it).", fix)
        check_folder_weights(path, allow_pickle)
        try:
            vae = AutoencoderKL.from_pretrained(str(path), torch_dtype=dtype, local_files_only=True)
        except load_errors() as exc:
            raise UserError(f"--vae {path} could not be loaded as a diffusers VAE ({_short(exc)}).", fix) from None
        return LoadedVae(vae, path.resolve().name, None)
    if not path.exists():
        raise UserError(f"--vae {spec} was not found: no such file or folder.", fix)
    kind = check_model_file(path, "VAE", allow_pickle)
    shapes, meta = tensor_shapes(path, kind)
    if not any(k.removeprefix("first_stage_model.").startswith("decoder.") for k in shapes):
        raise UserError(f"--vae {path} holds no VAE decoder weights (decoder.*), so it is no VAE.", fix)
    config = (header_json(meta, CONFIG_METADATA_KEY, path) or {}).get("vae")
    with tempfile.TemporaryDirectory(prefix="personae-vae-") as tmp, named_by_content(path, kind) as named:
        (Path(tmp) / "vae").mkdir()
        vae_config = config if isinstance(config, dict) else json.loads((SD15_DIR / "vae" / "config.json").read_text())
        (Path(tmp) / "vae" / "config.json").write_text(json.dumps(vae_config))
        try:
            vae = AutoencoderKL.from_single_file(str(named), config=tmp, subfolder="vae", torch_dtype=dtype,
                                                 local_files_only=True)
        except load_errors() as exc:
            raise UserError(f"--vae {path} could not be loaded as an SD-1.x VAE ({_short(exc)}).", fix) from None
    # from_single_file takes the scaling factor from the original SD config (0.18215), not from `config`
    if vae_config.get("scaling_factor") not in (None, vae.config.scaling_factor):
        vae.register_to_config(scaling_factor=vae_config["scaling_factor"])
    return LoadedVae(vae, path.name, file_sha256(path)[:10])


NO_VAE = "none"  # A1111's SD VAE "None" (any case): the model's own VAE, even with one beside the file
VAE_SUFFIXES = (".vae.safetensors", ".vae.pt", ".vae.ckpt")  # what A1111 finds beside a checkpoint
PICKLE_VAE = (".vae.pt", ".vae.ckpt")


def loads_unasked(vae_file: Path, allow_pickle: bool) -> bool:
    """A VAE found beside the model is loaded without --vae when it is safetensors, a pickle only when allowed."""
    return allow_pickle or not vae_file.name.endswith(PICKLE_VAE)


def vae_beside(model_file: Path) -> Path | None:
    """A1111's "Automatic" SD VAE (its default): the VAE file named after a single-file checkpoint, beside it
    (`NAME.vae.safetensors`, `.vae.pt` or `.vae.ckpt` for `NAME.safetensors`; the safe kind first)."""
    for suffix in VAE_SUFFIXES:
        candidate = model_file.with_name(model_file.stem + suffix)
        if candidate.is_file():
            return candidate
    return None
