"""Read a file of named tensors (LoRA, embedding) without running code from it.

A safetensors file is read as it is. A pickle (whatever its name) is read only when the user
allowed pickles, and then with `torch.load(weights_only=True)`, whose unpickler builds
tensors, numbers, strings and containers and refuses everything else (no code runs).
"""

from __future__ import annotations

from pathlib import Path

import torch

from personae.models.model_files import SAFETENSORS, check_model_file, load_pickle, read_state_dict


def read_tensors(path: Path, allow_pickle: bool, what: str) -> tuple[dict, dict[str, str]]:
    """(contents, safetensors header metadata) of a tensor file; a pickle's contents may nest (dicts of tensors).

    The file is judged by its bytes (`model_files.check_model_file`: damaged, foreign or unwanted pickles
    stop there with one paragraph), and a pickle is read only through the weights-only unpickler.
    """
    kind = check_model_file(path, what, allow_pickle)
    if kind == SAFETENSORS:
        return read_state_dict(path, kind)
    return load_pickle(path), {}


def flat_tensors(data, prefix: str = "") -> dict[str, torch.Tensor]:
    """A pickle's nested dicts flattened to dotted names (state dicts inside {'state_dict': ...} and the like)."""
    if isinstance(data, torch.Tensor):
        return {prefix: data}
    out = {}
    if isinstance(data, dict):
        for key, value in data.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, (dict, torch.Tensor)):
                out.update(flat_tensors(value, name))
    return out
