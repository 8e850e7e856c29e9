"""ControlNet models: resolve what the user passed (folder, single file, hub id), load it; the tiny one for tests.

    source = resolve_controlnet("lllyasviel/control_v11p_sd15_canny")   # or ./my-controlnet, ./canny.safetensors
    controlnet = load_controlnet(source, torch.float16)

A single file is the original layout A1111 users download (`control_model.*`); its config
comes from the file's header when personae wrote it, else it is the SD-1.5 ControlNet
config derived from the SD-1.5 UNet config shipped in this package, so no network is needed.
A folder's diffusion_pytorch_model.safetensors on its own (diffusers' layout) is read too, its config from its
shapes (models/controlnet_layout.py).
A file with "shuffle" in its name is ControlNet 1.1's shuffle model, whose control is averaged over the picture
(global average pooling), as A1111's ControlNet extension decides (its model guess; older versions read the same
from control_v11e_sd15_shuffle.yaml); a diffusers folder says it in its config (`global_pool_conditions`).
A hub id may name a subfolder after the repository (`owner/name/subfolder`), as the
MediaPipe-face ControlNet keeps its SD-1.5 weights in `diffusion_sd15`. Offline, a hub
id that is not in the local cache fails within seconds, saying to pass a local folder.
"""

from __future__ import annotations

import json
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

from personae.errors import UserError
from personae.hub import from_cache_or_hub, require_hub
from personae.media.controlnet_text import pools_by_name
from personae.models.addons import file_sha256
from personae.models.controlnet_layout import check_keys, diffusers_layout_config, is_diffusers_layout
from personae.models.folders import readable_by_others
from personae.models.model_files import (
    SD15_DIR,
    check_model_file,
    config_saying,
    header_json,
    named_by_content,
    tensor_shapes,
)
from personae.models.original_layout import CONFIG_METADATA_KEY
from personae.models.resolve import Source, _short, load_errors, locate

# The perturbation of the tiny ControlNet's zero convolutions, and the gain of its conditioning embedding's
# last layer (see build_tiny_controlnet)
TINY_ZERO_CONV_STD = 0.05
TINY_CONDITIONING_GAIN = 6.0
TINY_CONDITIONING_CHANNELS = (8, 16, 32, 32)  # 3 stride-2 stages: 64 px control image -> 8x8 latents


class ControlNetSource(Source):
    """A ControlNet: a diffusers folder, one file in the original layout, or a hub id (owner/name[/subfolder])."""

    @property
    def hash(self) -> str | None:
        """The short sha256 A1111's ControlNet extension shows after a file's name."""
        if self.kind != "single_file":
            return None
        stat = Path(self.location).stat()
        return _short_hash(self.location, stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=16)
def _short_hash(path: str, size: int, mtime_ns: int) -> str:  # size and mtime: a changed file is hashed again
    return file_sha256(Path(path))[:8]


def resolve_controlnet(spec: str, allow_pickle: bool = False) -> ControlNetSource:
    """Decide which kind of ControlNet `spec` names, without loading it."""
    return locate(spec, ControlNetSource, "ControlNet", "config.json", allow_pickle,
                  "Pass the folder written by ControlNetModel.save_pretrained (config.json + weights), "
                  "or a hub id such as lllyasviel/control_v11p_sd15_canny.",
                  "Check the path given with --controlnet TYPE=PATH, or pass a hub id.", subfolder=True)


def check_available(source: ControlNetSource) -> None:
    """Fail within seconds, before any model loads, when a hub ControlNet is neither cached nor downloadable."""
    if source.kind != "hub":
        return
    from diffusers import ControlNetModel

    try:
        ControlNetModel.load_config(source.location, subfolder=source.subfolder, local_files_only=True)
        return
    except (OSError, ValueError):
        pass
    require_hub(source.location, "ControlNet", "pass its folder with --controlnet TYPE=./path/to/controlnet.")


def sd15_controlnet_config() -> dict:
    """The SD-1.5 ControlNet config: the SD-1.5 UNet's encoder settings (what lllyasviel's models use)."""
    import inspect

    from diffusers import ControlNetModel

    unet = json.loads((SD15_DIR / "unet" / "config.json").read_text())
    accepted = inspect.signature(ControlNetModel.__init__).parameters
    return {"_class_name": "ControlNetModel", **{k: v for k, v in unet.items() if k in accepted}}


def _single_file_config(path: Path) -> dict:
    shapes, meta = tensor_shapes(path)
    config = (header_json(meta, CONFIG_METADATA_KEY, path) or {}).get("controlnet")
    if config is not None and not isinstance(config, dict):
        raise UserError(f"{path}: its header entry {CONFIG_METADATA_KEY!r} holds no ControlNet config.")
    if is_diffusers_layout(shapes):  # a folder's weights file alone (models/controlnet_layout.py)
        config = {"_class_name": "ControlNetModel", **config} if config else \
            diffusers_layout_config(shapes, sd15_controlnet_config())
        check_keys(path, shapes, config)
    elif not any(k.startswith("control_model.") for k in shapes):
        raise UserError(f"{path} is not a ControlNet checkpoint: it has neither the original layout's control_model.* "
                        "weights nor diffusers' controlnet_cond_embedding.*.",
                        "Pass a ControlNet file (e.g. control_v11p_sd15_canny.safetensors) or a diffusers folder.")
    else:
        config = {"_class_name": "ControlNetModel", **config} if config else sd15_controlnet_config()
    return config_saying(config, {"global_pool_conditions": True}) if pools_by_name(str(path)) else config


