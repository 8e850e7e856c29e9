"""A picture with NaNs stops the run with its likely cause (A1111's NansException), never a black PNG with exit 0."""

import pytest
import torch
from safetensors.torch import save_file

from personae.cli.main import main
from personae.config.generate import GenerateSettings
from personae.errors import UserError
from personae.inference.prompt import PromptEncoder
from personae.inference.session import open_session
from personae.inference.txt2img import txt2img


def settings(model, **kw):
    return GenerateSettings(**{"model": str(model), "prompt": "a photo of a cat", "steps": 2, "seed": 7,
                               "width": 64, "height": 64, **kw})


def _nan_lora(pipe, path):
    """A kohya LoRA on one attention projection whose up weights are partly NaN (as a diverged training writes)."""
    tensors = {}
    for name, module in pipe.unet.named_modules():
        if name.endswith("attn1.to_q"):
            key = "lora_unet_" + name.replace(".", "_")
            up = torch.randn(module.out_features, 2)
            up[0, 0] = float("nan")
            tensors |= {f"{key}.lora_down.weight": torch.randn(2, module.in_features), f"{key}.lora_up.weight": up,
                        f"{key}.alpha": torch.tensor(2.0)}
    save_file(tensors, str(path))
    return path


def test_nan_from_the_unet_names_the_lora_and_saves_nothing(tiny_model, tiny_session, tmp_path, capsys):
    lora = _nan_lora(tiny_session.pipe, tmp_path / "burnt.safetensors")
    session = open_session(str(tiny_model[0]), device="cpu", loras=[(str(lora), 0.8)])
    with pytest.raises(UserError, match="UNet produced NaNs") as err:
        txt2img(settings(tiny_model[0]), session)
    assert "burnt at 0.8" in str(err.value) and "NansException" in str(err.value)
    code = main(["generate", "--model", str(tiny_model[0]), "--prompt", "x", "--steps", "2", "--lora", f"{lora}:0.8",
                 "--quiet", "--out", str(tmp_path / "out")])
    assert code == 2 and "UNet produced NaNs" in capsys.readouterr().err
    assert not list((tmp_path / "out").glob("*.png"))


def test_partial_nan_in_a_unet_weight_is_caught(tiny_model):
    session = open_session(str(tiny_model[0]), device="cpu")
    with torch.no_grad():
        session.pipe.unet.conv_out.bias[1] = float("nan")  # one latent channel NaN: a partly NaN picture
    with pytest.raises(UserError, match=r"UNet produced NaNs \(25% NaN\)"):
        txt2img(settings(tiny_model[0]), session)


def test_nan_from_the_vae_says_to_use_an_fp32_vae(tiny_model):
    session = open_session(str(tiny_model[0]), device="cpu")
    with torch.no_grad():
        session.pipe.vae.decoder.conv_out.bias.fill_(float("nan"))
    with pytest.raises(UserError, match=r"VAE produced NaNs \(all NaN\) when decoding finite latents") as err:
        txt2img(settings(tiny_model[0]), session)
    assert "--vae" in str(err.value)
    # the hooks are gone after the call: the modules are left as they were
    assert not session.pipe.unet._forward_hooks and not session.pipe.vae.decoder._forward_hooks


def test_the_demos_long_weighted_prompt_encodes_to_finite_values(tiny_session):
    """The emphasis rescale divided by a ~0 mean (the demo's long weighted prompt gave a black clip)."""
    prompt = ", ".join(f"({word}:{1 + i / 10:g})" for i, word in enumerate(
        "portrait of a smiling woman with red hair in a garden at golden hour, film grain, bokeh".split())) * 3
    negative = "(worst quality:1.4), (low quality:1.4), [blurry], ((lowres))"
    pos, neg = PromptEncoder(tiny_session.pipe).encode_pair(prompt, negative)
    assert pos.chunks > 1 and torch.isfinite(pos.embeds).all() and torch.isfinite(neg.embeds).all()
    out = txt2img(settings("unused", prompt=prompt, negative=negative), tiny_session)[0]
    assert "Steps: 2" in out.parameters
