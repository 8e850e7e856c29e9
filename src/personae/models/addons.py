"""Load LoRAs and textual-inversion embeddings into a pipeline through diffusers' own loaders.

LoRA-family files in any layout found in the wild (kohya/A1111 in either UNet spelling, the old
attention-processor layout, diffusers/peft and peft's adapter folders, LyCORIS, ComfyUI, OMI) are read by
`lora_layouts`, every key placed on a module (a file with unplaced keys is refused), and loaded
as one peft LoRA adapter per file with `load_lora_into_unet` / `load_lora_into_text_encoder`,
so per-file weights (`set_adapters`), several files at once and unloading all work as for any LoRA;
embeddings bundled in a LoRA file (A1111's bundle_emb, OneTrainer writes them) join the tokenizer.
Embeddings (A1111 `.pt` / `.safetensors`, diffusers `learned_embeds.*`) are read here (pickles
only with allow_pickle, as plain tensors) and handed to `load_textual_inversion` as tensors.
This module also adds the product around them: file checks, the token A1111 would use, the
hashes A1111 writes.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from personae.errors import UserError
from personae.media.png import lora_tag
from personae.models.embedding_images import is_picture, read_embedding_picture
from personae.models.layer_patches import install
from personae.models.lora_layouts import (
    TEXT,
    UNET,
    LoraFile,
    module_table,
    peft_layers,
    place,
    refuse_unplaced,
)
from personae.models.lora_math import LowRank
from personae.models.model_files import check_model_file
from personae.models.peft_merged import merged_type, read_merged
from personae.models.tensor_files import flat_tensors, read_tensors


@dataclass(frozen=True)
class LoadedLora:
    name: str  # file stem, as A1111 names it in <lora:name:w>
    weight: float  # the text encoder's, and the UNet's unless unet_weight says otherwise (A1111's <lora:name:te:unet>)
    hash: str  # A1111's "Lora hashes" value
    adapter: str = ""  # the diffusers adapter name (for set_adapters)
    layout: str = ""  # what the file was read as (naming and kinds), for messages
    tokens: tuple[str, ...] = ()  # embeddings bundled in the file (bundle_emb), added to the tokenizer
    unet_weight: float | None = None  # the UNet's weight where it differs from the text encoder's

    @property
    def adapter_weight(self) -> float | dict[str, float]:
        """The weight as diffusers' set_adapters takes it: one number, or one per component."""
        return adapter_weight(self.weight, self.unet_weight)

    @property
    def tag(self) -> str:
        """A1111's prompt tag for this LoRA at its weights."""
        return lora_tag(self.name, self.weight, self.unet_weight)


def adapter_weight(weight: float, unet_weight: float | None = None) -> float | dict[str, float]:
    """set_adapters' weight of a LoRA whose text encoder is at `weight` and UNet at `unet_weight` (None: the same)."""
    if unet_weight is None or unet_weight == weight:
        return weight
    return {TEXT: weight, UNET: unet_weight}


@dataclass(frozen=True)
class LoadedEmbedding:
    token: str
    hash: str  # A1111's "TI hashes" value


def file_sha256(path: Path, skip_safetensors_header: bool = False) -> str:
    """sha256 of a file; for LoRAs A1111 hashes only the tensor bytes after the safetensors header."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        if skip_safetensors_header and path.suffix == ".safetensors":
            (header_len,) = struct.unpack("<Q", fh.read(8))
            fh.seek(8 + header_len)
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _existing(path: str, what: str, allow_pickle: bool) -> Path:
    p = Path(path).expanduser()
    check_model_file(p, what, allow_pickle)  # by content: missing, a folder, damaged, foreign, or a pickle not opted in
    return p


def check_embedding_path(path: str | Path, allow_pickle: bool = False) -> Path:
    """An embedding file checked by its content: a tensor file (as check_model_file judges it), or a PNG / WebP card
    A1111 saved the embedding in (embedding_images)."""
    p = Path(path).expanduser()
    if p.is_file() and p.stat().st_size and is_picture(p):
        return p
    return _existing(str(p), "embedding", allow_pickle)


_ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def _adapter_file(folder: Path) -> Path | None:
    return next((folder / name for name in _ADAPTER_FILES if (folder / name).is_file()), None)


def lora_sources(path: Path) -> list[tuple[Path, str | None]]:
    """The weight files of a LoRA given as a file, a peft adapter folder (`PeftModel.save_pretrained`:
    adapter_model.* + adapter_config.json) or a folder of those per component (unet/, text_encoder/: personae's
    lora_peft export), each with its component when the folder names it; [] for any other folder."""
    if not path.is_dir():
        return [(path, None)]
    if _adapter_file(path):
        return [(_adapter_file(path), None)]
    return [(_adapter_file(path / part), part) for part in (UNET, TEXT) if (path / part).is_dir() and
            _adapter_file(path / part)]


def check_lora_path(path: str | Path, allow_pickle: bool = False) -> list[tuple[Path, str | None]]:
    """The LoRA's weight files, each checked by its bytes (a folder that is no peft adapter is named as a folder)."""
    p = Path(path).expanduser()
    sources = lora_sources(p)
    if not sources:
        check_model_file(p, "lora", allow_pickle)  # raises: a folder, with the files to pass instead
    for file, _ in sources:
        check_model_file(file, "lora", allow_pickle)
    return sources


