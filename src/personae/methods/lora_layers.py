"""Which layers a LoRA-family adapter sits on, and what peft made of them: shared by the training methods
(methods/lora.py) and by a run that goes on from a file (methods/lora_init.py)."""

from __future__ import annotations

from peft.tuners.tuners_utils import BaseTunerLayer

LOCON_CONVS = ["conv1", "conv2", "conv"]  # resnet 3x3 convolutions and the down/up samplers' (kohya's conv_dim set)
LOCON_1X1 = ["conv_shortcut"]  # 1x1 convolutions: kohya trains them at network_dim, as Linear layers


def unet_targets(targets: list[str], variant: str) -> list[str]:
    """The UNet layers a variant trains: `targets`, and for locon every resnet and sampler convolution."""
    extra = LOCON_CONVS + LOCON_1X1 if variant == "locon" else []
    return list(dict.fromkeys([*targets, *extra]))


def targeted(model, targets: list[str]) -> dict[str, str]:
    """{module name: class name} of the layers `targets` names (a whole name, or its last parts, as peft matches)."""
    return {name: type(m).__name__ for name, m in model.named_modules()
            if any(name == t or name.endswith("." + t) for t in targets)}


def layer_alphas(model) -> dict[str, float]:
    """{module: alpha} of every adapted layer, read from peft's own layers (scale * rank), so patterns count."""
    alphas = {}
    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer) and "default" in getattr(module, "scaling", {}):
            alphas[name] = float(module.scaling["default"]) * module.r["default"]
    return alphas
