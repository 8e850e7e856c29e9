"""IP-Adapter files: the adapter (Tencent's h94/IP-Adapter layout) and its CLIP image encoder; the tiny ones for tests.

    adapter = read_ip_adapter("ip-adapter_sd15.safetensors")          # or a hub file h94/IP-Adapter/models/...
    check_fits(adapter, pipe.unet)
    encoder = load_image_encoder("./image_encoder", torch.float16)   # a folder, one .safetensors file, a hub folder

An adapter file holds `image_proj.*` (what turns the image encoder's output into extra text-like tokens) and
`ip_adapter.N.to_k_ip.weight` / `.to_v_ip.weight` (keys and values for those tokens in the UNet's cross-attention
layers, numbered 1, 3, 5, ... in the UNet's order); the .bin files hold the same two dicts, pickled (read only with
--allow-pickle, and then by the weights-only unpickler). Its image projection says its kind: plain (ip-adapter_sd15,
_light: `proj.weight`), full-face (`proj.3.weight`), plus and plus-face (a resampler: `latents`). FaceID files read
a face embedding from insightface, which personae does not run: they are refused by name. A key the adapter does not
use, or a layer the UNet does not have, is an error (diffusers would leave it out without a word).

The image encoder is a transformers CLIPVisionModelWithProjection: h94's models/image_encoder folder (ViT-H/14), or
its model.safetensors alone as ComfyUI keeps it in models/clip_vision; a lone file's config comes from its shapes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from personae.errors import UserError
from personae.hub import from_cache_or_hub, is_hub_id, require_hub
from personae.models.model_files import PICKLE_SUFFIXES, check_folder_weights, check_model_file, header_json
from personae.models.tensor_files import flat_tensors, read_tensors

KINDS = {"proj.weight": "plain", "proj.3.weight": "full-face", "latents": "plus"}
FACE_ID = ("perceiver_resampler.proj_in.weight", "norm.weight")
ENCODER_CONFIG_KEY = "personae_clip_vision_config"  # a tiny encoder file's own config, in its header
_HEADS = {768: 12, 1024: 16, 1280: 16, 1664: 16}  # CLIP ViT-B, -L, -H, -bigG: heads are not in the shapes
_HUB_FILE = re.compile(r"^[\w.-]+/[\w.-]+/(?:[\w.-]+/)*[\w.-]+\.(?:safetensors|bin)$")


@dataclass(frozen=True)
class IpAdapterFile:
    path: str
    name: str  # the file's stem, as A1111's ControlNet extension lists it
    hash: str  # its sha256's first 8 digits, shown after the name
    kind: str  # plain, plus, full-face
    image_proj: dict
    layers: dict  # "1.to_k_ip.weight" -> tensor, ...

    @property
    def hidden_states(self) -> bool:
        """Whether it reads the encoder's penultimate hidden states (plus, full-face) or its projected embedding."""
        return self.kind != "plain"


def _hub_download(spec: str, what: str, hint: str) -> Path:
    from huggingface_hub import hf_hub_download

    owner, name, *rest = spec.split("/")
    repo, filename = f"{owner}/{name}", "/".join(rest)
    return Path(from_cache_or_hub(repo, what, hint, lambda cached: hf_hub_download(repo, filename,
                                                                                   local_files_only=cached)))


def ip_adapter_path(spec: str, allow_pickle: bool = False, fetch: bool = True) -> Path | None:
    """The local file `spec` names: a path, or a hub file (owner/name/path/file.safetensors) from the cache or the
    hub; with fetch False, a hub file is only checked to be reachable (None), so a run fails before loading."""
    path = Path(spec).expanduser()
    hint = "pass the adapter file you downloaded with --ip-adapter-model ./ip-adapter_sd15.safetensors."
    if path.is_dir():
        raise UserError(f"IP-Adapter {path} is a folder; an IP-Adapter is one file.",
                        "Pass the file itself, e.g. models/ip-adapter_sd15.safetensors.")
    if path.exists():
        check_model_file(path, "IP-Adapter", allow_pickle)
        return path
    if spec.startswith((".", "/", "~")) or not _HUB_FILE.match(spec):
        raise UserError(f'IP-Adapter "{spec}" was not found: no such file, and it is not a hub file of the form '
                        "owner/name/path/file.safetensors.", "Check the path given with --ip-adapter-model.")
    if spec.endswith(tuple(PICKLE_SUFFIXES)) and not allow_pickle:
        raise UserError(f"IP-Adapter {spec} is a pickle, which can run code when loaded.",
                        "Use the .safetensors version, or add --allow-pickle.")
    if not fetch:
        if not _cached(spec):
            require_hub("/".join(spec.split("/")[:2]), "IP-Adapter", hint)
        return None
    return _hub_download(spec, "IP-Adapter", hint)