def read_lora_tensors(path: Path, allow_pickle: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str], dict]:
    """(tensors, safetensors header, peft configs {"unet.r": ..}) of a LoRA file or peft adapter folder."""
    tensors, header, configs = {}, {}, {}
    for file, part in check_lora_path(path, allow_pickle):
        data, file_header = read_tensors(file, allow_pickle, "LoRA")
        tensors |= flat_tensors(data)
        header |= file_header
        config = file.parent / "adapter_config.json"
        if config.is_file():
            try:
                values = json.loads(config.read_text())
            except (ValueError, UnicodeDecodeError) as exc:
                raise UserError(f"{config} is no adapter config peft wrote: {exc}.",
                                "Keep the adapter_config.json that came with the adapter.") from None
            if not isinstance(values, dict):
                raise UserError(f"{config} is no adapter config peft wrote: it holds no settings object.",
                                "Keep the adapter_config.json that came with the adapter.")
            configs |= {f"{component}.{k}": v for component in ([part] if part else [UNET, TEXT])
                        for k, v in values.items()}
    return tensors, header, configs


def read_lora(pipe, path: Path, allow_pickle: bool = False) -> LoraFile:
    """A LoRA-family file (or peft adapter folder) in any layout (see lora_layouts), every key placed on `pipe`'s
    UNet or text encoder; a peft adapter's adapter_config.json gives its scale."""
    tensors, header, configs = read_lora_tensors(path, allow_pickle)
    if not tensors:
        raise UserError(f"{path} holds no tensors, so it is no LoRA.", "Check the file given with --lora.")
    table = module_table(pipe.unet, pipe.text_encoder)
    if merged_type(configs):  # a peft OFT / BOFT / IA3 adapter: the change peft's merge makes
        lora = read_merged(path, tensors, configs, table, {UNET: pipe.unet, TEXT: pipe.text_encoder})
    else:
        lora = place(path, tensors, header, table, configs=configs)
    refuse_unplaced(lora, len(tensors))
    return lora


def _adapter_layers(model, adapter: str) -> int:
    from peft.tuners.lora import LoraLayer

    return sum(1 for m in model.modules() if isinstance(m, LoraLayer) and adapter in m.lora_A)


def add_lora_adapter(pipe, lora: LoraFile, adapter: str) -> None:
    """Load a placed file as one peft adapter through diffusers' loaders (unloadable; weight set by set_adapters)."""
    try:
        _add_lora_adapter(pipe, lora, adapter)
    except BaseException:
        if adapter in pipe.get_list_adapters().get(UNET, []) + pipe.get_list_adapters().get(TEXT, []):
            pipe.delete_adapters(adapter)  # no half-loaded adapter left on a shared pipeline
        raise


def _carrier(pipe, component: str) -> dict:
    """A zero rank-1 change (on the UNet's conv_in, the text encoder's first query projection): the peft layer
    that carries the component's weight for a file whose changes there all sit beside their layers (layer_patches
    read it there); it adds exactly nothing."""
    if component == UNET:
        out, inp, *kernel = pipe.unet.conv_in.weight.shape
        return {(UNET, "conv_in"): LowRank(torch.zeros(1, inp, *kernel), torch.zeros(out, 1, 1, 1), 1.0)}
    module = next(name for name, _ in pipe.text_encoder.named_modules() if name.endswith("layers.0.self_attn.q_proj"))
    out, inp = pipe.text_encoder.get_submodule(module).weight.shape
    return {(TEXT, module): LowRank(torch.zeros(1, inp), torch.zeros(out, 1), 1.0)}


