"""Diffusers model folders that every stack loads with the same weights.

transformers 5 saves a CLIP text encoder without the `text_model.` prefix and a tokenizer as
tokenizer.json alone. transformers 4 (what ComfyUI, A1111 extensions and older notebooks run)
loads such a text encoder with every weight missing and initialised at random, a warning and
not an error, and cannot build a CLIPTokenizer without vocab.json / merges.txt. So every
folder personae writes is made conventional after `save_pretrained`: prefixed text-encoder
names (which transformers 5 still reads) and the tokenizer's vocab.json / merges.txt; and its
files readable by other users (safetensors writes 0600), as other tools write them.
"""

from __future__ import annotations

import os
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

TEXT_PREFIX = "text_model."


def conventional_text_encoder(folder: Path) -> None:
    """Rename a CLIP text encoder's weights to transformers 4's names (`text_model.` prefix), in place."""
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as fh:
            keys, metadata = list(fh.keys()), fh.metadata() or {}
            if all(k.startswith(TEXT_PREFIX) or k.startswith("text_projection") for k in keys):
                continue
            tensors = {(k if k.startswith(TEXT_PREFIX) else TEXT_PREFIX + k): fh.get_tensor(k) for k in keys}
        save_safetensors(tensors, path, metadata)


def tokenizer_vocab_files(tokenizer, folder: Path) -> None:
    """Write vocab.json and merges.txt (what a slow CLIPTokenizer reads) when the folder lacks them."""
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        raise ValueError(f"cannot write vocab.json / merges.txt for a {type(tokenizer).__name__}")
    backend.model.save(str(folder))  # a BPE model saves exactly these two files


def readable_by_others(path: Path) -> None:
    """0644 for files, 0755 for folders, as other tools write them (safetensors 0.8 writes 0600, so a web UI
    running as another user could not read our exports)."""
    path = Path(path)
    if path.is_file():
        os.chmod(path, 0o644)
        return
    os.chmod(path, 0o755)
    for root, dirs, files in os.walk(path):
        for name in dirs:
            os.chmod(Path(root) / name, 0o755)
        for name in files:
            os.chmod(Path(root) / name, 0o644)


def save_pipeline_folder(pipe, out_dir: str | Path) -> Path:
    """`pipe.save_pretrained` (safetensors), then made conventional as above."""
    out = Path(out_dir)
    pipe.save_pretrained(str(out), safe_serialization=True)
    if getattr(pipe, "text_encoder", None) is not None and (out / "text_encoder").is_dir():
        conventional_text_encoder(out / "text_encoder")
    if getattr(pipe, "tokenizer", None) is not None and (out / "tokenizer").is_dir():
        tokenizer_vocab_files(pipe.tokenizer, out / "tokenizer")
    forget_origin(out)
    readable_by_others(out)
    return out


def forget_origin(folder: Path) -> None:
    """Drop diffusers' `_name_or_path` (where the model was loaded from: a path of this machine) from the configs
    a saved folder holds; loaders do not need it, and a shared model should not carry it."""
    import json

    for path in [folder / "model_index.json", *folder.glob("*/config.json")]:
        if not path.is_file():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "_name_or_path" in data:
            del data["_name_or_path"]
            path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def save_safetensors(tensors: dict, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """One .safetensors file, written whole or not at all (a temporary file beside it, then renamed), with the
    mode a plain open() gives (safetensors itself writes 0600)."""
    from personae.staging import atomic_file

    path = Path(path)
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        if metadata and len(metadata) > 1:
            _sort_metadata(Path(tmp))
    return path


def _sort_metadata(path: Path) -> None:
    """Rewrite the header of a just-written .safetensors file with its `__metadata__` keys sorted. safetensors keeps
    the metadata in a Rust HashMap, whose order changes from run to run: without this the same tensors and metadata
    give other bytes each time (tests/test_models.py). The tensors' entries and the data stay as written."""
    import json

    with open(path, "r+b") as fh:
        size = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(size))
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(text) <= size:  # the same keys and values: the same length, padded with spaces as safetensors pads
            fh.seek(8)
            fh.write(text.ljust(size, b" "))
            return
        fh.seek(8 + size)
        data = fh.read()
    text = text.ljust(-(-len(text) // 8) * 8, b" ")
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
