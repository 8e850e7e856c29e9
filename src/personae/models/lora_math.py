"""Every LoRA-family weight change as one exact low-rank pair: delta = scale * up @ down.

Files in the wild carry a module's change in several forms (A1111 and ComfyUI apply all
of them); each has an exact factorisation, so all of them load as ordinary peft LoRA
layers (per-file weights, several files at once, unloadable):

  LoRA / LoCon   up @ down (4-D down on convolutions); with `lora_mid` (CP) the mid core
                 folds into down.
  LoHa           (w1a @ w1b) * (w2a @ w2b), elementwise: the Khatri-Rao products of the two
                 pairs give rank r1*r2 factors; `hada_t1` / `hada_t2` (Tucker cores) fold in.
  LoKr           kron(w1, w2): kron(U1, U2) @ kron(V1, V2) when w1 = U1 V1 and w2 = U2 V2; a
                 full w1 or w2 factors against an identity on its shorter side.
  full diff      the delta itself against an identity (`diff_b` becomes the LoRA bias).
  OFT, BOFT,     changes made from the base weight W itself (a rotation of its output channels, W a1 a2 + b1 b2,
  GLoRA, IA3     a rescaling): no pair at all; recognised here (`kind_of`), applied beside the layer by
                 `lora_weight_forms` / `layer_patches`.
  DoRA           a LoRA with `dora_scale`: W' = m * (W + delta) / ||W + delta||, the norm per output
                 channel as peft computes it (peft's `lora/dora.py`: Linear norm over dim 1, Conv2d over
                 dims 1-3), so `dora_scale` must hold one value per output channel ((out, 1[, 1, 1]), LyCORIS'
                 wd_on_out). It loads as a peft DoRA layer, the magnitude kept beside the low-rank pair.
                 A1111 (and LyCORIS with wd_on_output=False) put the norm on the input axis ((1, in)): peft has
                 no such layer, so such a file is refused by name, not loaded differently. LyCORIS' DoRA on
                 LoHa / LoKr (`dora_wd` with algo loha / lokr) is the same rescaling of the same exact pair.

Scales follow LyCORIS / A1111 / ComfyUI: alpha / rank, rank being lora_down's rows, LoHa's
w1b rows, LoKr's w2b (else w1b) rows; 1 without alpha, and for LoKr with both factors full.
Weight tensors are as the files store them: down (rank, in[, kh, kw]), up (out, rank[, 1, 1]),
hada_w1_a (out, r) or, with a Tucker core, (r, out), lokr_w1 (a, b), lokr_w2 (c, d[, kh, kw]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from personae.models.lora_weight_forms import NEEDS_BASE

KINDS = {  # parameter names that make up each kind (the rest of a module's names must be among them)
    "LoRA": {"down", "up", "mid", "alpha", "up_bias", "dora_scale", "diff_b"},  # up_bias: peft's lora_bias;
    # diff_b beside a LoRA: a bias change of its own, as ComfyUI's Extract and Save Lora writes it
    "LoHa": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "alpha", "dora_scale"},
    "LoKr": {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "alpha",
             "dora_scale"},
    "full": {"diff", "diff_b"},
    # made from the base weight (lora_weight_forms): OFT's 4-D oft_blocks are BOFT
    "OFT": {"oft_blocks", "alpha", "rescale"},
    "GLoRA": {"a1.weight", "a2.weight", "b1.weight", "b2.weight", "alpha"},
    "IA3": {"weight", "on_input"},
}
_REQUIRED = {"LoRA": [{"down", "up"}], "LoHa": [{"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"}],
             "LoKr": [{"lokr_w1"}, {"lokr_w1_a", "lokr_w1_b"}], "full": [{"diff"}, {"diff_b"}],
             "OFT": [{"oft_blocks"}], "GLoRA": [{"a1.weight", "a2.weight", "b1.weight", "b2.weight"}],
             "IA3": [{"weight", "on_input"}]}
FROM_BASE = ("OFT", "GLoRA", "IA3")  # kinds made from the base weight: no LowRank form
NO_PEFT_FORM = "which peft's DoRA layers (they normalise the output axis) cannot hold"


@dataclass
class LowRank:
    """One module's change: delta = alpha / rank * up @ down (flattened), plus an optional bias change."""

    down: torch.Tensor  # (rank, in) for a Linear, (rank, in, kh, kw) for a Conv2d
    up: torch.Tensor  # (out, rank) or (out, rank, 1, 1)
    alpha: float
    bias: torch.Tensor | None = None
    magnitude: torch.Tensor | None = None  # DoRA: m, one value per output channel (out,)

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def delta(self) -> torch.Tensor:
        """The low-rank change (for DoRA: before the magnitude / norm rescaling, which needs the base weight)."""
        flat = self.up.flatten(1) @ self.down.flatten(1) * (self.alpha / self.rank)
        return flat.reshape(self.up.shape[0], *self.down.shape[1:])


