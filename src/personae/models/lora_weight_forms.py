"""LyCORIS / kohya forms whose change is made from the base model's own weight W: OFT, BOFT, GLoRA, IA3.

A1111, ComfyUI and LyCORIS itself apply these by recomputing each weight. personae leaves the weight alone and adds,
beside the layer, the exact change the form makes to its output, (W' - W) x, computed from the layer's own output
or weight on the fly (LyCORIS' "bypass" way): the file's few parameters are all it keeps, where a dense W' - W
would cost up to twice the layer (layer_patches installs it; the forms, as their trainers define them):

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
  DoRA    on the input axis (`dora_scale` (1, in[, 1, 1]): A1111's and ComfyUI's reading, LyCORIS' wd_on_output=False,
          OneTrainer's default): W' = m (W + dW) / ||W + dW|| with the norm per input channel; dW is the module's
          exact low-rank pair (lora_math). At weight s: W + s (W' - W), as A1111 and ComfyUI blend it.

Each change is linear in the weight a user gives the file (A1111's scaling): at 1 it is what every tool
computes; at other weights LyCORIS keeps OFT's `rescale` whole and interpolates BOFT per stage, and ComfyUI
applies OFT's weight twice. The output of an OFT layer turned R^T is the output of the turned weight, so the
rotation acts on the output channels (less its bias) exactly as on the weight's rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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


def _turned(r: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """z (channels first) with its channels turned as OFT turns a weight's output channels: R^T per block of
    r (k, b, b); for BOFT's r (stages, k, b, b) stage by stage, stage i pairing the channels 2^i * b/2 apart."""
    rest = z.shape[1:]
    if r.ndim == 3:
        return torch.einsum("knm,kn...->km...", r, z.reshape(r.shape[0], r.shape[1], *rest)).reshape(z.shape)
    count, size = r.shape[1], r.shape[2]
    turned, half = z, size // 2
    for i in range(r.shape[0]):
        span = 2 ** i * half  # channels c and c + span (within a group of 2 * span) meet in one block
        paired = turned.reshape(-1, 2, span, *rest).transpose(1, 2).reshape(count, size, *rest)
        paired = torch.einsum("kij,kj...->ki...", r[i], paired)
        turned = paired.reshape(-1, span, 2, *rest).transpose(1, 2).reshape(z.shape)
    return turned


def prepare(params: dict[str, torch.Tensor], layer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What the layer's output change needs, checked against the layer: OFT / BOFT {r, [rescale]} (the rotation
    computed once), GLoRA {a1, a2, b1, b2, gamma}, IA3 {scale, on_input}. ValueError for a set that does not fit."""
    weight = layer.weight
    out, inp = weight.shape[0], weight.shape[1]
    if "oft_blocks" in params:
        blocks = _f32(params["oft_blocks"])
        constraint = float(params["alpha"]) * out if "alpha" in params else 0.0
        size = blocks.shape[-1]
        count = blocks.shape[-3]
        if blocks.ndim not in (3, 4) or blocks.shape[-2] != size or count * size != out or (blocks.ndim == 4 and size % 2):
            raise ValueError(f"its oft_blocks {tuple(blocks.shape)} do not cover {out} output channels")
        prepared = {"r": _cayley(blocks, constraint)}
        if "rescale" in params:
            prepared["rescale"] = _f32(params["rescale"]).flatten()
            if prepared["rescale"].numel() != out:
                raise ValueError(f"its rescale has {prepared['rescale'].numel()} values for {out} output channels")
        return prepared
    if "a1.weight" in params:
        a1, a2 = _f32(params["a1.weight"]).flatten(1), _f32(params["a2.weight"]).flatten(1)
        b1, b2 = _f32(params["b1.weight"]).flatten(1), _f32(params["b2.weight"])
        rank = a2.shape[0]
        if not (a1.shape == (inp, rank) and a2.shape == (rank, inp) and b1.shape == (out, rank)
                and b2.shape[:2] == (rank, inp) and b2.flatten(1).shape[1] == weight[0].numel()):
            raise ValueError(f"its GLoRA factors a1 {tuple(a1.shape)}, a2 {tuple(a2.shape)}, b1 {tuple(b1.shape)}, "
                             f"b2 {tuple(b2.shape)} are not LyCORIS 2's layout for this layer (W a1 a2 + b1 b2; the "
                             "older layout is not read)")
        alpha = float(params["alpha"]) if "alpha" in params else 0.0
        return {"a1": a1, "a2": a2, "b1": b1, "b2": b2.reshape(rank, *weight.shape[1:]),
                "gamma": torch.tensor((alpha or rank) / rank)}
    scale, on_input = _f32(params["weight"]).flatten(), bool(params["on_input"].item())
    if scale.numel() != (inp if on_input else out):
        raise ValueError(f"its IA3 weight has {scale.numel()} values for {inp if on_input else out} "
                         f"{'input' if on_input else 'output'} channels")
    return {"scale": scale, "on_input": torch.tensor(float(on_input))}


def _no_bias(layer: torch.nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The layer's own operation (stride, padding) with another weight and no bias."""
    if isinstance(layer, torch.nn.Conv2d):
        return layer._conv_forward(x, weight, None)
    return F.linear(x, weight)


