"""Write the SD-1.5 CLIP tokenizer files (vocab.json, merges.txt) from the BPE list
that ships inside the open_clip_torch wheel.

Run once by a developer; the files it writes are committed under
src/personae/models/sd15/tokenizer/ so that single-file checkpoints load offline.

    pip download --no-deps open_clip_torch -d /tmp/oc
    python scripts/derive_clip_tokenizer.py /tmp/oc/open_clip_torch-*.whl

The construction is CLIP's own (byte alphabet, the same alphabet with an end-of-word
mark, then one entry per merge, then the two special tokens), which is how the
vocab.json published with SD-1.5 was made; tests check known token ids.
"""
import gzip
import json
import sys
import zipfile
from pathlib import Path

N_MERGES = 49152 - 256 - 2  # CLIP uses the first 48,894 merges of the list


def bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable character table of GPT-2 / CLIP BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def main(wheel: str) -> None:
    with zipfile.ZipFile(wheel) as zf:
        text = gzip.decompress(zf.read("open_clip/bpe_simple_vocab_16e6.txt.gz")).decode("utf-8")
    merges = [tuple(line.split()) for line in text.split("\n")[1 : N_MERGES + 1]]
    alphabet = list(bytes_to_unicode().values())
    vocab = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out = Path(__file__).resolve().parents[1] / "src/personae/models/sd15/tokenizer"
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {out}")


if __name__ == "__main__":
    main(sys.argv[1])
