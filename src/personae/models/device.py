"""Pick the device and dtype, degrading to a clear message where the hardware is missing."""

from __future__ import annotations

import torch

from personae.errors import UserError

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but this PyTorch sees no CUDA GPU.",
                        "Use --device auto (or cpu), or install a CUDA build of PyTorch on a machine with a GPU.")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("--device mps was asked for, but Apple's Metal backend is not available here.",
                        "Use --device auto (or cpu).")
    return torch.device(requested)


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if requested == "fp16" and device.type == "cpu":
        raise UserError("--dtype fp16 does not run on the CPU (half-precision kernels are GPU-only in PyTorch).",
                        "Use --dtype fp32 (or bf16) on the CPU, or run on a GPU.")
    return _DTYPES[requested]
