"""FreeU (inference/freeu.py) as ComfyUI's FreeU and FreeU_V2 nodes apply it: the change to a decoder block's
input against ComfyUI's output_block_patch written out here, the blocks it reaches on an SD-1.5-shaped UNet, the
setting end to end, and ComfyUI graphs that carry the nodes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from test_comfy_png import default_graph, read, refusal

from personae.config.generate import GenerateSettings
from personae.inference.freeu import freeu_applied, freeu_input
from personae.inference.txt2img import txt2img


def _comfy_patch(h, hsp, b, s, v2):
    """ComfyUI's output_block_patch (comfy_extras/nodes_freelunch.py) for one scale, and its Fourier_filter."""
    h = h.clone()
    if v2:
        hidden_mean = h.mean(1).unsqueeze(1)
        batch = hidden_mean.shape[0]
        hidden_max, _ = torch.max(hidden_mean.view(batch, -1), dim=-1, keepdim=True)
        hidden_min, _ = torch.min(hidden_mean.view(batch, -1), dim=-1, keepdim=True)
        hidden_mean = (hidden_mean - hidden_min.unsqueeze(2).unsqueeze(3)) / \
            (hidden_max - hidden_min).unsqueeze(2).unsqueeze(3)
        h[:, :h.shape[1] // 2] = h[:, :h.shape[1] // 2] * ((b - 1) * hidden_mean + 1)
    else:
        h[:, :h.shape[1] // 2] = h[:, :h.shape[1] // 2] * b
    x_freq = torch.fft.fftshift(torch.fft.fftn(hsp.float(), dim=(-2, -1)), dim=(-2, -1))
    _, _, rows, cols = x_freq.shape
    mask = torch.ones(x_freq.shape)
    mask[..., rows // 2 - 1:rows // 2 + 1, cols // 2 - 1:cols // 2 + 1] = s
    hsp = torch.fft.ifftn(torch.fft.ifftshift(x_freq * mask, dim=(-2, -1)), dim=(-2, -1)).real
    return torch.cat([h, hsp], dim=1)


@pytest.mark.parametrize("v2", [False, True])
def test_a_blocks_input_changes_as_comfyuis_patch_changes_it(v2):
    g = torch.Generator().manual_seed(0)
    h, skip = torch.randn(2, 12, 8, 6, generator=g), torch.randn(2, 5, 8, 6, generator=g)
    ours = freeu_input(torch.cat([h, skip], dim=1), 12, 1.4, 0.2, v2)
    assert torch.allclose(ours, _comfy_patch(h, skip, 1.4, 0.2, v2), atol=1e-6)
    assert torch.allclose(freeu_input(torch.cat([h, skip], dim=1), 12, 1.0, 1.0, v2), torch.cat([h, skip], 1),
                          atol=1e-5)  # 1 and 1: nothing changes


def test_the_blocks_are_comfyuis_by_their_channels():
    """An SD-1.5-shaped UNet (its channels / 10, one resnet a level): B1 where the backbone has 4x the first
    block's channels, B2 where 2x, the last level untouched; diffusers' own FreeU would pick up blocks 0 and 1."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(32, 64, 128, 128), layers_per_block=1, cross_attention_dim=16,
                                attention_head_dim=2, norm_num_groups=8, sample_size=16).eval()
    seen: dict[tuple[int, int], list] = {}

    def spy(key, when):
        def hook(module, args, kwargs):
            seen.setdefault(key, [None, None])[when] = args[0].clone()
        return hook

    handles = [r.register_forward_pre_hook(spy((i, j), 0), with_kwargs=True)
               for i, block in enumerate(unet.up_blocks) for j, r in enumerate(block.resnets)]
    x, t, text = torch.randn(1, 4, 16, 16), torch.tensor([500]), torch.randn(1, 7, 16)
    with torch.no_grad(), freeu_applied(unet, "1.5,1.25,0.5,0.25"):
        handles += [r.register_forward_pre_hook(spy((i, j), 1), with_kwargs=True)
                    for i, block in enumerate(unet.up_blocks) for j, r in enumerate(block.resnets)]
        unet(x, t, encoder_hidden_states=text)
    for handle in handles:
        handle.remove()
    hidden = {(0, 0): 128, (0, 1): 128, (1, 0): 128, (1, 1): 128, (2, 0): 128, (2, 1): 64, (3, 0): 64, (3, 1): 32}
    for key, (before, after) in seen.items():
        scale = {128: (1.5, 0.5), 64: (1.25, 0.25)}.get(hidden[key])
        want = before if scale is None else _comfy_patch(before[:, :hidden[key]], before[:, hidden[key]:], *scale,
                                                         False)
        assert torch.allclose(after, want, atol=1e-5), key
    assert not unet._forward_pre_hooks and not any(r._forward_pre_hooks for b in unet.up_blocks for r in b.resnets)


def test_the_setting_draws_and_reproduces(tiny_model, tiny_session, tmp_path):
    from PIL.PngImagePlugin import PngInfo

    from personae.jobs.generate import settings_from_png

    base = {"model": str(tiny_model[0]), "prompt": "a photo of a cat", "steps": 3, "seed": 4, "width": 64,
            "height": 64}
    px = lambda r: np.asarray(r.image, dtype=np.int16)  # noqa: E731
    plain = txt2img(GenerateSettings(**base), tiny_session)[0]
    freeu = txt2img(GenerateSettings(**base, freeu="1.3, 1.4, 0.9, 0.2", freeu_v2=True), tiny_session)[0]
    assert np.abs(px(freeu) - px(plain)).max() > 5
    assert 'FreeU: "1.3,1.4,0.9,0.2", FreeU V2: True' in freeu.parameters  # quoted: it holds commas
    ones = txt2img(GenerateSettings(**base, freeu="1,1,1,1"), tiny_session)[0]
    assert np.abs(px(ones) - px(plain)).max() <= 1
    info = PngInfo()
    info.add_text("parameters", freeu.parameters)  # A1111's text alone
    freeu.image.save(tmp_path / "f.png", pnginfo=info)
    stored = settings_from_png(tmp_path / "f.png")
    assert (stored["freeu"], stored["freeu_v2"]) == ("1.3,1.4,0.9,0.2", True)
    with pytest.raises(ValueError, match="four numbers from 0 to 10"):
        GenerateSettings(**base, freeu="1.3,1.4")


def test_comfyuis_freeu_nodes_on_the_model_are_read(tmp_path):
    graph = default_graph()
    graph["30"] = {"class_type": "FreeU_V2", "inputs": {"model": ["4", 0], "b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2}}
    graph["3"]["inputs"]["model"] = ["30", 0]
    data = read(tmp_path, graph)
    assert (data["freeu"], data["freeu_v2"]) == ("1.3,1.4,0.9,0.2", True)
    graph["30"]["class_type"] = "FreeU"
    assert read(tmp_path, graph)["freeu_v2"] is False
    graph["31"] = {"class_type": "FreeU", "inputs": {"model": ["30", 0], "b1": 1.1, "b2": 1.2, "s1": 0.9, "s2": 0.2}}
    graph["3"]["inputs"]["model"] = ["31", 0]
    assert "applies FreeU twice on the model" in refusal(tmp_path, graph)
