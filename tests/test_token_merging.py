"""A1111's "Token merging ratio" (ToMe through tomesd, applied with A1111's arguments) in generate."""

import numpy as np
import pytest
import torch
from cli_runs import drawn_again, generate, made
from PIL import Image

from personae.inference.token_merging import token_merged


def _token_counts(unet, run):
    """{(block, which attention): token counts seen} while `run()` calls the UNet."""
    seen, handles = {}, []
    for name, module in unet.named_modules():
        if name.endswith("attn1") or name.endswith("attn2"):
            def note(mod, args, kwargs, _name=name):
                seen.setdefault(_name, []).append((args[0] if args else kwargs["hidden_states"]).shape[1])
            handles.append(module.register_forward_pre_hook(note, with_kwargs=True))
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return seen


def test_tokens_merge_in_the_full_resolution_self_attention_only_and_deterministically(tiny_session):
    """A1111's call: merge_attn only (cross-attention and the MLP see every token), the full-resolution blocks only
    (max_downsample 1), no random destinations: the same output twice; unpatched after, the UNet as before."""
    unet = tiny_session.pipe.unet
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 16, 16, generator=g)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    t = torch.tensor([400])

    def call():
        with torch.no_grad():
            return unet(x, t, text).sample

    plain = call()
    with token_merged(unet, 0.5):
        counts = _token_counts(unet, call)
        merged, again = call(), call()
    torch.testing.assert_close(call(), plain, rtol=0, atol=0)  # unpatched
    assert not any(type(m).__name__ == "ToMeBlock" for m in unet.modules())
    torch.testing.assert_close(merged, again, rtol=0, atol=0)
    assert (merged - plain).abs().max() > 1e-3
    full = 16 * 16
    for name, sizes in counts.items():  # every call's token count, by block
        level = 0 if name.startswith(("down_blocks.0", "up_blocks.3")) else 1
        tokens = full // 4 ** (level if not name.startswith(("down_blocks.2", "mid", "up_blocks.1")) else 2)
        tokens = 4 if name.startswith("mid") else tokens
        merged_here = level == 0 and name.endswith("attn1")  # full resolution, self-attention: merged
        assert set(sizes) == {tokens - int(tokens * 0.5) if merged_here else tokens}, (name, sizes)
    assert sum(n.endswith("attn1") and n.startswith(("down_blocks.0", "up_blocks.3")) for n in counts) == 3
    with token_merged(unet, 0.0):
        torch.testing.assert_close(call(), plain, rtol=0, atol=0)


@pytest.mark.slow
def test_generate_merges_tokens_in_each_pass_at_its_ratio_and_writes_a1111s_keys(tiny_model, tiny_session, tmp_path):
    from personae.config.generate import GenerateSettings
    from personae.inference.txt2img import txt2img

    unet = tiny_session.pipe.unet
    settings = GenerateSettings(model=str(tiny_model[0]), prompt="a red cube", steps=3, seed=4, width=64, height=64,
                                hires_scale=2.0, hires_steps=2, hires_denoise=0.6, token_merging=0.5,
                                hires_token_merging=0.25)
    out = {}
    counts = _token_counts(unet, lambda: out.setdefault("image", txt2img(settings, tiny_session)[0]))
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    first, second = 8 * 8, 16 * 16  # the first pass's and the redraw's full-resolution token counts
    assert set(counts[name]) == {first - int(first * 0.5), second - int(second * 0.25)}
    text = out["image"].parameters
    assert "Token merging ratio: 0.5" in text and "Token merging ratio hr: 0.25" in text
    same = txt2img(settings.model_copy(update={"hires_token_merging": 0.0}), tiny_session)[0]
    assert "Token merging ratio hr: 0.5" in same.parameters  # A1111 writes the redraw's ratio, the picture's here
    plain = txt2img(settings.model_copy(update={"token_merging": 0.0, "hires_token_merging": 0.0}), tiny_session)[0]
    assert "Token merging" not in plain.parameters
    assert np.abs(np.asarray(plain.image, np.int16) - np.asarray(same.image, np.int16)).max() > 0


@pytest.mark.slow
def test_the_cli_takes_token_merging_and_from_png_draws_it_again(tiny_model, tmp_path):
    r = generate("--model", tiny_model[0], "--prompt", "a red cube", "--steps", "3", "--seed", "2",
                 "--token-merging", "0.3", "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert "Token merging ratio: 0.3" in Image.open(made(tmp_path / "out")).text["parameters"]
    drawn_again(made(tmp_path / "out"), tmp_path / "again")
    r = generate("--model", tiny_model[0], "--prompt", "x", "--hires-token-merging", "0.3", "--out", tmp_path / "no")
    assert r.returncode == 2 and "hires_token_merging" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "no").exists()
