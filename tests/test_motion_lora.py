"""MotionLoRAs (AnimateDiff's zoom / pan / tilt / roll LoRAs) given to `personae animate --lora`: placed on the
clip's motion modules, in the layouts they are shared in, with the change their loaders make.

- AnimateDiff's own layout (the v2_lora_*.ckpt files; A1111's extension and ComfyUI's AnimateDiff-Evolved read it):
  `down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.processor.to_q_lora.
  down.weight`, no alpha (the change is up x down x strength).
- diffusers' (guoyww/animatediff-motion-lora-* on the hub, made by diffusers' conversion script): `unet.down_blocks.0.
  motion_modules.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight`, which diffusers' own
  `load_lora_weights` reads.

Tiny model + tiny motion adapter, 32 px; the motion UNet's prediction is compared, not pixels.
"""

import re

import pytest
import torch
from safetensors.torch import save_file

from personae.config.animate import AnimateSettings
from personae.errors import UserError
from personae.inference.animate import animate, open_for

WEIGHT = 0.7


def settings(model, motion, loras=(), **kw):
    return AnimateSettings(**{"model": str(model), "motion_adapter": str(motion), "prompt": "a photo of a cat",
                              "steps": 2, "seed": 7, "width": 32, "height": 32, "frames": 4, "context": 4,
                              "context_stride": 2, "loras": list(loras), **kw})


@pytest.fixture(scope="module")
def plain(tiny_model, motion_dir):
    return open_for(settings(tiny_model[0], motion_dir))


def motion_layers(unet) -> dict[str, torch.nn.Linear]:
    """The motion modules' attention projections, by diffusers' module names."""
    return {name: module for name, module in unet.named_modules()
            if ".motion_modules." in name and re.search(r"\.attn[12]\.to_(q|k|v|out\.0)$", name)
            and isinstance(module, torch.nn.Linear)}


def animatediff_key(module: str, part: str) -> str:
    """AnimateDiff's own name for a motion layer's LoRA half (as AnimateDiff-Evolved's loader documents it)."""
    key = re.sub(r"(motion_modules\.\d+)\.", r"\1.temporal_transformer.", module)
    key = key.replace(".attn1.", ".attention_blocks.0.").replace(".attn2.", ".attention_blocks.1.")
    key = re.sub(r"\.(to_q|to_k|to_v|to_out)(\.0)?$", r".processor.\1_lora", key)
    return f"{key}.{part}.weight"


def diffusers_key(module: str, part: str) -> str:
    """The hub's diffusers files: the old attention-processor names under `unet.`."""
    return "unet." + re.sub(r"\.(to_q|to_k|to_v|to_out)(\.0)?$", r".processor.\1_lora", module) + f".{part}.weight"


