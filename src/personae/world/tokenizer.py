"""The shapes world's own CLIP tokenizer: BPE merges learnt on the caption vocabulary.

    write_world_tokenizer(folder)           # vocab.json, merges.txt, tokenizer_config.json, ...
    CLIPTokenizer.from_pretrained(folder)   # loads it like any SD tokenizer

The files are in CLIP's format (lowercase, byte-level alphabet, `</w>` marks the end of a
word, `<|startoftext|>` / `<|endoftext|>` last in the vocabulary), so every tool that
loads an SD-1.5 tokenizer loads this one. The merges are learnt by the classic BPE
loop on the caption words, split by CLIP's own normalizer and pre-tokenizer (from the
`tokenizers` library), until no pair is left: every caption word is one token. The
vocabulary also holds every byte with and without `</w>`, so any other word ("sks",
"<star>") still tokenizes, into characters. (Merges written by hand split words badly.)
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from personae.world.scene import caption_words

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
TOKENIZER_CONFIG = {
    "add_prefix_space": False, "bos_token": BOS, "do_lower_case": True, "eos_token": EOS, "errors": "replace",
    "model_max_length": 77, "pad_token": EOS, "tokenizer_class": "CLIPTokenizer", "unk_token": EOS,
}


def byte_alphabet() -> list[str]:
    """The 256 characters byte-level BPE uses for the bytes 0..255, in CLIP's order (printable ones first)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    others = [b for b in range(256) if b not in keep]
    return [chr(b) for b in keep] + [chr(256 + i) for i in range(len(others))]


def pre_tokenize(text: str) -> list[str]:
    """CLIP's normalization and word split, in the byte-level alphabet (what the BPE model sees)."""
    from tokenizers import Regex, normalizers, pre_tokenizers

    norm = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    split = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
                                     pre_tokenizers.ByteLevel(add_prefix_space=False)])
    return [piece for piece, _ in split.pre_tokenize_str(norm.normalize_str(text))]


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE merges that make each of `words` a single token.

    The classic BPE training loop, run until no pair is left: merge the most frequent adjacent
    pair, ties broken by the pair itself. The `tokenizers` library's BpeTrainer does the same
    but breaks ties in hash order, so its merges (and the token ids) change from run to run."""
    pieces = Counter(p for w in words for p in pre_tokenize(w))
    split = {p: tuple(p[:-1]) + (p[-1] + "</w>",) for p in pieces}
    merges = []
    while True:
        pairs = Counter()
        for piece, symbols in split.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += pieces[piece]
        if not pairs:
            return merges
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        for piece, symbols in split.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            split[piece] = tuple(out)


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's layout: bytes, bytes + </w>, merged tokens in merge order, then the two special tokens."""
    alphabet = byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet]
    seen = set(tokens)
    for a, b in merges:
        if a + b not in seen:
            tokens.append(a + b)
            seen.add(a + b)
    tokens += [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}


def write_world_tokenizer(folder: str | Path, words: list[str] | None = None) -> Path:
    """Write the tokenizer files for the world's caption words (or `words`) into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = learn_merges(words if words is not None else caption_words())
    vocab = build_vocab(merges)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}, indent=2) + "\n")
    return folder
