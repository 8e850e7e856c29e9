"""A1111's embedding cards (a PNG holding the embedding in a text chunk and again in its pixels) load as the embedding
itself. The cards here are made the way A1111's modules/textual_inversion/image_embedding.py makes them (read, not
imported: A1111 is no package); its published LCG values pin the stream both sides use."""

from __future__ import annotations

import base64
import json
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from safetensors.torch import save_file

from personae.errors import UserError
from personae.models.addons import load_embeddings
from personae.models.embedding_images import lcg_nibbles
from personae.models.resolve import load_pipeline, resolve_model


def _a1111_dict(vectors: torch.Tensor, name: str) -> dict:
    """A1111's .pt dictionary as its EmbeddingEncoder writes it into JSON (tensors as {"TORCHTENSOR": lists})."""
    return {"string_to_token": {"*": 265}, "string_to_param": {"*": {"TORCHTENSOR": vectors.tolist()}},
            "name": name, "step": 1500, "sd_checkpoint": "e1441589", "sd_checkpoint_name": "v1-5-pruned-emaonly"}


def _pixel_blocks(data: dict, height: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """insert_image_data_embed's two blocks: the compressed JSON's low and high 4-bit halves, repeated to fill
    (height, n, 3), decorated in the high 4 bits, the low 4 bits XORed with the LCG stream."""
    packed = np.frombuffer(zlib.compress(json.dumps(data).encode(), 9), np.uint8)
    size = packed.size + (height - packed.size % height)
    size += height * 3 - size % (height * 3)
    rng = np.random.default_rng(seed)
    blocks = []
    for half in (packed & 0x0F, packed >> 4):
        block = np.resize(half, size).reshape(height, -1, 3)
        block = block ^ (rng.integers(1, 16, block.shape, dtype=np.uint8) << 4)  # the dotted decoration
        blocks.append((block ^ lcg_nibbles(block.size).reshape(block.shape)).astype(np.uint8))
    return blocks[0], blocks[1]


def card(path, vectors: torch.Tensor, name: str, text_chunk: bool = True, pixels: bool = True):
    picture = np.full((64, 48, 3), 0x77, np.uint8)  # the card's picture (A1111: a generation with a caption)
    data = _a1111_dict(vectors, name)
    if pixels:
        low, high = _pixel_blocks(data, picture.shape[0])
        black = np.zeros((picture.shape[0], 1, 3), np.uint8)
        picture = np.concatenate([low, black, picture, black, high], axis=1)
    info = PngInfo()
    if text_chunk:
        info.add_text("sd-ti-embedding", base64.b64encode(json.dumps(data).encode()).decode())
    Image.fromarray(picture).save(path, pnginfo=info)
    return path


def test_the_lcg_is_a1111s():
    """The first values image_embedding.py's own self-test pins (lcg() % 255), in their low 4 bits."""
    published = [253, 242, 127, 44, 157, 27, 239, 133, 38, 79, 167, 4, 177, 95, 130, 79, 78, 14, 52, 215]
    assert lcg_nibbles(20).tolist() == [v & 0x0F for v in published]


@pytest.fixture(scope="module")
def embedded(tiny_model, tmp_path_factory):
    """The reference: the same vectors as an A1111 .safetensors file under the card's token."""
    folder = tmp_path_factory.mktemp("cards")
    pipe = load_pipeline(resolve_model(str(tiny_model[0])))
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    vectors = torch.randn(2, width, generator=torch.Generator().manual_seed(7))
    save_file({"emb_params": vectors}, str(folder / "plain.safetensors"))
    load_embeddings(pipe, [(str(folder / "plain.safetensors"), "kshcard")])
    return folder, vectors, _encode(pipe)


def _encode(pipe) -> torch.Tensor:
    with torch.no_grad():
        return pipe.encode_prompt("a kshcard on a table", "cpu", 1, False)[0]


@pytest.mark.parametrize("text_chunk, pixels", [(True, True), (False, True), (True, False)])
def test_a_card_loads_as_the_embedding_under_its_name(tiny_model, embedded, text_chunk, pixels):
    folder, vectors, reference = embedded
    path = card(folder / f"card-{text_chunk}-{pixels}.png", vectors, "kshcard", text_chunk, pixels)
    pipe = load_pipeline(resolve_model(str(tiny_model[0])))
    (loaded,) = load_embeddings(pipe, [(str(path), None)])
    assert loaded.token == "kshcard"  # the name inside, not the file's
    assert torch.equal(_encode(pipe), reference)


def test_a_picture_without_an_embedding_is_refused_in_one_paragraph(tiny_model, tmp_path):
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(tmp_path / "preview.png")
    pipe = load_pipeline(resolve_model(str(tiny_model[0])))
    with pytest.raises(UserError, match="is a picture without an embedding in it") as err:
        load_embeddings(pipe, [(str(tmp_path / "preview.png"), None)])
    assert "\n" not in str(err.value)
    # a card re-encoded or retouched after A1111 saved it: its data blocks no longer decompress
    path = card(tmp_path / "damaged.png", torch.randn(1, 32), "x", text_chunk=False)
    pixels = np.asarray(Image.open(path)).copy()
    pixels[:2, :2] ^= 0x05  # in the low block, left of its black column
    Image.fromarray(pixels).save(path)
    with pytest.raises(UserError, match="do not decompress"):
        load_embeddings(pipe, [(str(path), None)])


def test_generate_takes_a_card_from_the_command_line(tiny_model, embedded, tmp_path):
    from personae.cli.main import main

    folder, vectors, _ = embedded
    path = card(tmp_path / "ksh.png", vectors, "kshcard", text_chunk=False)  # pixels only: a site stripped the text
    out = tmp_path / "out"
    assert main(["generate", "--model", str(tiny_model[0]), "--prompt", "a kshcard", "--steps", "2", "--embedding",
                 str(path), "--out", str(out)]) == 0
    (png,) = out.glob("*.png")
    assert 'TI hashes: "kshcard: ' in Image.open(png).text["parameters"]  # loaded, under the card's own name
