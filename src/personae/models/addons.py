"""Load LoRAs and textual-inversion embeddings into a pipeline with diffusers' own loaders.

LoRA files in the kohya/A1111 layout and in the diffusers/peft layout both go through
`load_lora_weights` (which recognises the layout); embeddings in A1111 and diffusers
formats go through `load_textual_inversion`. This module only adds the product around
them: file checks, pickle refusal, the token A1111 would use, the hashes A1111 writes.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

from personae.errors import UserError
from personae.models.model_files import check_model_file, tensor_shapes
from personae.models.resolve import LOAD_ERRORS, _short


@dataclass(frozen=True)
class LoadedLora:
    name: str  # file stem, as A1111 names it in <lora:name:w>
    weight: float
    hash: str  # A1111's "Lora hashes" value
    adapter: str = ""  # the diffusers adapter name (for set_adapters)


@dataclass(frozen=True)
class LoadedEmbedding:
    token: str
    hash: str  # A1111's "TI hashes" value


def file_sha256(path: Path, skip_safetensors_header: bool = False) -> str:
    """sha256 of a file; for LoRAs A1111 hashes only the tensor bytes after the safetensors header."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        if skip_safetensors_header and path.suffix == ".safetensors":
            (header_len,) = struct.unpack("<Q", fh.read(8))
            fh.seek(8 + header_len)
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _existing(path: str, what: str, allow_pickle: bool) -> Path:
    p = Path(path).expanduser()
    check_model_file(p, what, allow_pickle)  # by content: missing, a folder, damaged, foreign, or a pickle not opted in
    return p


def default_token(path: Path) -> str | None:
    """The token that calls an embedding: the key of a diffusers file, else the file name (A1111's rule)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            keys = list(fh.keys())
        if len(keys) == 1 and keys[0] != "emb_params":
            return None  # diffusers learned_embeds: the key is the token; the loader reads it
    return path.stem


def load_loras(pipe, loras: list[tuple[str, float]], allow_pickle: bool = False) -> list[LoadedLora]:
    """Load LoRA files as named adapters and set their weights."""
    loaded, names = [], []
    for i, (path, weight) in enumerate(loras):
        p = _existing(path, "lora", allow_pickle)
        name = f"lora{i}_{p.stem}"
        try:
            pipe.load_lora_weights(str(p), adapter_name=name)
        except LOAD_ERRORS as exc:
            raise UserError(
                f"{p} could not be loaded as a LoRA for this model: {_short(exc)}",
                "Check that it is a LoRA (kohya/A1111 or diffusers layout) made for a Stable Diffusion 1.x model.",
            ) from None
        names.append(name)
        loaded.append(LoadedLora(p.stem, weight, file_sha256(p, skip_safetensors_header=True)[:12], name))
    if names:
        pipe.set_adapters(names, adapter_weights=[w for _, w in loras])
    return loaded


def load_embeddings(pipe, embeddings: list[tuple[str, str | None]], allow_pickle: bool = False) -> list[LoadedEmbedding]:
    """Load embeddings; each token is added to the tokenizer and text encoder."""
    loaded = []
    for path, token in embeddings:
        p = _existing(path, "embedding", allow_pickle)
        token = token or default_token(p)
        before = set(pipe.tokenizer.get_vocab())
        try:
            pipe.load_textual_inversion(str(p), token=token)
        except LOAD_ERRORS as exc:
            _wrong_width(pipe, p, exc)
            raise UserError(
                f"{p} could not be loaded as a textual-inversion embedding: {_short(exc)}",
                "Check that it is an A1111 or diffusers embedding for a Stable Diffusion 1.x model.",
            ) from None
        if token is None:  # read back which token the file brought
            added = sorted(set(pipe.tokenizer.get_vocab()) - before, key=len)
            token = added[0] if added else p.stem
        loaded.append(LoadedEmbedding(token, file_sha256(p)[:12]))
    return loaded


def _wrong_width(pipe, path: Path, exc: BaseException) -> None:
    """diffusers' message for an embedding of another model family shows its placeholders unfilled: say it here."""
    if "incorrect shape" not in str(exc):
        return
    expected = pipe.text_encoder.get_input_embeddings().weight.shape[-1]
    widths = sorted({shape[-1] for shape in tensor_shapes(path)[0].values() if shape})
    raise UserError(f"{path} holds embedding vectors of width {', '.join(map(str, widths))}, but this model's text "
                    f"encoder uses {expected}: the embedding was made for another model family (SD 1.x uses 768, "
                    "SD 2.x 1024).", "Use an embedding trained for this model.") from None


def hashes_text(items: dict[str, str]) -> str | None:
    """A1111's 'name: hash, name: hash' value (quoted by the writer)."""
    return ", ".join(f"{k}: {v}" for k, v in items.items()) or None


__all__ = ["LoadedLora", "LoadedEmbedding", "load_loras", "load_embeddings", "hashes_text", "default_token"]
