"""A1111's "Tiling": circular padding in every convolution of the UNet and the VAE, so pictures wrap around."""

import numpy as np
import pytest
import torch
from cli_runs import drawn_again, generate, made
from PIL import Image

from personae.inference.tiling import tiling_applied


def _convs(module):
    return [m for m in module.modules() if type(m) is torch.nn.Conv2d]


def test_the_unet_and_the_vae_wrap_around_under_tiling_and_only_then(tiny_session):
    """Circular padding makes the UNet and the VAE commute with a circular shift of their input (by a multiple of
    their downsampling): the left edge continues the right one. With zero padding they do not."""
    pipe = tiny_session.pipe
    unet, vae = pipe.unet, pipe.vae
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 16, 16, generator=g)
    t = torch.tensor([500])
    text = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)
    step = 2 ** (len(unet.config.block_out_channels) - 1)  # the UNet's downsampling

    def unet_shift_gap():
        with torch.no_grad():
            a = unet(torch.roll(x, step, -1), t, text).sample
            b = torch.roll(unet(x, t, text).sample, step, -1)
        return (a - b).abs().max().item()

    def vae_shift_gap():
        with torch.no_grad():
            a = vae.decode(torch.roll(x, 1, -1)).sample
            b = torch.roll(vae.decode(x).sample, pipe.vae_scale_factor, -1)
        return (a - b).abs().max().item()

    plain = unet_shift_gap(), vae_shift_gap()
    with tiling_applied((unet, vae), True):
        assert all(m.padding_mode == "circular" for m in _convs(unet) + _convs(vae))
        wrapped = unet_shift_gap(), vae_shift_gap()
    assert all(m.padding_mode == "zeros" for m in _convs(unet) + _convs(vae))  # restored after the run
    print(f"shift gap, zero padding: {plain}; circular: {wrapped}")
    assert max(wrapped) < 1e-4 and min(plain) > 1e-2
    with tiling_applied((unet, vae), False):
        assert all(m.padding_mode == "zeros" for m in _convs(unet))


@pytest.mark.slow
def test_generate_tiling_reaches_every_pass_and_the_png(tiny_model, tiny_session, tmp_path, monkeypatch):
    """--tiling pads circularly in each model call of the run (the hires fix's two passes, the VAE's decodes), writes
    A1111's "Tiling: True", and changes the picture; --from-png draws it again."""
    from personae.config.generate import GenerateSettings
    from personae.inference.txt2img import txt2img

    modes = []
    first_conv = tiny_session.pipe.unet.conv_in
    decoder_conv = tiny_session.pipe.vae.decoder.conv_in
    handles = [m.register_forward_pre_hook(lambda mod, args, _n=name: modes.append((_n, mod.padding_mode)))
               for name, m in (("unet", first_conv), ("vae", decoder_conv))]
    try:
        settings = GenerateSettings(model=str(tiny_model[0]), prompt="a tiled floor", steps=3, seed=4,
                                    hires_scale=1.5, hires_steps=2, tiling=True)
        tiled = txt2img(settings, tiny_session)[0]
    finally:
        for h in handles:
            h.remove()
    assert {name for name, _ in modes} == {"unet", "vae"} and {mode for _, mode in modes} == {"circular"}
    assert sum(name == "unet" for name, _ in modes) >= 3 + 2  # both passes
    assert "Tiling: True" in tiled.parameters
    plain = txt2img(settings.model_copy(update={"tiling": False}), tiny_session)[0]
    assert "Tiling" not in plain.parameters
    assert np.abs(np.asarray(tiled.image, dtype=np.int16) - np.asarray(plain.image, dtype=np.int16)).max() > 10
    assert all(m.padding_mode == "zeros" for m in _convs(tiny_session.pipe.unet))
    # the CLI: the flag, the PNG, and --from-png drawing the same pixels
    r = generate("--model", tiny_model[0], "--prompt", "a tiled floor", "--steps", "3", "--seed", "4", "--tiling",
                 "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert "Tiling: True" in Image.open(made(tmp_path / "out")).text["parameters"]
    drawn_again(made(tmp_path / "out"), tmp_path / "again")
