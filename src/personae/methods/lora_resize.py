"""A LoRA cut to a lower rank (kohya's networks/resize_lora.py), for `personae convert --rank`.

    lora = read_lora_file(path)
    report = resize(lora, Resize(rank=16))          # lora.changes now at rank <= 16, the same scale

As kohya computes it, per layer: the change up @ down (a convolution's flattened over its kernel) without its scale
is split by SVD and cut to the new rank, up = U S and down = Vh; the new alpha is the old scale times the new rank,
so alpha / rank stays what it was. 4-dimensional layers (convolutions) take conv_rank (default: rank). A dynamic
method picks each layer's rank from its singular values, with rank as the largest: sv_ratio keeps the singular
values above the largest / param, sv_fro the fewest whose Frobenius norm reaches param of the whole, sv_cumulative
the fewest whose sum reaches param of the whole (kohya's index functions). A layer whose change is zero keeps rank 1.
Unlike kohya, no layer goes above its own rank (kohya would add zero singular directions). Any layout personae
reads can be resized: LyCORIS LoHa / LoKr are taken as the exact change they make and come out as LoRA pairs; a
DoRA layer keeps its magnitude, and its direction is the resized change. Layer biases are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from personae.errors import UserError

DYNAMIC = ("sv_ratio", "sv_fro", "sv_cumulative")
MIN_SV = 1e-6  # kohya's: a change whose largest singular value is at most this is zero


@dataclass(frozen=True)
class Resize:
    rank: int
    conv_rank: int | None = None
    dynamic_method: str | None = None
    dynamic_param: float | None = None

    def check(self) -> None:
        if self.rank < 1 or (self.conv_rank is not None and self.conv_rank < 1):
            raise UserError(f"--rank {self.rank} / --conv-rank {self.conv_rank}: a rank is a whole number from 1 up.",
                            "Give e.g. --rank 16.")
        if self.dynamic_method and self.dynamic_method not in DYNAMIC:
            raise UserError(f"--dynamic-method {self.dynamic_method} is not one of kohya's: {', '.join(DYNAMIC)}.",
                            "Pick one of them.")
        if bool(self.dynamic_method) != (self.dynamic_param is not None):
            raise UserError("--dynamic-method and --dynamic-param go together (e.g. --dynamic-method sv_fro "
                            "--dynamic-param 0.9: keep 90 % of each layer's Frobenius norm).",
                            "Give both, or neither for a fixed rank.")


def _index(s: torch.Tensor, method: str, param: float) -> int:
    """kohya's index_sv_*: the 0-based index of the last singular value kept."""
    if method == "sv_ratio":
        index = int((s > s[0] / param).sum()) - 1
    elif method == "sv_fro":
        squared = s.pow(2)
        index = int(torch.searchsorted(torch.cumsum(squared, 0) / float(squared.sum()), torch.tensor(param ** 2)))
    else:
        index = int(torch.searchsorted(torch.cumsum(s, 0) / float(s.sum()), torch.tensor(float(param))))
    return max(0, min(index, len(s) - 1))


def new_rank(s: torch.Tensor, rank: int, method: str | None = None, param: float | None = None) -> int:
    """A layer's rank from its singular values `s` (descending), as kohya's rank_resize picks it."""
    if float(s[0]) <= MIN_SV:
        return 1
    chosen = _index(s, method, param) + 1 if method else rank
    return min(chosen, rank)


@torch.no_grad()
def resize_change(change, rank: int, method: str | None = None, param: float | None = None):
    """(the change at its new rank, the share of its Frobenius norm kept)."""
    from personae.models.lora_math import LowRank

    up, down = change.up.float(), change.down.float()
    u, s, vh = torch.linalg.svd(up.flatten(1) @ down.flatten(1), full_matrices=False)
    r = min(new_rank(s, rank, method, param), change.rank)
    kept = float(s[:r].pow(2).sum().sqrt() / s.pow(2).sum().sqrt()) if float(s[0]) > 0 else 1.0
    new_up = (u[:, :r] * s[:r]).reshape(up.shape[0], r, *up.shape[2:])
    new_down = vh[:r].reshape(r, *down.shape[1:])
    return LowRank(new_down.contiguous(), new_up.contiguous(), float(change.alpha) / change.rank * r, change.bias,
                   change.magnitude), kept