def _cached(spec: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    owner, name, *rest = spec.split("/")
    found = try_to_load_from_cache(f"{owner}/{name}", "/".join(rest))
    return isinstance(found, str)


@lru_cache(maxsize=8)
def _short_hash(path: str, size: int, mtime_ns: int) -> str:
    from personae.models.addons import file_sha256

    return file_sha256(Path(path))[:8]


def read_ip_adapter(spec: str, allow_pickle: bool = False) -> IpAdapterFile:
    """The adapter `spec` names, its two parts split and its kind decided; a file of another kind is refused."""
    path = ip_adapter_path(spec, allow_pickle)
    data, _ = read_tensors(path, allow_pickle, "IP-Adapter")
    flat = flat_tensors(data) if not all(isinstance(v, torch.Tensor) for v in data.values()) else data
    parts: dict[str, dict] = {"image_proj": {}, "ip_adapter": {}}
    strays = []
    for key, value in flat.items():
        head, _, rest = key.partition(".")
        if head in parts and rest:
            parts[head][rest] = value
        else:
            strays.append(key)
    if strays or not parts["image_proj"] or not parts["ip_adapter"]:
        what = f"keys it cannot place ({', '.join(sorted(strays)[:3])}{', ...' if len(strays) > 3 else ''})" \
            if strays else "no image_proj.* or no ip_adapter.* weights"
        raise UserError(f"{path} is not an IP-Adapter file: it has {what}.",
                        "Pass an IP-Adapter from h94/IP-Adapter (e.g. ip-adapter_sd15.safetensors).")
    proj = parts["image_proj"]
    if any(key in proj for key in FACE_ID) and "proj.weight" not in proj:
        raise UserError(f"{path} is an IP-Adapter FaceID: it reads a face embedding from insightface, which personae "
                        "does not run.", "Use ip-adapter-plus-face_sd15 or ip-adapter-full-face_sd15, which read the "
                                         "picture itself.")
    kind = next((kind for key, kind in KINDS.items() if key in proj), None)
    if kind is None:
        raise UserError(f"{path}: its image projection ({', '.join(sorted(proj)[:3])}, ...) is of no IP-Adapter kind "
                        "personae knows (plain, plus, full-face).", "Pass an IP-Adapter from h94/IP-Adapter.")
    return IpAdapterFile(str(path), path.stem, adapter_hash(path), kind, proj, parts["ip_adapter"])


def adapter_hash(path: Path) -> str:
    """The short sha256 A1111's ControlNet extension shows after a model's name (cached by size and mtime)."""
    stat = path.stat()
    return _short_hash(str(path), stat.st_size, stat.st_mtime_ns)


def cross_attention_layers(unet) -> list[str]:
    """The UNet's cross-attention layers in the order an adapter numbers them (diffusers' attn_processors)."""
    return [name.removesuffix(".processor") for name in unet.attn_processors
            if not name.endswith("attn1.processor") and "motion_modules" not in name]


def check_fits(adapter: IpAdapterFile, unet) -> None:
    """The adapter's layers are exactly the UNet's cross-attention layers, at the UNet's sizes."""
    layers = cross_attention_layers(unet)
    expected = {f"{2 * i + 1}.to_{kv}_ip.weight" for i in range(len(layers)) for kv in "kv"}
    extra, missing = sorted(set(adapter.layers) - expected), sorted(expected - set(adapter.layers))
    fix = "Use an IP-Adapter made for this model's family (SD 1.x: ip-adapter_sd15*, not the sdxl_models ones)."
    if extra or missing:
        said = f"{len(extra)} layer weight(s) the UNet has no place for (e.g. ip_adapter.{extra[0]})" if extra else \
            f"no weights for {len(missing)} of the UNet's cross-attention layers (e.g. ip_adapter.{missing[0]})"
        raise UserError(f"{adapter.path} does not fit this model: it has {said}; the UNet has {len(layers)} "
                        "cross-attention layers.", fix)
    for i, name in enumerate(layers):
        want = tuple(unet.get_submodule(name).to_k.weight.shape)
        got = tuple(adapter.layers[f"{2 * i + 1}.to_k_ip.weight"].shape)
        if got != want:
            raise UserError(f"{adapter.path} does not fit this model: its layer {2 * i + 1} is {got[1]} wide where the "
                            f"UNet's {name} takes {want[1]}.", fix)


def encoder_config(shapes: dict[str, tuple], meta: dict[str, str], path: Path) -> dict:
    """A CLIPVisionConfig's values from a lone encoder file: its header's, else read off its shapes."""
    own = header_json(meta, ENCODER_CONFIG_KEY, path)
    if own:
        return own
    prefix = "vision_model."
    if f"{prefix}embeddings.patch_embedding.weight" not in shapes or "visual_projection.weight" not in shapes:
        layout = "open_clip's (visual.*)" if any(k.startswith("visual.") for k in shapes) else "another"
        raise UserError(f"{path} is not a CLIP image encoder in transformers' layout (vision_model.*, "
                        f"visual_projection.weight): its layout is {layout}.",
                        "Pass h94/IP-Adapter's models/image_encoder folder, or its model.safetensors.")
    hidden, _, patch, _ = shapes[f"{prefix}embeddings.patch_embedding.weight"]
    positions = shapes[f"{prefix}embeddings.position_embedding.weight"][0]
    layers = 1 + max(int(m.group(1)) for k in shapes if (m := re.match(rf"{prefix}encoder\.layers\.(\d+)\.", k)))
    return {"hidden_size": hidden, "patch_size": patch, "image_size": patch * round((positions - 1) ** 0.5),
            "num_hidden_layers": layers, "num_attention_heads": _HEADS.get(hidden, max(hidden // 64, 1)),
            "intermediate_size": shapes[f"{prefix}encoder.layers.0.mlp.fc1.weight"][0],
            "projection_dim": shapes["visual_projection.weight"][0], "hidden_act": "gelu", "layer_norm_eps": 1e-5}


def load_image_encoder(spec: str, dtype: torch.dtype = torch.float32, allow_pickle: bool = False):
    """A CLIPVisionModelWithProjection from a folder, one file or a hub folder (owner/name[/subfolder])."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    path = Path(spec).expanduser()
    hint = "pass the folder you downloaded with --image-encoder ./image_encoder."
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{path} is a folder but not a CLIP image encoder (no config.json in it).",
                            "Pass h94/IP-Adapter's models/image_encoder folder, or its model.safetensors.")
        check_folder_weights(path, allow_pickle)
        return CLIPVisionModelWithProjection.from_pretrained(str(path), local_files_only=True, dtype=dtype).eval()
    if path.exists():
        data, meta = read_tensors(path, allow_pickle, "image encoder")
        data.pop("vision_model.embeddings.position_ids", None)  # a buffer older transformers saved with the weights
        config = encoder_config({k: tuple(v.shape) for k, v in data.items()}, meta, path)
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(**config))
        result = model.load_state_dict(data, strict=False)
        if result.unexpected_keys or result.missing_keys:
            keys = result.unexpected_keys or result.missing_keys
            raise UserError(f"{path}: {'keys it cannot place' if result.unexpected_keys else 'missing weights'} for a "
                            f"CLIP image encoder ({', '.join(keys[:3])}).", "Pass h94/IP-Adapter's image_encoder.")
        return model.to(dtype).eval()
    if spec.startswith((".", "/", "~")) or not is_hub_id(spec, subfolder=True):
        raise UserError(f'Image encoder "{spec}" was not found: no such folder or file, and it is not a hub id of the '
                        "form owner/name[/subfolder].", "Check the path given with --image-encoder.")
    owner, name, *rest = spec.split("/")
    sub = {"subfolder": "/".join(rest)} if rest else {}
    return from_cache_or_hub(f"{owner}/{name}", "image encoder", hint, lambda cached: (
        CLIPVisionModelWithProjection.from_pretrained(f"{owner}/{name}", local_files_only=cached, dtype=dtype,
                                                      **sub).eval()))


def check_image_encoder(spec: str, allow_pickle: bool = False) -> None:
    """Fail within seconds, before the model loads, when `spec` is neither here nor reachable."""
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_file():
            check_model_file(path, "image encoder", allow_pickle)
        return
    if spec.startswith((".", "/", "~")) or not is_hub_id(spec, subfolder=True):
        raise UserError(f'Image encoder "{spec}" was not found: no such folder or file, and it is not a hub id of the '
                        "form owner/name[/subfolder].", "Check the path given with --image-encoder.")
    owner, name, *rest = spec.split("/")
    if not _cached(f"{owner}/{name}/{'/'.join([*rest, 'config.json'])}"):
        require_hub(f"{owner}/{name}", "image encoder", "pass the folder you downloaded with --image-encoder.")


# the tiny ones: real classes at tiny sizes, seeded, for tests and the demo
TINY_ENCODER = {"hidden_size": 64, "intermediate_size": 128, "projection_dim": 32, "num_hidden_layers": 2,
                "num_attention_heads": 1, "image_size": 32, "patch_size": 8, "hidden_act": "gelu",
                "layer_norm_eps": 1e-5}


def _tiny_projection(kind: str, cross: int, encoder: dict, g: torch.Generator) -> dict[str, torch.Tensor]:
    def randn(*shape, std=0.3):
        return torch.randn(*shape, generator=g) * std

    def norm(prefix: str, width: int) -> dict:
        return {f"{prefix}.weight": 1 + randn(width, std=0.05), f"{prefix}.bias": randn(width, std=0.05)}

    if kind == "plain":  # ImageProjection: the projected embedding -> 4 tokens
        dim = encoder["projection_dim"]
        return {"proj.weight": randn(4 * cross, dim), "proj.bias": randn(4 * cross, std=0.05), **norm("norm", cross)}
    dim = encoder["hidden_size"]
    if kind == "full-face":  # MLP over every hidden state (proj.0, GELU, proj.2, LayerNorm proj.3)
        return {"proj.0.weight": randn(dim, dim), "proj.0.bias": randn(dim, std=0.05),
                "proj.2.weight": randn(cross, dim), "proj.2.bias": randn(cross, std=0.05), **norm("proj.3", cross)}
    width, inner, queries = 64, 64, 4  # the resampler: 4 layers (what diffusers builds), one 64-wide head
    out = {"latents": randn(1, queries, width), "proj_in.weight": randn(width, dim), "proj_in.bias": randn(width),
           "proj_out.weight": randn(cross, width), "proj_out.bias": randn(cross), **norm("norm_out", cross)}
    for i in range(4):
        out |= {**norm(f"layers.{i}.0.norm1", width), **norm(f"layers.{i}.0.norm2", width),
                f"layers.{i}.0.to_q.weight": randn(inner, width), f"layers.{i}.0.to_kv.weight": randn(2 * inner, width),
                f"layers.{i}.0.to_out.weight": randn(width, inner), **norm(f"layers.{i}.1.0", width),
                f"layers.{i}.1.1.weight": randn(4 * width, width), f"layers.{i}.1.3.weight": randn(width, 4 * width)}
    return out


TINY_FILES = {"plain": "ip-adapter_sd15.safetensors", "plus": "ip-adapter-plus_sd15.safetensors",
              "full-face": "ip-adapter-full-face_sd15.safetensors"}


def write_tiny_ip_adapter(out_dir: str | Path, base: str | Path | None = None, seed: int = 0,
                          overwrite: bool = False) -> Path:
    """A folder laid out as h94/IP-Adapter's models/: the three kinds of adapter for the tiny model in `base`
    (default: the seed-0 tiny model) and the image encoder they read (image_encoder/)."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from personae.models.folders import readable_by_others
    from personae.models.tiny import tiny_base_unet
    from personae.outputs import MODEL_FOLDER, check_output, staged_output

    check_output(out_dir, MODEL_FOLDER, replace=overwrite)
    unet = tiny_base_unet(base)
    cross = int(unet.config.cross_attention_dim)
    torch.manual_seed(seed)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_ENCODER)).eval()
    g = torch.Generator().manual_seed(seed)
    layers = {}
    for i, name in enumerate(cross_attention_layers(unet)):
        shape = unet.get_submodule(name).to_k.weight.shape
        for kv in "kv":
            layers[f"ip_adapter.{2 * i + 1}.to_{kv}_ip.weight"] = torch.randn(*shape, generator=g) * 0.5
    with staged_output(Path(out_dir), MODEL_FOLDER, replace=overwrite) as work:
        encoder.save_pretrained(str(work / "image_encoder"), safe_serialization=True)
        for kind, filename in TINY_FILES.items():
            proj = _tiny_projection(kind, cross, TINY_ENCODER, g)
            proj = {f"image_proj.{k}": v.contiguous() for k, v in proj.items()}
            save_file({**proj, **layers}, str(work / filename), metadata={"format": "pt"})
        (work / "README.txt").write_text("Tiny random IP-Adapters (plain, plus, full-face) and their CLIP image "
                                         "encoder, laid out as h94/IP-Adapter's models/ folder; for tests.\n"
                                         f"config of image_encoder: {json.dumps(TINY_ENCODER)}\n")
        readable_by_others(work)
    return Path(out_dir)