def _dora_in(w: torch.Tensor, t: dict[str, torch.Tensor]) -> torch.Tensor:
    """m * (W + dW) / ||W + dW||, the norm per input channel (over outputs and kernel), eps as LyCORIS."""
    merged = w + (t["up"] @ t["down"]).reshape(w.shape)
    norm = merged.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1) + torch.finfo(merged.dtype).eps
    return merged * (t["dora_in"] / norm).reshape(1, -1, *[1] * (w.ndim - 2))


def dense_change(layer: torch.nn.Module, t: dict[str, torch.Tensor]) -> torch.Tensor:
    """The form's W' - W at weight 1 as one tensor of the weight's shape: what output_change adds, baked into the
    weight (`personae merge`). Every form is linear in x, so W x + (W' - W) x is the layer with W' (bias unchanged)."""
    w = layer.weight
    if "dora_in" in t:
        return _dora_in(w, t) - w
    if "r" in t:  # the output channels turned as the outputs are: the weight's rows, a kernel's flattened
        rows = w.reshape(w.shape[0], -1)
        turned = _turned(t["r"], rows)
        if "rescale" in t:
            turned = turned * t["rescale"].reshape(-1, 1)
        return (turned - rows).reshape(w.shape)
    if "scale" in t:  # IA3: the weight scaled along its output channels, or its input ones
        scale = t["scale"].reshape(-1)
        if t["on_input"]:
            return w * scale.reshape(1, -1, *[1] * (w.ndim - 2))
        return w * scale.reshape(-1, *[1] * (w.ndim - 1))
    mixed = torch.einsum("oj...,ji->oi...", w, t["a1"] @ t["a2"])  # GLoRA: W a1 a2 over the input channels
    pair = (t["b1"] @ t["b2"].reshape(t["b2"].shape[0], -1)).reshape(w.shape)  # + b1 b2
    return (mixed + pair) * t["gamma"]


def output_change(layer: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, t: dict[str, torch.Tensor]
                  ) -> torch.Tensor:
    """How the form in `t` (prepare's) changes the output y = layer(x), at weight 1: the exact (W' - W) x."""
    conv = isinstance(layer, torch.nn.Conv2d)
    axis = 1 if conv else -1  # the channel axis of x and y
    if "dora_in" in t:
        return _no_bias(layer, x, _dora_in(layer.weight, t) - layer.weight)
    if "r" in t or ("scale" in t and not t["on_input"]):
        z = y if layer.bias is None else y - layer.bias.reshape(-1, *[1] * (y.ndim - 2 if conv else 0))
        if "scale" in t:
            return z * t["scale"].reshape(-1, *[1] * (y.ndim - 2)) if conv else z * t["scale"]
        turned = _turned(t["r"], z.movedim(axis, 0)).movedim(0, axis)
        if "rescale" in t:
            turned = turned * (t["rescale"].reshape(-1, *[1] * (y.ndim - 2)) if conv else t["rescale"])
        return turned - z
    if "scale" in t:  # IA3 on the input: W (s * x)
        return _no_bias(layer, x * (t["scale"].reshape(-1, *[1] * (x.ndim - 2)) if conv else t["scale"]),
                        layer.weight)
    a1, a2, b1 = t["a1"], t["a2"], t["b1"]
    if conv:  # the a half mixes input channels (1x1) before the layer's own convolution
        mixed = F.conv2d(F.conv2d(x, a2[:, :, None, None]), a1[:, :, None, None])
        b = F.conv2d(layer._conv_forward(x, t["b2"], None), b1[:, :, None, None])
    else:
        mixed = F.linear(F.linear(x, a2), a1)
        b = F.linear(F.linear(x, t["b2"]), b1)
    return (_no_bias(layer, mixed, layer.weight) + b) * t["gamma"]