def kind_of(params: dict[str, torch.Tensor]) -> str | None:
    """Which kind these parameter names make up, or None (unknown names, or required ones missing)."""
    names = set(params)
    for kind, allowed in KINDS.items():
        if names <= allowed and names - {"alpha"}:
            if kind == "LoKr" and not ({"lokr_w2"} <= names or {"lokr_w2_a", "lokr_w2_b"} <= names):
                return None
            if any(req <= names for req in _REQUIRED[kind]):
                return kind  # else another kind may hold these names (diff_b alone is a full diff, not a LoRA)
    return None


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float32)


def _scale(params, rank: int | None) -> float:
    """alpha / rank as the other tools compute it: 1 where the file has no alpha or no rank applies."""
    if "alpha" in params and rank is not None:
        return float(params["alpha"]) / rank
    return 1.0


def _tucker(core: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) of the Tucker form delta[o, c, k, l] = sum_ij wa[i, o] core[i, j, k, l] wb[j, c]."""
    return wa.T.contiguous(), torch.einsum("ijkl,jc->ickl", core, wb).contiguous()


def _lora(p):
    down, up = _f32(p["down"]), _f32(p["up"]).flatten(1)
    rank = down.shape[0]
    if "mid" not in p:  # the file's own alpha, kept exactly (convert writes it back)
        return up, down, float(p["alpha"]) if "alpha" in p else float(rank)
    down = torch.einsum("nmkl,mj->njkl", _f32(p["mid"]), down.flatten(1)).contiguous()  # CP: mid[n, m] between up[:, n], down[m]
    return up, down, _scale(p, rank) * down.shape[0]


def _loha(p):
    halves = []
    for i in (1, 2):
        wa, wb = _f32(p[f"hada_w{i}_a"]), _f32(p[f"hada_w{i}_b"])
        halves.append(_tucker(_f32(p[f"hada_t{i}"]), wa, wb) if f"hada_t{i}" in p else (wa, wb))
    (u1, d1), (u2, d2) = halves
    d1, d2 = d1.flatten(1), d2.flatten(1)
    up = (u1[:, :, None] * u2[:, None, :]).reshape(u1.shape[0], -1)  # Khatri-Rao: column (a, b) = u1[:, a] * u2[:, b]
    down = (d1[:, None, :] * d2[None, :, :]).reshape(-1, d1.shape[1])
    return up, down, _scale(p, p["hada_w1_b"].shape[0]) * down.shape[0]


def _identity_split(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w = U @ V with the identity on w's shorter side (rank = min(rows, cols))."""
    rows, cols = w.shape
    return (torch.eye(rows), w) if rows <= cols else (w, torch.eye(cols))


def _lokr(p):
    if "lokr_w1" in p:
        u1, v1 = _identity_split(_f32(p["lokr_w1"]).flatten(1))
    else:
        u1, v1 = _f32(p["lokr_w1_a"]), _f32(p["lokr_w1_b"]).flatten(1)
    if "lokr_w2" in p:
        u2, v2 = _identity_split(_f32(p["lokr_w2"]).flatten(1))
    elif "lokr_t2" in p:
        u2, v2 = _tucker(_f32(p["lokr_t2"]), _f32(p["lokr_w2_a"]), _f32(p["lokr_w2_b"]))
    else:
        u2, v2 = _f32(p["lokr_w2_a"]), _f32(p["lokr_w2_b"])
    # kron(w1, w2) flattened over (in, kh, kw): w2's kernel dims travel with its columns
    down = torch.kron(v1, v2.flatten(1))
    rank = p["lokr_w2_b"].shape[0] if "lokr_w2_b" in p else p["lokr_w1_b"].shape[0] if "lokr_w1_b" in p else None
    return torch.kron(u1, u2), down, _scale(p, rank) * down.shape[0]