def load_controlnet(source: ControlNetSource, dtype: torch.dtype = torch.float32):
    """A diffusers ControlNetModel on the CPU."""
    from diffusers import ControlNetModel

    if source.kind == "single_file":
        path = Path(source.location)
        kind = check_model_file(path, "ControlNet", allow_pickle=True)  # the opt-in was checked by resolve_controlnet
        with tempfile.TemporaryDirectory(prefix="personae-controlnet-") as tmp, named_by_content(path, kind) as named:
            (Path(tmp) / "config.json").write_text(json.dumps(_single_file_config(path), default=list))
            try:
                return ControlNetModel.from_single_file(str(named), config=tmp, local_files_only=True, torch_dtype=dtype)
            except load_errors() as exc:
                raise UserError(f"{path} could not be loaded as a ControlNet ({_short(exc)}).",
                                "Use a ControlNet for Stable Diffusion 1.x (original layout or a diffusers folder).") from None
    kwargs = dict(torch_dtype=dtype)
    if source.subfolder:
        kwargs["subfolder"] = source.subfolder
    if source.kind == "folder":
        try:
            return ControlNetModel.from_pretrained(source.location, local_files_only=True, **kwargs)
        except load_errors() as exc:
            raise UserError(f"{source.location} could not be loaded as a ControlNet folder ({_short(exc)}).",
                            "Pass the folder ControlNetModel.save_pretrained wrote.") from None
    hint = "pass its folder with --controlnet TYPE=./path/to/controlnet."
    return from_cache_or_hub(source.location, "ControlNet", hint,
                             lambda cached: ControlNetModel.from_pretrained(source.location, local_files_only=cached,
                                                                            **kwargs))


@torch.no_grad()
def build_tiny_controlnet(unet, seed: int = 0, zero_conv_std: float = TINY_ZERO_CONV_STD,
                          conditioning_gain: float = TINY_CONDITIONING_GAIN):
    """A ControlNet copied from a (tiny) UNet, with its zero convolutions made non-zero.

    ControlNet's output convolutions start at exactly zero so that training begins from
    the unchanged base model: an untrained ControlNet adds nothing and every image equals
    the one without control. A tiny test model is never trained, so:
      - the zero convolutions after each down block and the mid block get small seeded
        random values (`zero_conv_std`), so the ControlNet's residuals reach the UNet;
      - the conditioning embedding (control image -> features added to the latents) is
        re-initialised He-normal without biases, its last (zero) layer with `conditioning_gain`:
        with diffusers' default init its random biases swamp the image after six layers
        and the residuals would barely depend on the control map.
    So the control image visibly steers the result, weight 0 still switches it off, and
    the same seed gives the same model.
    """
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=TINY_CONDITIONING_CHANNELS)
    generator = torch.Generator().manual_seed(seed)

    def fill(conv, std: float, bias: bool) -> None:
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * std)
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * std if bias else torch.zeros_like(conv.bias))

    embedding = controlnet.controlnet_cond_embedding
    for conv in [embedding.conv_in, *embedding.blocks]:
        fill(conv, 1.5 * (2.0 / conv.weight[0].numel()) ** 0.5, bias=False)  # He-normal, a little above unit gain
    fill(embedding.conv_out, conditioning_gain / embedding.conv_out.weight[0].numel() ** 0.5, bias=False)
    for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
        fill(conv, zero_conv_std, bias=True)
    return controlnet


def write_tiny_controlnet(out_dir: str | Path, base: str | Path | None = None, seed: int = 0,
                          single_file: str | Path | None = None, overwrite: bool = False) -> Path:
    """Write a tiny ControlNet (diffusers folder, optionally also one original-layout file) for the tiny
    model in `base` (default: the seed-0 tiny model)."""
    from personae.models.tiny import tiny_base_unet
    from personae.outputs import MODEL_FOLDER, check_file_output, check_output, staged_output

    check_output(out_dir, MODEL_FOLDER, replace=overwrite)
    if single_file is not None:
        check_file_output(single_file, overwrite)
    unet = tiny_base_unet(base)
    out_dir = Path(out_dir)
    controlnet = build_tiny_controlnet(unet, seed)
    with staged_output(out_dir, MODEL_FOLDER, replace=overwrite) as work:
        controlnet.save_pretrained(str(work), safe_serialization=True)
        readable_by_others(work)
    if single_file is not None:
        from personae.models.original_layout import save_controlnet_single_file
        from personae.staging import explain_disk_full

        with explain_disk_full(single_file):
            save_controlnet_single_file(controlnet, single_file)
    return out_dir
