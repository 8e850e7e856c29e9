"""Prompts as AUTOMATIC1111 reads them: attention weights, any length, clip skip.

- `(word)` multiplies attention by 1.1, `[word]` divides by 1.1, `(word:1.3)` sets 1.3
  (nesting multiplies), `\\(` is a literal bracket, `BREAK` starts a new 75-token chunk.
- A prompt longer than 75 tokens is not cut: it is split into chunks of 75, each
  encoded as its own 77-token sequence, and the embeddings are concatenated, as A1111
  does. The UNet's cross-attention takes any sequence length.
- Weights scale the token embeddings, then the chunk is rescaled to keep its mean (A1111's "Emphasis":
  Original; "No norm" skips the rescale, "None" ignores the weights), so `(word:1.0)` equals `word`. "ComfyUI"
  is ComfyUI's CLIPTextEncode: a weighted token's embedding becomes empty + w x (token - empty), `empty` the
  empty prompt's embedding at the same place.
- Clip skip K uses the K-th hidden state from the end, passed through the final layer
  norm (K=1 is the normal output).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from personae.config.prompt_travel import split_travel, travel_around
from personae.data.styles import apply_styles


def mean_restoring_factor(original_mean: torch.Tensor, weighted: torch.Tensor) -> torch.Tensor | float:
    """A1111's rescale after weighting: original mean / weighted mean. A text encoder whose output mean is
    about zero (a layer-normed output with zero bias, as small or untrained models give) turns that ratio
    into inf / NaN and the image black; there the mean says nothing and the weighted embeddings are kept."""
    new_mean = weighted.mean()
    scale = weighted.abs().mean()
    if new_mean.abs() <= 1e-3 * scale or original_mean.abs() <= 1e-3 * scale:
        return 1.0
    factor = original_mean / new_mean
    return factor if bool(torch.isfinite(factor)) and 0.1 <= float(factor) <= 10.0 else 1.0

CHUNK = 75  # tokens per chunk, plus begin and end tokens = CLIP's 77
_TOKEN = re.compile(r"\\[()\[\]\\]|\(|\[|:\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)|\)|\]|[^\\()\[\]:]+|:|\\")
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


def parse_attention(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) runs; "BREAK" comes out as its own run with weight -1."""
    runs: list[list] = []
    round_starts: list[int] = []
    square_starts: list[int] = []

    def scale(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] *= factor

    for match in _TOKEN.finditer(text):
        tok, weight = match.group(0), match.group(1)
        if tok.startswith("\\") and len(tok) == 2:
            runs.append([tok[1], 1.0])
        elif tok == "(":
            round_starts.append(len(runs))
        elif tok == "[":
            square_starts.append(len(runs))
        elif weight is not None and round_starts:
            scale(round_starts.pop(), float(weight))
        elif tok == ")" and round_starts:
            scale(round_starts.pop(), 1.1)
        elif tok == "]" and square_starts:
            scale(square_starts.pop(), 1 / 1.1)
        else:
            parts = _BREAK.split(tok)
            for i, part in enumerate(parts):
                if i:
                    runs.append(["BREAK", -1.0])
                if part:
                    runs.append([part, 1.0])
    for start in round_starts:  # unclosed brackets still count, as in A1111
        scale(start, 1.1)
    for start in square_starts:
        scale(start, 1 / 1.1)
    merged: list[list] = []
    for text_run, weight in runs:
        if merged and merged[-1][1] == weight and weight != -1.0:
            merged[-1][0] += text_run
        else:
            merged.append([text_run, weight])
    return [(t, w) for t, w in merged] or [("", 1.0)]


def with_styles(settings):
    """Settings (GenerateSettings or AnimateSettings) with their A1111 styles applied to the prompt and negative
    prompt, and no styles left to apply: what is written to the PNG and read back from it."""
    if not settings.styles:
        return settings
    if hasattr(settings, "frames") and split_travel(settings.prompt):  # a clip's travelling prompt: every keyframe
        marker = "\x00"  # where the prompt goes in the styles, read off one application
        styled, negative = apply_styles(marker, settings.negative, settings.styles, settings.styles_file)
        before, _, after = styled.partition(marker)
        prompt = travel_around(settings.prompt, before, after)
    else:
        prompt, negative = apply_styles(settings.prompt, settings.negative, settings.styles, settings.styles_file)
    return settings.model_copy(update={"prompt": prompt, "negative": negative, "styles": [], "styles_file": None})