def _full(p):
    if "diff" not in p:
        return None
    up, down = _identity_split(_f32(p["diff"]).flatten(1))
    return up, down, float(down.shape[0])


_FACTORS = {"LoRA": _lora, "LoHa": _loha, "LoKr": _lokr, "full": _full}


def _shaped(up, down, kernel):
    """Factors as peft holds them: down (R, in[, kh, kw]), up (out, R[, 1, 1])."""
    rank = down.shape[0]
    if kernel is None:
        return down.reshape(rank, -1), up.reshape(up.shape[0], rank)
    return down.reshape(rank, -1, *kernel), up.reshape(up.shape[0], rank, 1, 1)


def low_rank(params: dict[str, torch.Tensor], weight_shape: tuple[int, ...]) -> LowRank:
    """The exact LowRank form of one module's parameters, for a module whose weight has `weight_shape`.

    Only the kernel (and, for a bias-only full diff, the sizes) are taken from `weight_shape`; the
    caller compares the result's sizes with the module's. Raises ValueError for an unknown set, and for
    OFT, BOFT, GLoRA and IA3 (FROM_BASE), which have no such form.
    """
    kind = kind_of(params)
    if kind is None:
        raise ValueError(f"parameters {sorted(params)} are no LoRA, LoHa, LoKr, full-diff, OFT, GLoRA or IA3 set")
    kernel = tuple(weight_shape[2:]) or None
    if kind in FROM_BASE:
        label = kind_label(params)
        raise ValueError(f"it is {'an' if label[0] in 'AEIOU' else 'a'} {label} module, which {NEEDS_BASE}")
    factors = _FACTORS[kind](params)
    if factors is None:  # bias only: a zero rank-1 weight change carries it
        factors = (torch.zeros(weight_shape[0], 1), torch.zeros(1, math.prod(weight_shape[1:])), 1.0)
    up, down, alpha = factors
    # peft scales lora_B's bias as the weight change (alpha / rank): up_bias is such a bias, diff_b (ComfyUI, LyCORIS'
    # full diff) a change applied as it is, so it is stored divided by that scale
    bias = _f32(params["diff_b"]) * (down.shape[0] / alpha) if "diff_b" in params else params.get("up_bias")
    bias = _f32(bias) if bias is not None else None
    down, up = _shaped(up, down, kernel)
    return LowRank(down.contiguous(), up.contiguous(), alpha, bias, _magnitude(params, up.shape[0]))


def full_rank(delta: torch.Tensor) -> LowRank:
    """A dense weight change (out, in[, kh, kw]) as an exact LowRank: split against an identity on its shorter side."""
    delta = _f32(delta)  # made on the model's device and dtype: kept as every change is, float32 on the CPU
    up, down = _identity_split(delta.flatten(1))
    down, up = _shaped(up, down, tuple(delta.shape[2:]) or None)
    return LowRank(down.contiguous(), up.contiguous(), float(down.shape[0]))


def kind_label(params) -> str:
    """The form's name as other tools call it (for messages and a file's description)."""
    kind = kind_of(params)
    if kind == "OFT" and params["oft_blocks"].ndim == 4:
        return "BOFT"
    return {"LoRA": "LoRA", "full": "full diff"}.get(kind, kind or "unknown")


def dora_on_input(params: dict[str, torch.Tensor], weight_shape: tuple[int, ...]) -> bool:
    """Whether the module's `dora_scale` normalises the input axis ((1, in[, 1, 1]): A1111's and ComfyUI's reading,
    LyCORIS' wd_on_output=False and OneTrainer's default), not the output axis peft's DoRA layers know."""
    scale = params.get("dora_scale")
    return scale is not None and scale.shape[0] == 1 and scale.numel() == weight_shape[1] and weight_shape[0] != 1


def _magnitude(params, out: int) -> torch.Tensor | None:
    """DoRA's `dora_scale` as (out,), when it holds one value per output channel (the axis peft normalises)."""
    if "dora_scale" not in params:
        return None
    scale = _f32(params["dora_scale"])
    if scale.shape[0] != out or scale.numel() != out:
        raise ValueError(f"its dora_scale {tuple(scale.shape)} normalises the input axis (A1111's layout, LyCORIS' "
                         f"wd_on_output=False), {NO_PEFT_FORM}" if scale.shape[0] == 1 else
                         f"its dora_scale {tuple(scale.shape)} fits neither the output axis ({out}) nor the input axis")
    return scale.flatten().contiguous()
