"""Textual-inversion embeddings stored in a picture, as AUTOMATIC1111 saves them and reads them back.

A1111's textual-inversion training saves, with "Save images with embedding in PNG chunks" (on by default), a
PNG card of each embedding, and such cards were shared as the embedding itself; A1111 loads .png / .webp /
.jxl / .avif files from its embeddings folder. The card holds the embedding twice (modules/textual_inversion/
image_embedding.py, read):

- a `sd-ti-embedding` text chunk: base64 of JSON, A1111's .pt dictionary with each tensor written as
  {"TORCHTENSOR": nested lists} ({"string_to_param": {"*": vectors}, "name": ..., "step": ...});
- in the pixels, for sites that strip text chunks: the zlib-compressed JSON split into low and high 4-bit halves,
  each half laid out as an RGB block (rows = the picture's height) in the low 4 bits of its pixels, XORed with
  a fixed LCG stream (seed 0, a = 1664525, c = 1013904223, mod 2^32, each value mod 255, low 4 bits), the low
  half left of the picture and the high half right of it, each behind one black column; the high 4 bits of the
  block pixels are decoration.

The token is the card's `name` (A1111's rule for pictures), else the file's name. Reading runs no code: JSON only,
its decompressed size capped.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from personae.errors import UserError

CHUNK = "sd-ti-embedding"
_MAX_JSON = 64 << 20  # bytes of JSON a card may expand to (a 75-vector embedding is ~3 MB as text)


def is_picture(path: Path) -> bool:
    """A PNG or WebP file, by its first bytes."""
    with open(path, "rb") as fh:
        head = fh.read(12)
    return head.startswith(b"\x89PNG\r\n\x1a\n") or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def lcg_nibbles(count: int) -> np.ndarray:
    """A1111's LCG stream (seed 0), each value mod 255, its low 4 bits: what the pixel data is XORed with."""
    out, seed = np.empty(count, np.uint8), 0
    for i in range(count):
        seed = (1664525 * seed + 1013904223) % 4294967296
        out[i] = (seed % 255) & 0x0F
    return out


def _tensors(d: dict):
    if "TORCHTENSOR" in d:
        return torch.tensor(d["TORCHTENSOR"], dtype=torch.float32)
    return d


def _decode_json(raw: bytes, path: Path) -> dict:
    try:
        data = json.loads(raw, object_hook=_tensors)
    except (ValueError, TypeError, RecursionError) as exc:
        raise UserError(f"{path} carries embedding data that is not A1111's JSON ({exc}).",
                        "The picture is damaged or was made by another tool: get the embedding again.") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} carries embedding data that is not A1111's dictionary.",
                        "The picture is damaged or was made by another tool: get the embedding again.")
    return data


def _from_pixels(image: Image.Image) -> bytes | None:
    """The compressed JSON hidden in the pixels, or None when the picture holds no such blocks."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    lit = (rgb > 0).all(2)  # crop to the pixels with every channel lit, as A1111 does before reading
    rows, cols = np.flatnonzero(lit.any(1)), np.flatnonzero(lit.any(0))
    if not len(rows) or not len(cols):
        return None
    low4 = rgb[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] & 0x0F
    black = np.flatnonzero(low4.sum(axis=(0, 2)) == 0)
    if len(black) < 2:
        return None
    lower, upper = low4[:, :black.min()], low4[:, black.max() + 1:]
    if lower.shape != upper.shape or not lower.size:
        return None
    stream = lcg_nibbles(lower.size).reshape(lower.shape)
    return (((upper ^ stream) << 4) | (lower ^ stream)).astype(np.uint8).tobytes()


def read_embedding_picture(path: Path) -> dict:
    """A1111's embedding dictionary from a card (text chunk first, then the pixels); UserError for a picture that
    holds none (a preview image)."""
    try:
        with Image.open(path) as image:
            image.load()
            text = getattr(image, "text", {}) or {}
            packed = text.get(CHUNK)
            if packed is not None:
                try:
                    return _decode_json(base64.b64decode(packed, validate=False), path)
                except (binascii.Error, ValueError) as exc:
                    raise UserError(f"{path}'s {CHUNK} text is not base64 ({exc}).",
                                    "The picture is damaged: get the embedding again.") from None
            hidden = _from_pixels(image)
    except (OSError, Image.DecompressionBombError) as exc:
        raise UserError(f"{path} could not be read as a picture ({exc}).",
                        "Check the file given with --embedding.") from None
    if hidden is None:
        raise UserError(f"{path} is a picture without an embedding in it: no {CHUNK} text and no data blocks beside "
                        "the picture (A1111's embedding cards carry both; a preview image carries neither).",
                        "Pass the embedding's .pt / .safetensors file, or its card as A1111 saved it.")
    inflate = zlib.decompressobj()
    try:
        raw = inflate.decompress(hidden, _MAX_JSON)  # the blocks' padding (the data repeated) stays unused
    except zlib.error as exc:
        raise UserError(f"{path} has data blocks beside its picture that do not decompress ({exc}).",
                        "The picture was changed after A1111 saved it (resized or re-encoded?): get the original.") from None
    if inflate.unconsumed_tail:
        raise UserError(f"{path} would expand to more than {_MAX_JSON >> 20} MB of embedding data.",
                        "This is no embedding card A1111 writes: check the file.")
    return _decode_json(raw, path)