def random_lora(unet, rank: int = 4, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return {name: (torch.randn(rank, layer.in_features, generator=gen) * 0.3,
                   torch.randn(layer.out_features, rank, generator=gen) * 0.3)
            for name, layer in sorted(motion_layers(unet).items())}


def write(pairs, path, key) -> str:
    save_file({key(m, part): t.contiguous() for m, (down, up) in pairs.items()
               for part, t in (("down", down), ("up", up))}, str(path))
    return str(path)


def prediction(animate_session) -> torch.Tensor:
    """The motion UNet's noise prediction for fixed inputs: 4 frames of 4x4 latents, the prompt's conditioning."""
    unet = animate_session.pipe.unet
    gen = torch.Generator().manual_seed(3)
    sample = torch.randn(1, unet.config.in_channels, 4, 4, 4, generator=gen)
    text = animate_session.session.encoder.encode("a photo of a cat").embeds.repeat(4, 1, 1)
    with torch.no_grad():
        return unet(sample, 500, encoder_hidden_states=text).sample


def test_animatediff_layout_is_placed_on_the_motion_modules_as_up_times_down(tiny_model, motion_dir, plain, tmp_path):
    pairs = random_lora(plain.pipe.unet)
    assert animatediff_key(next(iter(pairs)), "down") == ("down_blocks.0.motion_modules.0.temporal_transformer."
                                                         "transformer_blocks.0.attention_blocks.0.processor.to_k_lora."
                                                         "down.weight")
    path = write(pairs, tmp_path / "v2_lora_ZoomIn.safetensors", animatediff_key)
    loaded = open_for(settings(tiny_model[0], motion_dir, [f"{path}:{WEIGHT}"]))
    assert [l.name for l in loaded.motion_loras] == ["v2_lora_ZoomIn"] and loaded.session.loras == []
    assert "AnimateDiff's MotionLoRA layout" in loaded.motion_loras[0].layout
    # the reference: the plain motion UNet with every change merged into its weights by hand
    before = prediction(plain)
    layers = motion_layers(plain.pipe.unet)
    saved = {name: layer.weight.detach().clone() for name, layer in layers.items()}
    try:
        with torch.no_grad():
            for name, (down, up) in pairs.items():
                layers[name].weight += WEIGHT * up @ down
        merged = prediction(plain)
    finally:
        with torch.no_grad():
            for name, layer in layers.items():
                layer.weight.copy_(saved[name])
    got = prediction(loaded)
    assert (merged - before).abs().max() > 1e-3  # the LoRA changes the prediction
    torch.testing.assert_close(got, merged, atol=2e-5, rtol=1e-4)


def test_diffusers_layout_gives_what_diffusers_own_loader_gives(tiny_model, motion_dir, plain, tmp_path):
    from diffusers import AnimateDiffPipeline, MotionAdapter

    pairs = random_lora(plain.pipe.unet, seed=1)
    folder = tmp_path / "animatediff-motion-lora-zoom-in"
    folder.mkdir()
    path = write(pairs, folder / "diffusion_pytorch_model.safetensors", diffusers_key)
    ours = open_for(settings(tiny_model[0], motion_dir, [f"{path}:{WEIGHT}"]))
    pipe = AnimateDiffPipeline.from_pretrained(str(tiny_model[0]), motion_adapter=MotionAdapter.from_pretrained(
        str(motion_dir)))
    pipe.load_lora_weights(str(folder), weight_name="diffusion_pytorch_model.safetensors", adapter_name="zoom")
    pipe.set_adapters(["zoom"], [WEIGHT])
    theirs = type("Held", (), {"pipe": pipe, "session": ours.session})()  # their UNet, our prompt encoding
    torch.testing.assert_close(prediction(ours), prediction(theirs), atol=2e-5, rtol=1e-4)
    assert (prediction(ours) - prediction(plain)).abs().max() > 1e-3


def test_a_motion_lora_beside_an_image_lora_and_in_the_clips_settings(tiny_model, motion_dir, plain, tmp_path):
    """An image LoRA (on the image model, carried to the motion UNet at its weight) and a MotionLoRA together:
    each acts, the image LoRA as it does alone; the clip names both as A1111 does (tags, Lora hashes); a held
    session takes a MotionLoRA's tag out of the prompt as any other; weight 0 is the plain clip."""
    import numpy as np
    from test_generate import _lora_file

    style = _lora_file(tmp_path / "style.safetensors")
    zoom = write(random_lora(plain.pipe.unet, seed=4), tmp_path / "zoom.safetensors", animatediff_key)
    both = open_for(settings(tiny_model[0], motion_dir, [f"{style}:0.8", f"{zoom}:{WEIGHT}"]))
    assert [l.name for l in both.session.loras] == ["style"] and [l.name for l in both.motion_loras] == ["zoom"]
    alone = open_for(settings(tiny_model[0], motion_dir, [f"{style}:0.8"]))
    # the image LoRA keeps its weight on the motion UNet beside a MotionLoRA (at weight 0 here: nothing added)
    beside_off = open_for(settings(tiny_model[0], motion_dir, [f"{style}:0.8", f"{zoom}:0"]))
    torch.testing.assert_close(prediction(beside_off), prediction(alone), atol=1e-6, rtol=0)
    zoomed, styled, base = prediction(both), prediction(alone), prediction(plain)
    assert (styled - base).abs().max() > 1e-3 and (zoomed - styled).abs().max() > 1e-3
    clip = animate(settings(tiny_model[0], motion_dir, [f"{style}:0.8", f"{zoom}:{WEIGHT}"]), both)
    assert "<lora:style:0.8> <lora:zoom:0.7>" in clip.parameters and '"style: ' in clip.parameters \
        and "zoom: " in clip.parameters
    tagged = animate(settings(tiny_model[0], motion_dir, [f"{style}:0.8", f"{zoom}:{WEIGHT}"],
                              prompt="a photo of a cat <lora:zoom:0.7>"), both)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(tagged.frames, clip.frames))
    off = animate(settings(tiny_model[0], motion_dir, [f"{zoom}:0"]))
    plain_clip = animate(settings(tiny_model[0], motion_dir), plain)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(off.frames, plain_clip.frames))


def test_a_motion_lora_is_refused_for_a_picture_and_a_pickle_without_opt_in(tiny_model, motion_dir, plain,
                                                                              tmp_path, tiny_session):
    from personae.models.addons import load_loras

    pairs = random_lora(plain.pipe.unet, seed=2)
    path = write(pairs, tmp_path / "zoom.safetensors", animatediff_key)
    with pytest.raises(UserError, match="is a motion LoRA for AnimateDiff's motion modules") as err:
        load_loras(tiny_session.pipe, [(path, 1.0)])
    assert "personae animate --lora" in err.value.fix
    # the original MotionLoRAs are pickles (.ckpt): read only with --allow-pickle, then as the safetensors file
    ckpt = tmp_path / "v2_lora_PanLeft.ckpt"
    torch.save({animatediff_key(m, part): t for m, (down, up) in pairs.items()
                for part, t in (("down", down), ("up", up))}, ckpt)
    with pytest.raises(UserError, match="allow-pickle"):
        open_for(settings(tiny_model[0], motion_dir, [f"{ckpt}:1"]))
    from_pickle = open_for(settings(tiny_model[0], motion_dir, [f"{ckpt}:1"], allow_pickle=True))
    from_file = open_for(settings(tiny_model[0], motion_dir, [f"{path}:1"]))
    torch.testing.assert_close(prediction(from_pickle), prediction(from_file), atol=0, rtol=0)
    # a motion layer the adapter does not have: refused, naming the key
    extra = dict(pairs)
    first = next(iter(pairs))
    extra[first.replace("motion_modules.0", "motion_modules.7")] = tuple(t.clone() for t in pairs[first])
    bad = write(extra, tmp_path / "bad.safetensors", animatediff_key)
    with pytest.raises(UserError, match=r"motion_modules\.7\.temporal_transformer"):
        open_for(settings(tiny_model[0], motion_dir, [f"{bad}:1"]))
    # two weights for a file with no text-encoder part
    with pytest.raises(UserError, match="gives a motion LoRA two weights"):
        open_for(settings(tiny_model[0], motion_dir, [f"{path}:1:0.5"]))
