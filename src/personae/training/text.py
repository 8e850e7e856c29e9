"""Training captions through the text encoder, as generation encodes prompts (inference/prompt.py).

    encode_text(pipe, text_encoder, ["sks man, smiling, ..."], clip_skip=2, max_chunks=3)

Up to 75 tokens (CLIP's 77 with its start and end tokens), the plain encoding, cut at 75. With `max_chunks`
above 1 (train.max_token_length 150 or 225, kohya's values), a longer caption is encoded as generation encodes a
long prompt: chunks of up to 75 tokens (cut after a comma within 20 tokens of the end, as A1111 cuts them),
each between its own start and end tokens and padded to 77, encoded separately and joined, the first max_chunks
kept; captions of fewer chunks are padded with empty chunks (start, end, padding), as A1111
pads the shorter of a prompt and its negative. So the model trains on what `personae generate` (and A1111)
feed it for the same text. (kohya joins its chunks without their inner start and end tokens: 227 states for
225 tokens, where A1111 and personae give 231.)
"""

from __future__ import annotations

import torch

from personae.inference.prompt import (
    CHUNK,
    PromptEncoder,
    a1111_chunks,
    clip_states,
    embedding_spans,
    expand_embeddings,
    mean_restoring_factor,
)


def caption_tokens(pipe, caption: str) -> list[int]:
    """The caption's token ids, without start and end tokens, a multi-vector embedding's name as all its tokens."""
    ids = pipe.tokenizer(caption, add_special_tokens=False, truncation=False, verbose=False).input_ids
    return expand_embeddings(ids, embedding_spans(pipe.tokenizer))


def caption_chunks(pipe, caption: str) -> list[list[int]]:
    """The caption's tokens in chunks of up to 75, cut where generation cuts a prompt (after a comma near the end)."""
    comma = pipe.tokenizer.get_vocab().get(",</w>")
    widths = {first: len(ids) for first, ids in embedding_spans(pipe.tokenizer).items()}  # an embedding kept whole
    return [[t for t, _ in chunk] for chunk in a1111_chunks([(caption_tokens(pipe, caption), 1.0)], comma, 20, widths)]


def _row(tokenizer, chunk: list[int]) -> list[int]:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = [tokenizer.bos_token_id, *chunk, tokenizer.eos_token_id]
    return ids + [pad] * (CHUNK + 2 - len(ids))


def encode_text(pipe, text_encoder, captions: list[str], clip_skip: int = 1, max_chunks: int = 1,
                weighted: bool = False) -> torch.Tensor:
    """(captions, 77 x chunks, hidden): each caption cut at 75 x max_chunks tokens, all padded to the batch's
    longest with empty chunks. `weighted` (kohya's --weighted_captions): read as generation reads a prompt."""
    if weighted:
        return _encode_weighted(pipe, text_encoder, captions, clip_skip, max_chunks)
    device = pipe.text_encoder.device
    if max_chunks == 1:  # CLIP's own input: one chunk, cut at 75 tokens
        rows = [_row(pipe.tokenizer, caption_tokens(pipe, c)[:CHUNK]) for c in captions]
        return clip_states(text_encoder, torch.tensor(rows, device=device), clip_skip)
    chunked = [caption_chunks(pipe, c)[:max_chunks] for c in captions]
    count = max(1, *(len(c) for c in chunked))
    rows = [_row(pipe.tokenizer, c[i] if i < len(c) else []) for c in chunked for i in range(count)]
    states = clip_states(text_encoder, torch.tensor(rows, device=device), clip_skip)
    return states.reshape(len(captions), count * states.shape[1], states.shape[2])


def _encode_weighted(pipe, text_encoder, captions: list[str], clip_skip: int, max_chunks: int) -> torch.Tensor:
    """Captions with A1111's attention syntax ((word:1.2), [word], BREAK): chunked where generation chunks a prompt,
    each chunk's token states times their weights and brought back to the chunk's mean (A1111's "Original"
    emphasis, as inference/prompt.py encodes a prompt), here with gradients when the text encoder trains. kohya's
    --weighted_captions does the same within one chunk; across chunks it restores one mean for all of them."""
    reader = PromptEncoder(pipe)
    chunked = [reader.token_chunks(caption)[:max_chunks] for caption in captions]
    count = max(1, *(len(c) for c in chunked))
    rows = [c[i] if i < len(c) else [] for c in chunked for i in range(count)]
    ids = torch.tensor([_row(pipe.tokenizer, [t for t, _ in row]) for row in rows], device=pipe.text_encoder.device)
    states = clip_states(text_encoder, ids, clip_skip)
    out = []
    for z, row in zip(states, rows):
        weights = torch.tensor([1.0] + [w for _, w in row] + [1.0] * (CHUNK + 1 - len(row)), device=z.device,
                               dtype=z.dtype)
        if bool((weights != 1.0).any()):
            mean = z.mean()
            z = z * weights[:, None]
            z = z * mean_restoring_factor(mean, z)
        out.append(z)
    states = torch.stack(out)
    return states.reshape(len(captions), count * states.shape[1], states.shape[2])


def stack_padded(embeddings: list[torch.Tensor], empty: torch.Tensor) -> torch.Tensor:
    """Cached caption encodings of different chunk counts as one batch: the shorter ones padded with the empty
    chunk's states (`empty`: 77 x hidden), as encode_text pads a batch."""
    longest = max(e.shape[0] for e in embeddings)
    return torch.stack([torch.cat([e, empty.repeat((longest - e.shape[0]) // empty.shape[0], 1)])
                        if e.shape[0] < longest else e for e in embeddings])


def long_captions(pipe, captions: list[str], max_chunks: int) -> int:
    """How many of the captions need more than max_chunks chunks (the rest is cut)."""
    return sum(len(caption_chunks(pipe, c)) > max_chunks for c in set(captions))
