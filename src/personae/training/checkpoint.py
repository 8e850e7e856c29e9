"""Checkpoints: exactly what a resumed run needs to continue bit-identically.

A checkpoint folder `checkpoints/step-NNNNNN/` holds the trained tensors
(`trainable.safetensors`), the optimizer, LR schedule and EMA state with the step count
and loss history (`state.pt`, read back with weights_only=True: no code runs on load),
and the exports written at that step. All other randomness is derived from
(seed, step), so no RNG state needs saving. A folder is complete only once
`state.pt` exists (written last). Every file is written under a temporary name and renamed,
so a full disk or a kill leaves no torn file; `save_checkpoint` removes a folder it could not finish.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from personae.runs import checkpoint_dir, list_checkpoints  # noqa: F401  (the run folder's layout lives there)
from personae.staging import atomic_file


def save_checkpoint(folder: Path, trainable: dict[str, torch.Tensor], state: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_file(folder / "trainable.safetensors") as tmp:
            save_file(trainable, str(tmp))
        with atomic_file(folder / "state.pt") as tmp, open(tmp, "wb") as fh:
            torch.save(state, fh)  # through a file object, so a full disk surfaces as OSError(ENOSPC)
    except BaseException:
        discard_incomplete(folder)
        raise
    return folder


def discard_incomplete(folder: Path) -> None:
    """Remove a checkpoint folder that has no state.pt (a save that failed or was cut short)."""
    if folder.is_dir() and not (folder / "state.pt").is_file():
        shutil.rmtree(folder, ignore_errors=True)


def load_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    return load_file(str(folder / "trainable.safetensors")), torch.load(folder / "state.pt", weights_only=True)


def prune(run: Path, keep_last: int) -> None:
    """Keep the newest `keep_last` complete checkpoints; drop incomplete ones."""
    complete = list_checkpoints(run)
    for _, path in complete[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)
    root = run / "checkpoints"
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and not (p / "state.pt").is_file():
                shutil.rmtree(p, ignore_errors=True)
