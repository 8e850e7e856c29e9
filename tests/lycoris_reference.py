"""LyCORIS (the lycoris-lora package) as the reference for the kohya / LyCORIS layout: its own network writes
files, its own loader reads them. Shared by tests/test_lycoris_files.py and tests/test_lora_variants.py.

LyCORIS names modules after `named_modules()` of the models it is given. transformers 5's CLIPTextModel has no
`text_model` level any more, so LyCORIS on it would write and look for `lora_te_encoder_layers_...`; A1111,
ComfyUI and every file kohya's scripts made use `lora_te_text_model_encoder_layers_...`. `as_kohya_sees_it`
puts the level back (the same modules, one attribute deeper), as transformers 4 has it.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch

# every Linear / Conv2d SD-1.5 has in its attention, resnet and sampler blocks, conv_in / conv_out and the time
# embedding, and the text encoder's attention and MLP. LyCORIS' built-in "full" preset names the time embedding
# twice on a diffusers UNet (by its class and by its name) and stops with "duplicated lora name"; its loader builds
# an empty network from the class's current preset first, so it needs this one set too.
SD15_PRESET = """enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]
unet_target_name = ["conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2"]
text_encoder_target_module = ["CLIPAttention", "CLIPSdpaAttention", "CLIPMLP"]
text_encoder_target_name = []
"""
# BOFT splits a layer's outputs into a power of two of blocks: the tiny text encoder's 37-wide MLP has none, so
# BOFT cases train attention alone there
BOFT_PRESET = SD15_PRESET.replace(', "CLIPMLP"', "").replace('"conv_out", ', "")


def quiet() -> None:
    logging.getLogger("LyCORIS").setLevel(logging.ERROR)


def as_kohya_sees_it(text_encoder: torch.nn.Module, text_model_level: bool = True) -> torch.nn.Module:
    if not text_model_level or hasattr(text_encoder, "text_model"):
        return text_encoder
    holder = torch.nn.Module()
    holder.text_model = text_encoder
    return holder


def probe_inputs(pipe, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, pipe.unet.config.in_channels, 16, 16, generator=g)
    ids = torch.randint(0, pipe.tokenizer.vocab_size, (2, pipe.tokenizer.model_max_length), generator=g)
    return sample, ids


@torch.no_grad()
def outputs(text_encoder, unet, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """The text encoder's last hidden states and the UNet's prediction at t = 500 on them."""
    sample, ids = inputs
    states = text_encoder(ids)[0]
    return states, unet(sample, 500, states).sample


def write_lycoris_file(pipe, path: Path, preset: Path, inputs, dim: int = 4, alpha: float = 2, seed: int = 1,
                       text_model_level: bool = True, **network_args) -> tuple[torch.Tensor, torch.Tensor]:
    """A LyCORIS network (kohya.create_network, `network_args` as kohya's --network_args give them) on copies of
    the pipeline's text encoder and UNet, every parameter seeded (a new network changes nothing: its up weights
    start at zero; DoRA magnitudes near 1), saved by LyCORIS' own save_weights. Returns what the network that
    wrote the file computes on `inputs` (at weight 1): the file's meaning, even where LyCORIS' loader fails on it."""
    from lycoris import kohya

    quiet()
    te, unet = copy.deepcopy(pipe.text_encoder), copy.deepcopy(pipe.unet)
    args = {"preset": str(preset), **{k: str(v) for k, v in network_args.items()}}
    network = kohya.create_network(1.0, dim, alpha, None, as_kohya_sees_it(te, text_model_level), unet, **args)
    network.apply_to(as_kohya_sees_it(te, text_model_level), unet, True, True)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in network.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if name.endswith("dora_scale") else 0.0))
    network.save_weights(str(path), torch.float32, {"ss_network_module": "lycoris.kohya"})
    return outputs(te, unet, inputs)


def write_wrapper_file(pipe, path: Path, preset: Path, inputs, seed: int = 1, **network_args) -> torch.Tensor:
    """LyCORIS' own wrapper (`lycoris.create_lycoris`, as SimpleTuner and scripts outside kohya use it) on a copy of
    the UNet alone: keys `lycoris_<diffusers module name>`. Returns the writing network's UNet prediction."""
    from lycoris import create_lycoris

    quiet()
    unet = copy.deepcopy(pipe.unet)
    args = {"preset": str(preset), **{k: str(v) for k, v in network_args.items()}}
    network = create_lycoris(unet, 1.0, linear_dim=4, linear_alpha=2, **args)
    network.apply_to()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in network.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if name.endswith("dora_scale") else 0.0))
    network.save_weights(str(path), torch.float32, {})
    return outputs(pipe.text_encoder, unet, inputs)[1]


def lycoris_outputs(pipe, path: Path, weight: float, inputs, text_model_level: bool = True,
                    text_encoder: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """What LyCORIS' own loader makes of `path` at `weight` on fresh copies of the pipeline's models (the way kohya's
    sd-scripts loads a lycoris.kohya network for inference: create_network_from_weights, then apply_to)."""
    import toml
    from lycoris import kohya
    from lycoris.config_sdk import PresetConfig

    quiet()
    kohya.LycorisNetworkKohya.apply_preset(PresetConfig.from_dict(toml.loads(SD15_PRESET)).to_dict())
    te, unet = copy.deepcopy(pipe.text_encoder), copy.deepcopy(pipe.unet)
    seen = as_kohya_sees_it(te, text_model_level)
    network, tensors = kohya.create_network_from_weights(weight, str(path), None, seen, unet)
    network.apply_to(seen, unet, True, True)
    placed = {m.lora_name for m in network.unet_loras + network.text_encoder_loras}
    in_file = {key.split(".", 1)[0] for key in tensors}
    assert placed == in_file, f"LyCORIS left modules out: {sorted(in_file - placed)[:3]}"
    assert bool(network.text_encoder_loras) == text_encoder
    return outputs(te, unet, inputs)
