"""A1111 prompt syntax, chunking of long prompts and clip skip, checked against diffusers' own encoder."""

import pytest
import torch

from personae.inference.prompt import CHUNK, PromptEncoder, parse_attention


@pytest.mark.parametrize("text,expected", [
    ("a (cat:1.3) on [mat]", [("a ", 1.0), ("cat", 1.3), (" on ", 1.0), ("mat", 1 / 1.1)]),
    ("((x))", [("x", 1.1 * 1.1)]),
    ("[[x]]", [("x", 1 / 1.1 / 1.1)]),
    ("(a (b:2))", [("a ", 1.1), ("b", 2.2)]),
    (r"a \(b\) c", [("a (b) c", 1.0)]),
    ("a:b, c", [("a:b, c", 1.0)]),
    ("(open", [("open", 1.1)]),
    ("one BREAK two", [("one", 1.0), ("BREAK", -1.0), ("two", 1.0)]),
    ("", [("", 1.0)]),
])
def test_parse_attention(text, expected):
    got = parse_attention(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])


def test_plain_prompt_matches_diffusers_encode_prompt(tiny_session):
    pipe = tiny_session.pipe
    ours = PromptEncoder(pipe).encode("a photo of a cat").embeds
    theirs, _ = pipe.encode_prompt("a photo of a cat", "cpu", 1, False)
    assert torch.equal(ours, theirs)


def test_clip_skip_2_is_the_penultimate_layer_through_the_final_norm(tiny_session):
    """Computed directly: diffusers 0.42's own clip_skip path reads `.text_model`, which transformers 5
    no longer has (AttributeError), one more reason the encoder is ours."""
    pipe = tiny_session.pipe
    ours = PromptEncoder(pipe).encode("a photo of a cat", clip_skip=2).embeds
    ids = pipe.tokenizer("a photo of a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    hidden = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
    assert torch.equal(ours, pipe.text_encoder.final_layer_norm(hidden))
    assert not torch.equal(ours, PromptEncoder(pipe).encode("a photo of a cat").embeds)


def test_weight_scales_only_the_weighted_tokens_then_keeps_the_mean(tiny_session):
    enc = PromptEncoder(tiny_session.pipe)
    plain = enc.encode("a photo of a cat").embeds[0]
    weighted = enc.encode("a photo of a (cat:1.5)").embeds[0]
    assert torch.equal(enc.encode("a photo of a (cat:1.0)").embeds[0], plain)
    ratio = weighted / plain  # = 1.5 * c at the "cat" token (position 5), c elsewhere
    c = ratio[0].mean()
    assert torch.allclose(ratio[[0, 1, 2, 3, 4, 6, 7]], c.expand(7, plain.shape[1]), atol=1e-4)
    assert torch.allclose(ratio[5], (1.5 * c).expand(plain.shape[1]), atol=1e-4)
    assert torch.isclose(weighted.mean(), plain.mean(), atol=1e-6)
    down = enc.encode("a photo of a [cat]").embeds[0] / plain
    assert torch.allclose(down[5], (down[0].mean() / 1.1).expand(plain.shape[1]), atol=1e-4)


def test_long_prompt_is_chunked_not_truncated(tiny_session):
    enc = PromptEncoder(tiny_session.pipe)
    words = " ".join(f"word{i}" for i in range(60))  # each "wordN" is several tokens: > 75 in all
    tokens = enc.token_chunks(words)
    n_tokens = sum(len(c) for c in tokens)
    assert n_tokens > CHUNK and len(tokens) == -(-n_tokens // CHUNK)
    out = enc.encode(words)
    assert out.embeds.shape[1] == 77 * out.chunks and out.tokens == n_tokens
    # the second chunk carries the tail: changing only the last word changes only the second chunk
    other = enc.encode(words.replace("word59", "zebra"))
    assert torch.equal(out.embeds[:, :77], other.embeds[:, :77])
    assert not torch.equal(out.embeds[:, 77:], other.embeds[:, 77:])


def test_break_starts_a_new_chunk_and_negative_is_padded_to_match(tiny_session):
    enc = PromptEncoder(tiny_session.pipe)
    assert enc.encode("a cat BREAK a dog").chunks == 2
    pos, neg = enc.encode_pair("a cat BREAK a dog", "blurry")
    assert pos.embeds.shape == neg.embeds.shape == (1, 154, 32)
    assert torch.equal(neg.embeds[:, 77:], enc.encode("").embeds)


def test_weight_rescale_keeps_a1111_mean_and_never_explodes_on_a_zero_mean():
    """A1111 restores the chunk mean after weighting; an output whose mean is ~0 (layer norm, zero bias: the tiny
    model) made that ratio inf and the image black (seen in the long weighted-prompt animate test)."""
    import torch

    from personae.inference.prompt import mean_restoring_factor

    z = torch.full((1, 4, 3), 0.5)
    weighted = z * torch.tensor([1.0, 1.3, 1.0, 1.0])[None, :, None]
    factor = mean_restoring_factor(z.mean(), weighted)
    assert torch.isclose((weighted * factor).mean(), z.mean())  # A1111's rule where the mean means something
    centred = torch.tensor([[[1.0, -1.0, 0.0], [0.5, -0.5, 0.0]]])
    assert mean_restoring_factor(centred.mean(), centred * 1.3) == 1.0  # mean ~0: kept as weighted, no inf
