"""Where a prompt past 75 tokens is cut into chunks (inference/prompt.py): A1111's tokenize_line, with its comma
backtrack ("Prompt word wrap length limit", 20), and ComfyUI's tokenizer for emphasis "ComfyUI". Each against the
algorithm written out here from its source, on the tiny model's CLIP tokenizer (the real vocabulary)."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from personae.inference.prompt import parse_attention

LONG = ", ".join(["a red house by the sea"] * 14)  # 97 tokens, a comma every 7
PROMPTS = [
    LONG,
    "masterpiece, best quality, " + " ".join(["red"] * 60) + ", a cat, " + " ".join(["blue"] * 30),
    "a cat, " + " ".join(["red"] * 51) + ", x " + " ".join(["green"] * 30),  # the comma 21 back: too far
    "a cat, " + " ".join(["red"] * 52) + ", x " + " ".join(["green"] * 30),  # 20 back: moved
    "(a red house:1.3), " * 12 + "BREAK, a cat " + ", (dog:0.8)" * 40,
    "short, prompt",
]


def _a1111(encoder, prompt, backtrack=20, embedding=None):
    """modules/sd_hijack_clip.py, tokenize_line: a chunk full at 75 with a comma at most `backtrack` back moves the
    tokens after the comma on; BREAK starts a chunk. An embedding (name, vectors): its first token passes the comma
    and full checks, then its vectors go in whole, in the next chunk when they do not fit."""
    comma = encoder.tokenizer.get_vocab()[",</w>"]
    name, vectors = embedding or ("", 1)
    span = encoder.tokenizer.convert_tokens_to_ids([name] + [f"{name}_{i}" for i in range(1, vectors)]) \
        if embedding else []
    chunks, chunk, last_comma = [], [], -1
    for text, weight in parse_attention(prompt):
        if weight == -1:
            chunks.append(chunk)
            chunk, last_comma = [], -1
            continue
        ids = [t for token in encoder.tokenizer(text, add_special_tokens=False).input_ids
               for t in (span if span and token == span[0] else [token])]
        position = 0
        while position < len(ids):
            token = ids[position]
            if token == comma:
                last_comma = len(chunk)
            elif backtrack and len(chunk) == 75 and last_comma != -1 and len(chunk) - last_comma <= backtrack:
                chunks.append(chunk[:last_comma + 1])
                chunk, last_comma = chunk[last_comma + 1:], -1
            if len(chunk) == 75:
                chunks.append(chunk)
                chunk, last_comma = [], -1
            width = vectors if span and token == span[0] else 1
            if len(chunk) + width > 75:
                chunks.append(chunk)
                chunk, last_comma = [], -1
            chunk += [(t, weight) for t in ids[position:position + width]]
            position += width
    return chunks + [chunk] if chunk or not chunks else chunks


def _comfy(encoder, prompt):
    """comfy/sd1_clip.py, SDTokenizer.tokenize_with_weights: groups of one weight; a group that does not fit is cut
    at the end of the chunk when it has max_word_length (8) tokens or more, else moves on whole."""
    batches, batch = [], []
    for text, weight in parse_attention(prompt):
        if weight == -1:
            batches.append(batch)
            batch = []
            continue
        group = [(t, weight) for t in encoder.tokenizer(text, add_special_tokens=False).input_ids]
        is_large = len(group) >= 8
        while group:
            if len(group) + len(batch) > 75:
                remaining = 75 - len(batch)
                if is_large:
                    batch += group[:remaining]
                    group = group[remaining:]
                batches.append(batch)
                batch = []
            else:
                batch += group
                group = []
    return batches + [batch]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_chunks_are_cut_where_a1111_and_comfyui_cut_them(tiny_session, prompt):
    encoder = tiny_session.encoder
    assert encoder.token_chunks(prompt) == _a1111(encoder, prompt)
    assert encoder.token_chunks(prompt, backtrack=0) == _a1111(encoder, prompt, backtrack=0)
    assert encoder.token_chunks(prompt, emphasis="ComfyUI") == _comfy(encoder, prompt)


def test_the_cut_moves_where_a_comma_is_near(tiny_session):
    encoder = tiny_session.encoder
    cut = [len(c) for c in encoder.token_chunks(LONG)]
    assert cut == [70, 27] and [len(c) for c in encoder.token_chunks(LONG, backtrack=0)] == [75, 22]
    assert encoder.token_chunks(LONG)[0][-1][0] == encoder.tokenizer.get_vocab()[",</w>"]  # the cut after a comma
    far, near = PROMPTS[2], PROMPTS[3]
    assert len(encoder.token_chunks(far)[0]) == 75 and len(encoder.token_chunks(near)[0]) == 56
    assert (encoder.encode(LONG).embeds - encoder.encode(LONG, backtrack=0).embeds).abs().max() > 1e-3


def test_personaes_older_pngs_keep_the_cut_at_75(tiny_model, tiny_session, tmp_path):
    """A PNG whose settings do not say comma_backtrack was drawn before personae cut at commas: read as 0. A new one
    says 20, and reproduces."""
    from personae.config.generate import GenerateSettings
    from personae.inference.txt2img import txt2img
    from personae.jobs.generate import settings_from_png

    drawn = txt2img(GenerateSettings(model=str(tiny_model[0]), prompt=LONG, steps=2, seed=1, width=64, height=64),
                    tiny_session)[0]
    stored = drawn.settings.model_dump(mode="json")
    assert stored["comma_backtrack"] == 20
    for name, data in (("new", stored), ("old", {k: v for k, v in stored.items() if k != "comma_backtrack"})):
        info = PngInfo()
        info.add_text("personae", json.dumps(data))
        Image.new("RGB", (8, 8)).save(tmp_path / f"{name}.png", pnginfo=info)
    assert settings_from_png(tmp_path / "new.png")["comma_backtrack"] == 20
    assert settings_from_png(tmp_path / "old.png")["comma_backtrack"] == 0


def test_a_multi_vector_embedding_stays_whole_in_a_chunk(tiny_model, tmp_path):
    """A1111 puts an embedding's vectors in one chunk (the next one when they do not fit); ComfyUI makes it a group
    of its own (an 8-vector one is cut at 75, being 8 tokens long)."""
    import torch
    from safetensors.torch import save_file

    from personae.inference.session import open_session

    width = 32
    save_file({"emb_params": torch.randn(8, width) * 0.1}, str(tmp_path / "EasyNegative.safetensors"))
    encoder = open_session(str(tiny_model[0]), device="cpu",
                           embeddings=[(str(tmp_path / "EasyNegative.safetensors"), None)]).encoder
    assert encoder.text_encoder.get_input_embeddings().weight.shape[1] == width
    # all 8 vectors, whatever the case the prompt writes the name in (diffusers' maybe_convert_prompt, which
    # personae used before, missed a name with capitals and gave the first vector alone)
    vectors = encoder.tokenizer.convert_tokens_to_ids(["EasyNegative"] + [f"EasyNegative_{i}" for i in range(1, 8)])
    for text in ("EasyNegative", "easynegative", "a, EasyNegative, b"):
        assert [t for t, _ in encoder.token_chunks(text)[0] if t in vectors] == vectors, text
    from personae.training.text import caption_tokens

    assert [t for t in caption_tokens(encoder.pipe, "sks man, EasyNegative") if t in vectors] == vectors
    from personae.training.text import caption_chunks

    caption = " ".join(["red"] * 70) + " EasyNegative, green"  # training cuts a long caption where generation does
    assert caption_chunks(encoder.pipe, caption) == [[t for t, _ in c] for c in encoder.token_chunks(caption)]
    assert [len(c) for c in caption_chunks(encoder.pipe, caption)] == [70, 10]
    for red in (68, 69, 70, 73):  # the embedding fits, is cut at 75, starts the next chunk
        prompt = " ".join(["red"] * red) + " EasyNegative green blue"
        got = encoder.token_chunks(prompt, backtrack=0)
        assert got == _a1111(encoder, prompt, 0, ("EasyNegative", 8)), red
        assert len(got[0]) == (red + 8 if red + 8 <= 75 else red)
        assert got == encoder.token_chunks(prompt)  # no comma: the backtrack changes nothing
        comfy = encoder.token_chunks(prompt, emphasis="ComfyUI")
        assert [len(c) for c in comfy] == ([75, red + 8 + 2 - 75] if red + 8 > 75 else [red + 10]), red
    prompt = "a cat, " + " ".join(["red"] * 60) + " EasyNegative, " + " ".join(["green"] * 10)
    assert encoder.token_chunks(prompt) == _a1111(encoder, prompt, 20, ("EasyNegative", 8))
