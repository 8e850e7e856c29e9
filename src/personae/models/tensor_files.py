"""Read a file of named tensors (LoRA, embedding) without running code from it.

`.safetensors` is read as it is. A pickle (`.pt`, `.bin`, `.ckpt`) is read only when the user
allowed pickles, and then with `torch.load(weights_only=True)`, whose unpickler builds
tensors, numbers, strings and containers and refuses everything else (no code runs).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from personae.errors import UserError
from personae.models.resolve import refuse_pickle


def is_safetensors(path: Path) -> bool:
    """True when the file starts like a safetensors file (a length, then a JSON header), whatever its name."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 8 + length <= path.stat().st_size


def read_tensors(path: Path, allow_pickle: bool, what: str) -> tuple[dict, dict[str, str]]:
    """(contents, safetensors header metadata) of a tensor file; a pickle's contents may nest (dicts of tensors)."""
    refuse_pickle(path, allow_pickle)
    if is_safetensors(path):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})
        except (SafetensorError, json.JSONDecodeError, OSError) as exc:
            raise UserError(f"{path} could not be read as a {what}: it is a damaged .safetensors file ({exc}).",
                            "Download it again.") from None
    if not allow_pickle:  # not safetensors, so a pickle or something else: never unpickled without consent
        raise UserError(f"{path} is not a .safetensors file; if it is a pickle, loading it can run code hidden in it.",
                        "Use a .safetensors version, or pass --allow-pickle if you trust where it came from.")
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  the unpickler's refusals and damage come as many types
        raise UserError(f"{path} could not be read as a {what}: {str(exc).splitlines()[0][:300]}",
                        "personae reads pickles only as plain tensors (torch.load weights_only=True); "
                        "use a .safetensors version of the file.") from None
    return data, {}


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