def resize(lora, spec: Resize) -> str:
    """Every change of a read LoraFile at its new rank, in place; returns what kohya's --verbose sums up."""
    spec.check()
    kept, old = {}, max((c.rank for c in lora.changes.values()), default=0)
    for key, change in list(lora.changes.items()):
        rank = (spec.conv_rank or spec.rank) if change.down.dim() == 4 else spec.rank
        lora.changes[key], kept[key] = resize_change(change, rank, spec.dynamic_method, spec.dynamic_param)
    if not kept:
        raise UserError(f"{lora.path} has no LoRA layers to resize.", "Resize a file with LoRA layers.")
    ranks = sorted({c.rank for c in lora.changes.values()})
    worst = min(kept, key=kept.get)
    how = f"{spec.dynamic_method} {spec.dynamic_param:g}, at most {spec.rank}" if spec.dynamic_method else \
        f"{spec.rank}" + (f" (convolutions {spec.conv_rank})" if spec.conv_rank else "")
    return (f"resized {len(kept)} layers from rank {old} to {how}: ranks now {ranks[0]}"
            f"{f'-{ranks[-1]}' if len(ranks) > 1 else ''}; each layer keeps {sum(kept.values()) / len(kept):.1%} of "
            f"its Frobenius norm on average, the least {kept[worst]:.1%} ({worst[1]})")


@dataclass
class Extracted:
    up: torch.Tensor
    down: torch.Tensor
    kept: float  # squared norm of the difference the rank keeps (before clamping)
    total: float  # the difference's squared norm


@torch.no_grad()
def low_rank(diff: torch.Tensor, rank: int, clamp_quantile: float) -> Extracted:
    """kohya's svd() of extract_lora_from_models and svd_merge_lora: the leading `rank` singular triplets of a
    (flattened) weight change, up = U S and down = Vh, clamped to [-q, q] with q the clamp_quantile-th value of
    their entries together (1: no clamping)."""
    out_dim, in_dim = diff.shape[:2]
    matrix = diff.flatten(1) if diff.dim() == 4 else diff
    rank = min(rank, out_dim, matrix.shape[1])
    u, s, vh = torch.linalg.svd(matrix.float(), full_matrices=False)
    up, down = u[:, :rank] * s[:rank], vh[:rank]
    if clamp_quantile < 1.0:
        limit = torch.quantile(torch.cat([up.flatten(), down.flatten()]), clamp_quantile)
        up, down = up.clamp(-limit, limit), down.clamp(-limit, limit)
    if diff.dim() == 4:
        up, down = up.reshape(out_dim, rank, 1, 1), down.reshape(rank, in_dim, *diff.shape[2:])
    return Extracted(up.contiguous(), down.contiguous(), float((s[:rank] ** 2).sum()), float((s ** 2).sum()))


@torch.no_grad()
def merge(loras: list, spec: Resize, clamp_quantile: float = 0.99) -> tuple[dict, str]:
    """kohya's svd_merge_lora: several read files at their weights summed layer by layer (each layer's change with
    its scale), then each sum cut to the rank by SVD as extraction cuts it (alpha = rank). Returns (changes, what
    was done). DoRA magnitudes and layer biases cannot be summed and are refused."""
    from personae.models.lora_math import LowRank

    spec.check()
    sums: dict = {}
    for lora, weight in loras:
        for key, change in lora.changes.items():
            if change.magnitude is not None or change.bias is not None:
                what = "DoRA magnitudes" if change.magnitude is not None else "layer bias changes"
                raise UserError(f"{lora.path} has {what} ({key[1]}), which a sum of LoRAs cannot hold.",
                                "Merge LoRA, LoCon, LoHa or LoKr files; apply this one beside the merge with --lora.")
            delta = change.delta().float() * weight
            if key in sums and sums[key].shape != delta.shape:
                raise UserError(f"{lora.path} changes {key[1]} with another shape than the files before it: they "
                                "were made for different models.", "Merge LoRAs made for one base model.")
            sums[key] = sums[key] + delta if key in sums else delta
    changes, kept, total = {}, 0.0, 0.0
    for key, delta in sums.items():
        convolution = delta.dim() == 4 and tuple(delta.shape[2:]) != (1, 1)
        rank = (spec.conv_rank or spec.rank) if convolution else spec.rank
        part = low_rank(delta, rank, clamp_quantile)
        changes[key] = LowRank(part.down, part.up, float(part.down.shape[0]))
        kept, total = kept + part.kept, total + part.total
    names = ", ".join(f"{Path(lora.path).name} x {weight:g}" for lora, weight in loras)
    said = (f"merged {names} over {len(changes)} layers at rank {spec.rank}"
            f"{f' (3x3 convolutions {spec.conv_rank})' if spec.conv_rank else ''}: the rank keeps "
            f"{kept / total:.1%} of the summed changes' squared norm" if total else f"merged {names}: no change")
    return changes, said
