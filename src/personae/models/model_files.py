"""What a model file holds, decided by its bytes (never its name), and reading it without running code.

Every reader of a user's model file (base model, LoRA, embedding, ControlNet, motion
module, convert) asks `check_model_file` first:

    kind = check_model_file(path, "LoRA", allow_pickle)   # "safetensors" or "pickle", or a UserError

- safetensors: an 8-byte little-endian header length, then a JSON header (`{`...). The
  header is validated by safetensors itself (JSON, dtypes, offsets inside the file), so a
  truncated, damaged or hand-made file is one clear error here, not a loader's traceback.
- pickle: the PyTorch zip format (`PK\\x03\\x04`) or a pickle stream of protocol 2 to 5
  (`\\x80\\x02`..`\\x80\\x05`, also PyTorch's legacy format). Loading one is refused unless
  the user passed --allow-pickle, and even then goes through PyTorch's weights-only
  unpickler (`load_pickle`), which builds tensors and plain containers and nothing else.
- anything else is not a model file.

Loaders that pick their reader by the file's suffix (diffusers' single-file loader) get the
file under a name that matches its content (`named_by_content`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pickle
import shutil
import struct
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

from personae.errors import UserError

SAFETENSORS = "safetensors"
PICKLE = "pickle"
PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"}
SD15_DIR = Path(__file__).parent / "sd15"  # the SD-1.5 component configs and CLIP tokenizer this package ships
_ZIP_MAGIC = b"PK\x03\x04"
_HEADER_LIMIT = 100_000_000  # safetensors' own limit on the JSON header


def sniff(path: Path) -> str:
    """SAFETENSORS, PICKLE or "" (neither), from the first bytes of the file."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if head.startswith(_ZIP_MAGIC) or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5):
        return PICKLE
    if len(head) == 9 and head[8:9] == b"{":
        return SAFETENSORS
    return ""


def _damaged(path: Path, why: str) -> UserError:
    return UserError(f"{path} is not a usable safetensors file: {why}.",
                     "The file is damaged or incomplete (an interrupted download or copy?): get it again.")