def _add_lora_adapter(pipe, lora: LoraFile, adapter: str) -> None:
    changes = dict(lora.changes)
    for component in dict.fromkeys([c for c, _ in lora.patches] or ([] if changes else [UNET])):
        if not any(c == component for c, _ in changes):  # the patches' weight follows a layer of their own model
            changes.update(_carrier(pipe, component))
    for component in (UNET, TEXT):
        state, config = peft_layers(changes, component)
        if not state:
            continue
        model = getattr(pipe, component)
        dtype = model.dtype  # a property that walks every parameter: once, not per tensor
        state = {k: v.to(dtype) for k, v in state.items()}
        prefixed = {f"{component}.{k}": v for k, v in state.items()}
        metadata = {f"{component}.{k}": v for k, v in config.items()}  # the config, so no alpha is guessed
        if component == UNET:
            pipe.load_lora_into_unet(prefixed, network_alphas=None, unet=model, adapter_name=adapter, metadata=metadata,
                                     _pipeline=pipe)
        else:
            pipe.load_lora_into_text_encoder(prefixed, network_alphas=None, text_encoder=model, prefix=TEXT,
                                             adapter_name=adapter, metadata=metadata, _pipeline=pipe)
        placed = _adapter_layers(model, adapter)
        if placed != len(config["target_modules"]):  # our placement and peft's disagree: a bug, not the user's file
            raise RuntimeError(f"{lora.path}: {placed} of {len(config['target_modules'])} {component} layers got the LoRA")
    if lora.patches:  # norms, embeddings, OFT / GLoRA / IA3: their weight follows one of the adapter's peft layers
        from peft.tuners.lora import LoraLayer  # in the same model, so a text-encoder weight apart holds for them

        anchors = {component: next(name for name, m in getattr(pipe, component).named_modules()
                                   if isinstance(m, LoraLayer) and adapter in m.lora_A)
                   for component in {c for c, _ in lora.patches}}
        for (component, module), patch in lora.patches.items():
            root = getattr(pipe, component)
            layer = root.get_submodule(module)
            install(getattr(layer, "base_layer", layer), adapter, patch, root, anchors[component])


def load_loras(pipe, loras: list[tuple], allow_pickle: bool = False) -> list[LoadedLora]:
    """Load LoRA files (any layout, see lora_layouts) as named adapters and set their weights: (path, weight) or
    (path, text encoder's weight, UNet's weight); embeddings bundled in them (bundle_emb, as A1111 reads them) join
    the tokenizer under their own tokens, whatever the weight."""
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    loras = [(path, weight, unet[0] if unet else None) for path, weight, *unet in loras]
    read = []
    for path, _, _ in loras:  # every file read and checked before the pipeline changes
        p = Path(path).expanduser()
        lora = read_lora(pipe, p, allow_pickle)
        if not lora.changes and not lora.patches:
            raise UserError(f"{p} holds only bundled embeddings ({', '.join(lora.embeddings)}), no LoRA weights.",
                            "Check the file given with --lora.")
        bundled = [(token, p, _fit_width(f"{p} ({key})", vectors, width))
                   for token, (key, vectors) in lora.embeddings.items()]
        read.append((p, lora, bundled))
    _check_tokens(pipe, [(token, p) for _, _, bundled in read for token, p, _ in bundled], bundled=True)
    loaded, names = [], []
    for i, ((p, lora, bundled), (_, weight, unet_weight)) in enumerate(zip(read, loras)):
        name = f"lora{i}_" + re.sub(r"[^\w-]", "_", p.stem)  # peft adapter names must not contain dots
        add_lora_adapter(pipe, lora, name)
        names.append(name)
        weights = lora_sources(p)[0][0]  # a folder: its (first) adapter file
        loaded.append(LoadedLora(p.stem, weight, file_sha256(weights, skip_safetensors_header=True)[:12], name,
                                 lora.layout, tuple(token for token, _, _ in bundled),
                                 None if unet_weight == weight else unet_weight))
    if names:
        pipe.set_adapters(names, adapter_weights=[lora.adapter_weight for lora in loaded])
    _add_tokens(pipe, [(token, v) for _, _, bundled in read for token, _, v in bundled])
    return loaded


_FAMILY_WIDTH = {1024: "SD-2", 1280: "SDXL"}


