"""Max-norm regularisation of LoRA-family layers (`train.scale_weight_norms`, kohya's --scale_weight_norms).

After each optimizer step every trained adapter layer's change to its weight, scale (alpha / rank) included, is
measured (its Frobenius norm; peft's own `get_delta_weight`, so a convolution's change is its whole kernel); a layer
whose norm is above the limit is scaled down to it, the others are left as they are. The change is scaled by
ratio = limit / norm the way the trainers users know do it: kohya's networks.lora multiplies both LoRA matrices by
sqrt(ratio) (peft's lora_A / lora_B, DoRA's direction too), LyCORIS folds the ratio into one factor (LoHa's
hada_w1_a, LoKr's lokr_w1 or lokr_w1_a). It reports what kohya logs: how many layers were scaled ("Keys Scaled"),
and the mean and the largest norm after scaling ("Average key norm").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ADAPTER = "default"


@dataclass(frozen=True)
class NormReport:
    scaled: int  # layers scaled down this step
    mean: float  # their norms after scaling: mean and largest
    largest: float


def _factor(layer) -> list[tuple[torch.nn.Parameter, float]] | None:
    """(parameter, power of the ratio it is multiplied by) for each factor scaled, per peft layer kind."""
    if hasattr(layer, "lora_A") and ADAPTER in layer.lora_A:  # LoRA, LoCon, DoRA (the direction's low-rank pair)
        return [(layer.lora_A[ADAPTER].weight, 0.5), (layer.lora_B[ADAPTER].weight, 0.5)]
    if hasattr(layer, "hada_w1_a") and ADAPTER in layer.hada_w1_a:  # LoHa
        return [(layer.hada_w1_a[ADAPTER], 1.0)]
    if hasattr(layer, "lokr_w1") and ADAPTER in layer.lokr_w1:  # LoKr, w1 whole
        return [(layer.lokr_w1[ADAPTER], 1.0)]
    if hasattr(layer, "lokr_w1_a") and ADAPTER in layer.lokr_w1_a:  # LoKr, w1 as a product
        return [(layer.lokr_w1_a[ADAPTER], 1.0)]
    return None


def trained_layers(models: list[torch.nn.Module]) -> list:
    """The adapter layers of `models` whose factors train (a LoRA kept fixed, e.g. lora.init_from's text encoder
    with text_encoder off, is not scaled)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = []
    for model in models:
        for module in model.modules():
            if isinstance(module, BaseTunerLayer):
                factors = _factor(module)
                if factors and all(p.requires_grad for p, _ in factors):
                    layers.append(module)
    return layers


@torch.no_grad()
def apply_max_norm(layers: list, limit: float) -> NormReport:
    """Scale each layer whose change's norm is above `limit` down to it (kohya's clamp: a norm below limit / 2
    counts as limit / 2, which only keeps the division finite)."""
    scaled, norms = 0, []
    for layer in layers:
        norm = float(layer.get_delta_weight(ADAPTER).float().norm())
        ratio = min(limit, max(norm, limit / 2)) / max(norm, limit / 2)
        if ratio != 1.0:
            scaled += 1
            for param, power in _factor(layer):
                param.mul_(ratio ** power)
        norms.append(norm * ratio)
    return NormReport(scaled, sum(norms) / len(norms) if norms else 0.0, max(norms, default=0.0))