def validate_safetensors(path: Path) -> dict[str, str]:
    """The header metadata of a safetensors file that safetensors itself accepts, holding at least one tensor."""
    from safetensors import SafetensorError, safe_open

    size = path.stat().st_size
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
    if length > min(size - 8, _HEADER_LIMIT):
        raise _damaged(path, f"its header claims {length:,} bytes but the file holds {size:,}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            keys, meta = list(fh.keys()), fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise _damaged(path, str(exc).rstrip(".")) from None
    if not keys:
        raise UserError(f"{path} holds no tensors (a valid safetensors header with nothing in it).",
                        "Pass the file that holds the weights.")
    return meta


def check_model_file(path: str | Path, what: str = "model", allow_pickle: bool = False,
                     flag: str = "--allow-pickle") -> str:
    """SAFETENSORS or PICKLE for a readable model file; a UserError for anything else (one paragraph, the path named)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"The {what} {path} is a folder, not a file.",
                        _folder_hint(path))
    if not path.is_file():
        if path.exists():  # a device, a pipe, a socket: reading one could block or never end
            raise UserError(f"The {what} {path} is not a regular file.", "Pass the weights file itself.")
        raise UserError(f"The {what} file {path} does not exist.", "Check the path.")
    if path.stat().st_size == 0:
        raise UserError(f"The {what} file {path} is empty (0 bytes).", "Get the file again.")
    kind = sniff(path)
    suffix = path.suffix.lower()
    if kind == SAFETENSORS:
        validate_safetensors(path)
        return kind
    if kind == PICKLE:
        if suffix == ".safetensors":  # a real safetensors file never holds a pickle
            raise UserError(f"{path} is named .safetensors but holds a pickle (Python code and data), not safetensors.",
                            "Someone renamed it, perhaps to get it past pickle checks. Use a real .safetensors file; "
                            f"if you trust where it came from, rename it to .ckpt and pass {flag}.")
        if not allow_pickle:
            raise UserError(f"{path} is a pickle file (PyTorch's .ckpt/.pt/.bin format, whatever its name); loading one "
                            "can run arbitrary code hidden in it.",
                            f"Use a .safetensors version of it if one exists, or pass {flag} if you trust where it came "
                            "from (personae then reads only tensors from it, never code).")
        stat = path.stat()
        _weights_only_check(str(path.resolve()), stat.st_size, stat.st_mtime_ns)  # before any model loads
        return kind
    if suffix == ".safetensors":
        raise _damaged(path, "it does not start with a safetensors header")
    raise UserError(f"The {what} file {path} is neither a safetensors file nor a PyTorch checkpoint "
                    "(its first bytes match neither format).",
                    "Pass a .safetensors file (or a .ckpt/.pt/.bin checkpoint with --allow-pickle).")


def _folder_hint(path: Path) -> str:
    files = sorted(p.name for p in path.glob("*.safetensors"))[:3]
    if files:
        return f"Pass one of the files in it, e.g. {path / files[0]}."
    return "Pass the weights file itself (e.g. a .safetensors file)."


def check_folder_weights(folder: Path, allow_pickle: bool, flag: str = "--allow-pickle") -> None:
    """A diffusers folder whose components have only pickle weights needs the same opt-in as a pickle file."""
    for directory in [folder, *(p for p in folder.iterdir() if p.is_dir())]:
        files = [p for p in directory.iterdir() if p.is_file()]
        if any(p.suffix == ".safetensors" for p in files):
            continue  # diffusers and transformers prefer the safetensors file
        for weights in files:
            if weights.suffix.lower() in PICKLE_SUFFIXES:
                check_model_file(weights, "weights", allow_pickle, flag)


@functools.lru_cache(maxsize=32)
def _weights_only_check(path: str, size: int, mtime_ns: int) -> None:  # size and mtime: a changed file is read again
    """A pickle that the weights-only unpickler refuses fails here, before a model is loaded for nothing."""
    load_pickle(Path(path))


def load_pickle(path: Path, map_location: str = "cpu"):
    """A pickle's tensors through PyTorch's weights-only unpickler; a UserError if it holds anything else."""
    import torch

    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4..." is not for our users
            warnings.simplefilter("ignore")
            return torch.load(str(path), map_location=map_location, weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsupported content"
        raise UserError(f"{path} holds more than weights (PyTorch's safe loader refused it: {first[:300]}). "
                        "personae never runs code from a model file, --allow-pickle or not.",
                        "Use a .safetensors version of the file.") from None
    except Exception as exc:  # noqa: BLE001 - the unpickler fails on damaged bytes with any kind of error
        raise UserError(f"{path} could not be read as a PyTorch checkpoint ({type(exc).__name__}: {str(exc)[:300]}).",
                        "The file is damaged or not a checkpoint: get it again, or use a .safetensors version.") from None


def read_state_dict(path: Path, kind: str | None = None) -> tuple[dict, dict[str, str]]:
    """(tensors, header metadata) of a checked model file; pickles unwrap a top-level "state_dict"."""
    import torch

    kind = kind or sniff(path)
    if kind == SAFETENSORS:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})
    state = load_pickle(path)
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}, not a dictionary of weights.")
    return {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}, {}


def tensor_shapes(path: Path, kind: str | None = None) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Names and shapes of the tensors in a checked model file, and its header metadata, without reading safetensors data."""
    kind = kind or sniff(path)
    if kind == SAFETENSORS:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}, dict(fh.metadata() or {})
    state, meta = read_state_dict(path, kind)
    return {k: tuple(v.shape) for k, v in state.items()}, meta


def header_json(meta: dict[str, str], key: str, path: Path) -> dict | None:
    """A JSON value personae stored in a safetensors header, or a UserError when it is not valid JSON."""
    if key not in meta:
        return None
    try:
        value = json.loads(meta[key])
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise UserError(f"{path}: the header entry {key!r} is not a JSON object.",
                        "The file was damaged or edited by hand: write it again.")
    return value


def config_saying(config: dict, values: dict) -> dict:
    """`config` with `values` set, as values the config says: diffusers' from_config takes its own default for
    every key a config lists in `_use_default_values` (the keys its file left out), whatever the key holds."""
    config = {**config, **values}
    if "_use_default_values" in config:
        config["_use_default_values"] = [k for k in config["_use_default_values"] if k not in values]
    return config


@contextlib.contextmanager
def named_by_content(path: Path, kind: str) -> Iterator[Path]:
    """`path`, or a link to it whose suffix matches its content (loaders that choose their reader by suffix)."""
    suffix = path.suffix.lower()
    wanted = ".safetensors" if kind == SAFETENSORS else (suffix if suffix in PICKLE_SUFFIXES else ".ckpt")
    if suffix == wanted:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="personae-named-") as tmp:
        link = Path(tmp) / (path.stem + wanted)
        try:
            os.symlink(path.resolve(), link)
        except OSError:
            if path.stat().st_size > 1 << 30:
                raise UserError(f"{path} holds {kind} data but its name ends in {path.suffix or 'nothing'}.",
                                f"Rename it to {path.stem}{wanted}.") from None
            shutil.copyfile(path, link)
        yield link