def read_embedding(path: Path, allow_pickle: bool, width: int) -> tuple[str | None, torch.Tensor]:
    """(token the file names or None, vectors (n, width)) of an A1111 or diffusers embedding, read by us.

    A1111: `.pt` {"string_to_param": {"*": vectors}, ...} or `.safetensors` {"emb_params": vectors}, and
    OneTrainer's {"emp_params": vectors}, called by the file name (A1111 reads any one-tensor file so); A1111's
    embedding cards (a PNG / WebP holding the .pt dictionary, embedding_images), called by the name inside.
    diffusers: {token: vectors} (`learned_embeds.safetensors`, or `.bin` as pickle).
    """
    token, vectors = None, None
    if is_picture(path):
        data = read_embedding_picture(path)
        token = data["name"] if isinstance(data.get("name"), str) and data["name"].strip() else None
    else:
        data, _ = read_tensors(path, allow_pickle, "textual-inversion embedding")
    if isinstance(data, torch.Tensor):
        vectors = data
    elif isinstance(data, dict) and isinstance(data.get("string_to_param"), dict) and data["string_to_param"]:
        params = data["string_to_param"]
        vectors = params.get("*", next(iter(params.values())))
    elif isinstance(data, dict) and "emb_params" in data:
        vectors = data["emb_params"]
    elif isinstance(data, dict) and "emp_params_out" in data:
        raise UserError(f"{path} is a OneTrainer output embedding (emp_params_out): its vectors replace the text "
                        "encoder's output at the token, which personae (like A1111 and ComfyUI) cannot apply.",
                        "Train it in OneTrainer without the output-embedding option for an embedding all three read.")
    elif isinstance(data, dict) and "emp_params" in data:  # OneTrainer's SD 1.x files: called by the file name
        vectors = data["emp_params"]
    elif isinstance(data, dict) and ("clip_l" in data or "clip_g" in data):
        raise UserError(f"{path} is an SDXL embedding (clip_l / clip_g vectors), not one for Stable Diffusion 1.x.",
                        "Use an embedding made for SD 1.x.")
    elif isinstance(data, dict) and len(data) == 1:
        token, vectors = next(iter(data.items()))
    if not isinstance(vectors, torch.Tensor) or vectors.ndim not in (1, 2) or vectors.numel() == 0:
        raise UserError(f"{path} is not a textual-inversion embedding personae knows (A1111 string_to_param / "
                        "emb_params, or diffusers {token: vectors}).", "Check the file given with --embedding.")
    return (str(token) if token is not None else None), _fit_width(str(path), vectors, width)


def _fit_width(where: str, vectors: torch.Tensor, width: int) -> torch.Tensor:
    """An embedding's vectors as (n, width) float32, or one paragraph naming the family they were made for."""
    if vectors.ndim not in (1, 2) or vectors.numel() == 0:
        raise UserError(f"{where} is no embedding: a tensor of shape {tuple(vectors.shape)}.",
                        "Check the file's embedding vectors.")
    vectors = vectors.detach().to(torch.float32).reshape(-1, vectors.shape[-1])
    if vectors.shape[1] != width:
        family = _FAMILY_WIDTH.get(vectors.shape[1])
        what = f"an {family} embedding" if family else f"made for a text encoder {vectors.shape[1]} wide"
        raise UserError(f"{where} is {what}; this model's text encoder is {width} wide (Stable Diffusion 1.x: 768).",
                        "Use an embedding made for this model's family.")
    return vectors


def _check_tokens(pipe, tokens: list[tuple[str, Path]], bundled: bool = False) -> None:
    """Each new token free in the tokenizer and given once."""
    vocab, seen = set(pipe.tokenizer.get_vocab()), set()
    for token, path in tokens:
        if token in vocab or token in seen:
            raise UserError(f"The token {token!r} of {path} is already taken (by the tokenizer or another embedding).",
                            "A token bundled in a LoRA is the file's own: leave out the other embedding that takes "
                            "it, or save the embedding on its own and load it with --embedding FILE:TOKEN."
                            if bundled else "Give it another token with --embedding FILE:TOKEN.")
        seen.add(token)


def _add_tokens(pipe, entries: list[tuple[str, torch.Tensor]]) -> None:
    """All new tokens in one `load_textual_inversion` call: it resizes the token table once (seconds at full size)."""
    if not entries:
        return
    tokens = [token for token, _ in entries]
    try:
        pipe.load_textual_inversion([v.to(pipe.text_encoder.dtype) for _, v in entries], token=tokens)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise UserError(f"The embeddings {', '.join(tokens)} could not be loaded: {exc}",
                        "Check that they are A1111 or diffusers embeddings for this model.") from None


def load_embeddings(pipe, embeddings: list[tuple[str, str | None]], allow_pickle: bool = False) -> list[LoadedEmbedding]:
    """Load embeddings; each token is added to the tokenizer and text encoder.

    The token: the one given, else the one a diffusers file names, else the file name (A1111's rule).
    All go to `load_textual_inversion` in one call: it resizes the token table once (seconds at full size).
    """
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    entries, loaded = [], []
    for path, token in embeddings:
        p = check_embedding_path(path, allow_pickle)
        file_token, v = read_embedding(p, allow_pickle, width)
        entries.append((token or file_token or p.stem, p, v))
        loaded.append(LoadedEmbedding(entries[-1][0], file_sha256(p)[:12]))
    _check_tokens(pipe, [(token, p) for token, p, _ in entries])
    _add_tokens(pipe, [(token, v) for token, _, v in entries])
    return loaded


def hashes_text(items: dict[str, str]) -> str | None:
    """A1111's 'name: hash, name: hash' value (quoted by the writer)."""
    return ", ".join(f"{k}: {v}" for k, v in items.items()) or None


__all__ = ["LoadedLora", "LoadedEmbedding", "load_loras", "load_embeddings", "hashes_text", "read_lora", "read_embedding",
           "check_lora_path", "lora_sources", "read_lora_tensors"]
