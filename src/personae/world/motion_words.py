"""Learnt embeddings for the motion words, trained with the motion modules on a leash.

    ids = add_motion_words(pipe, seed=0)            # "moving left" ... "still" become one token each
    limit = world_norm(pipe)                        # the mean norm of the trained world tokens' embeddings
    leash(pipe.text_encoder, ids, limit * s.words.max_norm)   # after every step
    write_motion_words(pipe, ids, out / WORDS_DIR)  # one A1111 embedding per motion, named by its words

The shipped tokenizer splits a motion phrase into characters whose embeddings pretraining never trained, and the
frozen UNet barely reads them. Here each phrase becomes one new token (a textual-inversion vector, the way
`personae generate --embedding FILE:TOKEN` adds one) learnt jointly with the motion modules. Unleashed (lr 5e-3)
the vectors took over the caption (identity 9 %, docs/world.md): they are learnt at a lower rate and held to at
most `max_norm` times the mean norm of the world tokens' trained embeddings after every step.
"""

from __future__ import annotations

from pathlib import Path

import torch

from personae.models.folders import save_safetensors
from personae.world.clips import MOTION_WORDS
from personae.world.vocab import COLOURS, SIZES, TRAINED


def add_motion_words(pipe, seed: int) -> list[int]:
    """One new token per motion phrase, its vector the mean of the phrase's character embeddings (plus a seeded
    1 % jitter so no two start alike). Returns the tokens' ids, in `MOTION_WORDS` order."""
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    phrases = list(MOTION_WORDS.values())
    parts = {p: tokenizer(p, add_special_tokens=False).input_ids for p in phrases}
    tokenizer.add_tokens(phrases)
    encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # the rows are set below
    ids = tokenizer.convert_tokens_to_ids(phrases)
    table = encoder.get_input_embeddings().weight
    gen = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        for phrase, i in zip(phrases, ids):
            start = table[parts[phrase]].mean(0)
            table[i] = start + 0.01 * start.norm() * torch.randn(start.shape, generator=gen) / start.numel() ** 0.5
    return ids


def world_norm(pipe) -> float:
    """The mean norm of the trained embeddings of the words a world caption is made of (colours, shapes, sizes,
    "a", "on", "background": tokens pretraining trained)."""
    words = [*COLOURS, *TRAINED, *SIZES, "a", "on", "background", ","]
    ids = sorted(set(pipe.tokenizer(" ".join(words), add_special_tokens=False).input_ids))
    table = pipe.text_encoder.get_input_embeddings().weight.detach()
    return float(table[ids].norm(dim=1).mean())


def only_rows(table: torch.nn.Parameter, ids: list[int]) -> None:
    """Gradients reach only the new tokens' rows of the embedding table (AdamW then leaves the others unchanged)."""
    mask = torch.zeros(len(table), 1)
    mask[ids] = 1.0
    table.register_hook(lambda grad: grad * mask)


def leash(encoder, ids: list[int], limit: float) -> None:
    """Scale each new vector back to norm `limit` when it grew past it."""
    table = encoder.get_input_embeddings().weight
    with torch.no_grad():
        norms = table[ids].norm(dim=1, keepdim=True)
        table[ids] = table[ids] * torch.clamp(limit / norms, max=1.0)


def caption_token_ids(tokenizer, captions: list[str]) -> torch.Tensor:
    """Each caption as the prompt encoder feeds it to the text encoder (begin, tokens, end, padding to 77)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = []
    for caption in captions:
        words = tokenizer(caption, add_special_tokens=False).input_ids
        ids = [tokenizer.bos_token_id] + words + [tokenizer.eos_token_id]
        rows.append(ids + [pad] * (tokenizer.model_max_length - len(ids)))
    return torch.tensor(rows)


def write_motion_words(pipe, ids: list[int], folder: Path) -> list[Path]:
    """One A1111 embedding (`emb_params`) per motion phrase, the file named by the phrase (A1111's token rule), so
    `--embedding "DIR/moving left.safetensors"` adds the token "moving left"."""
    folder.mkdir(parents=True, exist_ok=True)
    table = pipe.text_encoder.get_input_embeddings().weight.detach()
    paths = []
    for phrase, i in zip(MOTION_WORDS.values(), ids):
        paths.append(save_safetensors({"emb_params": table[i:i + 1].to("cpu", torch.float32).clone().contiguous()},
                                      folder / f"{phrase}.safetensors", {"name": phrase}))
    return paths
