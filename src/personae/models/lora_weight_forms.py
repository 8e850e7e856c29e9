"""LyCORIS / kohya forms whose change is made from the base model's own weight W, as a dense delta W' - W.

A1111, ComfyUI and LyCORIS itself apply these by recomputing each weight; personae turns each into the exact
change it makes to W (`lora_math` then loads it like a full diff, so it stays a peft layer: per-file weights,
several files at once, unloadable). The forms, as their trainers define them:

  OFT     `oft_blocks` (k, b, b), `alpha`, optional `rescale` (out, 1[, 1, 1]): Q = B - B^T per block, scaled
          down to norm alpha * out channels when its Frobenius norm (over all blocks) exceeds that (LyCORIS'
          diag-oft and kohya's sd-scripts networks.oft alike); R = (I + Q)(I - Q)^-1 (Cayley: orthogonal); the
          output channels, in k groups of b, become R^T of their group: W'[k*b + m] = sum_n R[k, n, m] W[k*b + n],
          then times `rescale`.
  BOFT    `oft_blocks` (stages, k, b, b): the same rotations in butterfly stages; stage i pairs the channels
          2^i * b/2 apart, rotates groups of b with R (not R^T), and puts them back.
  GLoRA   `a1.weight` (in, r), `a2.weight` (r, in), `b1.weight` (out, r), `b2.weight` (r, in[, kh, kw]), `alpha`:
          delta = alpha / r * (W a1 a2 + b1 b2) (W a1 over the input channels of a convolution), LyCORIS >= 2
          (its Tucker option never applies to GLoRA: no `bm.weight` is written, none is read).
  IA3     `weight`, `on_input`: delta = W * weight along the output channels (or the input ones).

Each change is linear in the weight a user gives the file (A1111's scaling): at 1 it is what every tool
computes; at other weights LyCORIS keeps OFT's `rescale` whole and interpolates BOFT per stage, and ComfyUI
applies OFT's weight twice.
"""

from __future__ import annotations

import torch

# the message a change needing W gives where no model is at hand (personae convert)
NEEDS_BASE = "changes the base model's own weights, so it has no form without that model"


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float32)


def _cayley(blocks: torch.Tensor, constraint: float) -> torch.Tensor:
    """Orthogonal R = (I + Q)(I - Q)^-1 per block, Q the skew-symmetric part, its norm capped at `constraint`."""
    q = blocks - blocks.transpose(-1, -2)
    if constraint > 0:
        norm = float(torch.norm(q)) + 1e-8  # over every block (and stage) at once
        if norm > constraint:
            q = q * (constraint / norm)
    eye = torch.eye(blocks.shape[-1])
    return (eye + q) @ torch.linalg.inv(eye - q)


def oft_delta(params: dict[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """W' - W of an OFT (3-D oft_blocks) or BOFT (4-D) module on the base weight `weight`."""
    blocks, w = _f32(params["oft_blocks"]), _f32(weight)
    out = w.shape[0]
    constraint = float(params["alpha"]) * out if "alpha" in params else 0.0
    size = blocks.shape[-1]
    if blocks.ndim == 3:
        if blocks.shape[0] * size != out:
            raise ValueError(f"its oft_blocks {tuple(blocks.shape)} do not cover {out} output channels")
        r = _cayley(blocks, constraint)
        turned = torch.einsum("knm,kn...->km...", r, w.reshape(blocks.shape[0], size, *w.shape[1:]))
    else:
        stages, count = blocks.shape[:2]
        if count * size != out or size % 2:
            raise ValueError(f"its BOFT oft_blocks {tuple(blocks.shape)} do not cover {out} output channels")
        r = _cayley(blocks, constraint)
        turned, half = w, size // 2
        for i in range(stages):
            span = 2 ** i * half  # channels c and c + span (within a group of 2 * span) meet in one block
            paired = turned.reshape(-1, 2, span, *w.shape[1:]).transpose(1, 2).reshape(count, size, *w.shape[1:])
            paired = torch.einsum("kij,kj...->ki...", r[i], paired)
            turned = paired.reshape(-1, span, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)
    turned = turned.reshape(w.shape)
    if "rescale" in params:
        turned = _f32(params["rescale"]).reshape(out, *[1] * (w.ndim - 1)) * turned
    return turned - w


def glora_delta(params: dict[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """alpha / r * (W a1 a2 + b1 b2) of a GLoRA module (LyCORIS >= 2's layout) on the base weight `weight`."""
    w = _f32(weight)
    a1, a2 = _f32(params["a1.weight"]).flatten(1), _f32(params["a2.weight"]).flatten(1)
    b1, b2 = _f32(params["b1.weight"]).flatten(1), _f32(params["b2.weight"])
    rank = a2.shape[0]
    if not (a1.shape == (w.shape[1], rank) and a2.shape == (rank, w.shape[1]) and b1.shape == (w.shape[0], rank)
            and b2.shape[0] == rank):
        raise ValueError(f"its GLoRA factors a1 {tuple(a1.shape)}, a2 {tuple(a2.shape)}, b1 {tuple(b1.shape)} are "
                         "not LyCORIS 2's layout (W a1 a2 + b1 b2; the older layout is not read)")
    b = (b1 @ b2.flatten(1)).reshape(w.shape)
    a = torch.einsum("oi...,ij,jc->oc...", w, a1, a2)  # W a1 a2 over the input channels, kernel kept
    alpha = float(params["alpha"]) if "alpha" in params else 0.0
    return (a + b) * ((alpha or rank) / rank)


def ia3_delta(params: dict[str, torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """W * weight along the output channels (or, with on_input set, the input ones) of an IA3 module."""
    w, scale = _f32(weight), _f32(params["weight"]).flatten()
    axis = 1 if bool(params["on_input"].item()) else 0
    if scale.numel() != w.shape[axis]:
        raise ValueError(f"its IA3 weight has {scale.numel()} values for {w.shape[axis]} "
                         f"{'input' if axis else 'output'} channels")
    return w * scale.reshape([-1 if d == axis else 1 for d in range(w.ndim)])