def clip_states(text_encoder, ids: torch.Tensor, clip_skip: int = 1) -> torch.Tensor:
    """CLIP's token states for `ids`, `clip_skip` layers from the end as A1111's "Clip skip" and kohya's --clip_skip
    take them: 1 is the last layer's output (after the final layer norm); 2 the layer before it, through the same
    final layer norm."""
    out = text_encoder(ids, output_hidden_states=clip_skip > 1)
    if clip_skip == 1:
        return out[0]
    final_norm = getattr(text_encoder, "final_layer_norm", None)
    if final_norm is None:  # transformers < 5 nests the modules under .text_model
        final_norm = text_encoder.text_model.final_layer_norm
    return final_norm(out.hidden_states[-clip_skip])


@dataclass
class EncodedPrompt:
    embeds: torch.Tensor  # [1, 77 * chunks, hidden]
    chunks: int
    tokens: int  # prompt tokens, without begin/end/padding
    own_chunks: int = 0  # chunks of the text itself, before padding to the other prompt's (0: all of them)

    @property
    def own_length(self) -> int:
        """The embeddings' length without the empty chunks padded on (A1111 without "Pad conds")."""
        return self.embeds.shape[1] // self.chunks * (self.own_chunks or self.chunks)


class PromptEncoder:
    """Encodes prompts for one pipeline (its tokenizer, text encoder and loaded embeddings)."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.tokenizer = pipe.tokenizer
        self.text_encoder = pipe.text_encoder

    def token_chunks(self, prompt: str, backtrack: int = 20, emphasis: str = "Original"
                     ) -> list[list[tuple[int, float]]]:
        """(token id, weight) lists of at most 75 tokens each, cut where A1111 cuts them (tokenize_line): when a chunk
        is full and a comma lies at most `backtrack` tokens back (A1111's "Prompt word wrap length limit", 20 unless
        changed; 0: at 75 exactly), the tokens after it start the next chunk. Emphasis "ComfyUI": where ComfyUI's
        tokenizer cuts (comfy/sd1_clip.py): each run of one weight is a group, a group of 8 tokens or more is cut at
        75, a shorter one that does not fit moves whole to the next chunk."""
        spans = embedding_spans(self.tokenizer)
        runs = []
        for text, weight in parse_attention(prompt):
            ids = [] if weight == -1.0 else expand_embeddings(
                self.tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids, spans)
            runs.append((ids, weight))
        widths = {first: len(ids) for first, ids in spans.items()}
        if emphasis == "ComfyUI":
            return _comfy_chunks(runs, widths)
        return a1111_chunks(runs, self.tokenizer.get_vocab().get(",</w>"), backtrack, widths)

    @torch.no_grad()
    def _encode_chunk(self, chunk: list[tuple[int, float]], clip_skip: int, emphasis: str = "Original") -> torch.Tensor:
        bos, eos = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        ids = [bos] + [t for t, _ in chunk] + [eos]
        ids += [pad] * (CHUNK + 2 - len(ids))
        weights = torch.tensor([1.0] + [w for _, w in chunk] + [1.0] * (CHUNK + 1 - len(chunk)))
        device = getattr(self.pipe, "_execution_device", None) or self.text_encoder.device  # offloaded: the GPU
        z = clip_states(self.text_encoder, torch.tensor([ids], device=device), clip_skip)
        if emphasis == "ComfyUI" and bool((weights != 1.0).any()):  # comfy/sd1_clip.py, encode_token_weights
            empty = [bos, eos] + [pad] * CHUNK
            z_empty = clip_states(self.text_encoder, torch.tensor([empty], device=device), clip_skip)
            weights = weights.to(device=z.device, dtype=z.dtype)[None, :, None]
            return torch.where(weights != 1.0, (z - z_empty) * weights + z_empty, z)
        if emphasis != "None" and bool((weights != 1.0).any()):  # A1111's "Emphasis": None ignores the weights
            weights = weights.to(device=z.device, dtype=z.dtype)
            original_mean = z.mean()
            z = z * weights[None, :, None]
            if emphasis == "Original":  # "No norm" leaves the weighted chunk as it is
                z = z * mean_restoring_factor(original_mean, z)
        return z

    def encode(self, prompt: str, clip_skip: int = 1, min_chunks: int = 1, emphasis: str = "Original",
               backtrack: int = 20) -> EncodedPrompt:
        layers = self.text_encoder.config.num_hidden_layers
        if clip_skip > layers:
            from personae.errors import UserError

            raise UserError(f"Clip skip {clip_skip} is more than this text encoder's {layers} layers.", "Use 1 or 2.")
        chunks = self.token_chunks(prompt, backtrack, emphasis)
        own = len(chunks)
        chunks += [[]] * (min_chunks - len(chunks))
        embeds = torch.cat([self._encode_chunk(c, clip_skip, emphasis) for c in chunks], dim=1)
        return EncodedPrompt(embeds, len(chunks), sum(len(c) for c in chunks), own)

    def encode_pair(self, prompt: str, negative: str, clip_skip: int = 1, emphasis: str = "Original",
                    backtrack: int = 20) -> tuple[EncodedPrompt, EncodedPrompt]:
        """Positive and negative embeddings with the same number of chunks (padded with empty ones)."""
        positive, negative_encoded = self.encode_alike([prompt, negative], clip_skip, emphasis, backtrack)
        return positive, negative_encoded

    def encode_alike(self, prompts: list[str], clip_skip: int = 1, emphasis: str = "Original",
                     backtrack: int = 20) -> list[EncodedPrompt]:
        """Embeddings of `prompts`, all with the same number of chunks (the shorter padded with empty ones)."""
        n = max(len(self.token_chunks(text, backtrack, emphasis)) for text in prompts)
        return [self.encode(text, clip_skip, n, emphasis, backtrack) for text in prompts]


def embedding_spans(tokenizer) -> dict[int, list[int]]:
    """{first token id: the embedding's token ids} of the embeddings in the tokenizer: diffusers adds `name`,
    `name_1`, ... `name_{n-1}` for an n-vector one, and the prompt's `name` stands for all of them, in that order."""
    added = tokenizer.get_added_vocab()
    special = set(tokenizer.all_special_ids)
    spans = {}
    for token, token_id in added.items():
        if token_id in special:
            continue
        ids = [token_id]
        while f"{token}_{len(ids)}" in added:
            ids.append(added[f"{token}_{len(ids)}"])
        spans[token_id] = ids
    return spans


def expand_embeddings(ids: list[int], spans: dict[int, list[int]]) -> list[int]:
    """Token ids with each multi-vector embedding's name written out as its vectors' tokens. (diffusers'
    maybe_convert_prompt does this on the text, and misses a name with capitals, such as EasyNegative, where the
    tokenizer lowercases what it reads: the picture then gets only the first vector.)"""
    return [t for token in ids for t in spans.get(token, (token,))]


def a1111_chunks(runs: list[tuple[list[int], float]], comma: int | None, backtrack: int = 20,
                 spans: dict[int, int] | None = None) -> list[list[tuple[int, float]]]:
    """A1111's tokenize_line on (token ids, weight) runs (weight -1: BREAK): 75 tokens a chunk; a full chunk whose
    last comma is at most `backtrack` tokens back hands the tokens after it to the next one; a multi-vector
    embedding (`spans`) that does not fit in the chunk starts the next one whole."""
    chunks: list[list[tuple[int, float]]] = [[]]
    last_comma = -1
    for ids, weight in runs:
        if weight == -1.0:  # BREAK
            chunks.append([])
            last_comma = -1
            continue
        position = 0
        while position < len(ids):
            token, chunk = ids[position], chunks[-1]
            if token == comma:
                last_comma = len(chunk)
            elif backtrack and len(chunk) == CHUNK and last_comma != -1 and len(chunk) - last_comma <= backtrack:
                chunks[-1], moved = chunk[:last_comma + 1], chunk[last_comma + 1:]
                chunks.append(moved)
                last_comma = -1
            if len(chunks[-1]) == CHUNK:
                chunks.append([])
                last_comma = -1
            width = (spans or {}).get(token, 1)
            if len(chunks[-1]) + width > CHUNK:
                chunks.append([])
                last_comma = -1
            chunks[-1] += [(t, weight) for t in ids[position:position + width]]
            position += width
    return chunks


def _comfy_chunks(runs: list[tuple[list[int], float]], spans: dict[int, int] | None = None
                  ) -> list[list[tuple[int, float]]]:
    """ComfyUI's batching of token groups (SDTokenizer.tokenize_with_weights, max_word_length 8): each run of one
    weight is a group, an embedding a group of its own (ComfyUI splits the text at `embedding:`); a group that does
    not fit in the chunk is cut at 75 when it has 8 tokens or more, else it starts the next chunk whole. A BREAK
    (personae's reading of a ConditioningConcat) starts a new chunk."""
    chunks: list[list[tuple[int, float]]] = [[]]
    for ids, weight in runs:
        if weight == -1.0:
            chunks.append([])
            continue
        for group in _groups(ids, spans or {}):
            group = [(token, weight) for token in group]
            large = len(group) >= 8
            while group:
                room = CHUNK - len(chunks[-1])
                if len(group) <= room:
                    chunks[-1] += group
                    break
                if large:
                    chunks[-1] += group[:room]
                    group = group[room:]
                chunks.append([])
    return chunks


def _groups(ids: list[int], spans: dict[int, int]) -> list[list[int]]:
    """A run's tokens cut around its multi-vector embeddings: text, embedding, text, ..."""
    groups, current, position = [], [], 0
    while position < len(ids):
        width = spans.get(ids[position], 0)
        if width:
            groups += [current, ids[position:position + width]] if current else [ids[position:position + width]]
            current = []
        else:
            current.append(ids[position])
        position += width or 1
    return groups + [current] if current else groups
