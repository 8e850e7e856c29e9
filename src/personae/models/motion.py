"""Load an AnimateDiff motion adapter from what a user passes as --motion-adapter.

Three kinds of input, as for base models:
  - a local diffusers folder (config.json + diffusion_pytorch_model.safetensors), as
    `MotionAdapter.save_pretrained` writes it;
  - one `.safetensors` file: diffusers' key layout, or the original AnimateDiff layout
    shared on model sites (`mm_sd_v15_v2.safetensors`: `...temporal_transformer...`). Its
    config comes from the file's header when personae wrote it, else it is read off the
    tensor shapes, with AnimateDiff's published values for what shapes cannot tell
    (8 attention heads, 32 norm groups), so no network is needed;
  - a hub id (`guoyww/animatediff-motion-adapter-v1-5-3`), from the local cache or
    downloaded; with no network it fails within seconds, saying what to pass instead.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from personae.errors import UserError
from personae.hub import from_cache_or_hub
from personae.models.model_files import check_model_file, header_json, read_state_dict
from personae.models.resolve import Source, _short, load_errors, locate

MOTION_CONFIG_KEY = "personae_motion_config"  # single-file header entry holding the adapter config


class MotionSource(Source):
    """A motion adapter: a diffusers MotionAdapter folder, one AnimateDiff motion module file, or a hub id."""


def resolve_motion_adapter(spec: str, allow_pickle: bool = False) -> MotionSource:
    """Decide which kind of adapter `spec` names, without loading it (so bad input fails before the model loads)."""
    return locate(spec, MotionSource, "motion adapter", "config.json", allow_pickle,
                  "Pass --motion-adapter the folder MotionAdapter.save_pretrained wrote, or one .safetensors motion module.",
                  "Check the path given with --motion-adapter (`personae model tiny-motion DIR` writes a tiny one for tests).",
                  file_noun="motion module")


def _config_from_shapes(state: dict[str, torch.Tensor]) -> dict:
    """A MotionAdapter config read off a diffusers-layout state dict."""
    def count(prefix: str) -> int:
        found = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
        return max(found) + 1 if found else 0

    levels = count("down_blocks.")
    channels = tuple(int(state[f"down_blocks.{i}.motion_modules.0.norm.weight"].shape[0]) for i in range(levels))
    pe = [v for k, v in state.items() if k.endswith("pos_embed.pe")]
    return {
        "block_out_channels": channels,
        "motion_layers_per_block": count("down_blocks.0.motion_modules."),
        "motion_transformer_layers_per_block": count("down_blocks.0.motion_modules.0.transformer_blocks."),
        "use_motion_mid_block": any(k.startswith("mid_block.") for k in state),
        "motion_max_seq_length": int(pe[0].shape[1]) if pe else 32,
        "motion_num_attention_heads": 8,  # AnimateDiff v1-v3 (not stored in the weights)
        "motion_norm_num_groups": 32,
    }


def _load_single_file(path: Path):
    from diffusers import MotionAdapter
    from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers

    check_model_file(path, "motion module", allow_pickle=True)  # the opt-in was checked by resolve_motion_adapter
    state, meta = read_state_dict(path)  # a pickle goes through the weights-only unpickler
    if not any(".motion_modules." in k for k in state):
        raise UserError(f"{path} holds no motion modules (no *.motion_modules.* weights).",
                        "Pass an AnimateDiff motion module (e.g. mm_sd_v15_v2.safetensors) or a diffusers MotionAdapter folder.")
    try:
        table_lengths = [int(v.shape[1]) for k, v in state.items() if k.endswith("pos_encoder.pe")]
        if any("temporal_transformer" in k for k in state):  # AnimateDiff's own layout
            state = convert_animatediff_checkpoint_to_diffusers(state)
        config = header_json(meta, MOTION_CONFIG_KEY, path) or _config_from_shapes(state)
        if table_lengths and MOTION_CONFIG_KEY not in meta:  # v1 modules hold 24 positions, v2/v3 32
            config["motion_max_seq_length"] = table_lengths[0]
        adapter = MotionAdapter(**config)
        missing, unexpected = adapter.load_state_dict(state, strict=False)
    except load_errors() as exc:
        raise UserError(f"{path} could not be loaded as a motion module ({_short(exc)}).",
                        "Use an AnimateDiff motion module for Stable Diffusion 1.x, or its diffusers folder.") from None
    missing = [k for k in missing if not k.endswith("pos_embed.pe")]  # fixed sinusoids, rebuilt from the config
    if missing or unexpected:
        raise UserError(f"{path} does not fit the motion adapter its shapes describe "
                        f"({len(missing)} missing, {len(unexpected)} unexpected weights, e.g. {(missing + unexpected)[0]}).",
                        "Use a motion module for Stable Diffusion 1.x, or its diffusers folder.")
    return adapter


def load_motion_adapter(source: MotionSource):
    """A diffusers MotionAdapter on the CPU, float32 (the caller moves it to the model's device and dtype)."""
    from diffusers import MotionAdapter

    if source.kind == "folder":
        try:
            adapter = MotionAdapter.from_pretrained(source.location, local_files_only=True)
        except load_errors() as exc:
            raise UserError(f"{source.location} could not be loaded as a motion adapter folder ({_short(exc)}).",
                            "Pass the folder MotionAdapter.save_pretrained wrote, or one motion module file.") from None
    elif source.kind == "single_file":
        adapter = _load_single_file(Path(source.location))
    else:
        adapter = from_cache_or_hub(source.location, "motion adapter", "pass its folder with --motion-adapter "
                                    "./path/to/folder, or one .safetensors motion module file.",
                                    lambda cached: MotionAdapter.from_pretrained(source.location,
                                                                                 local_files_only=cached))
    return adapter


def save_motion_single_file(adapter, path: str | Path) -> Path:
    """One .safetensors in diffusers' key layout, its config in the header (loads back offline)."""
    from personae.models.folders import save_safetensors

    state = {k: v.contiguous() for k, v in adapter.state_dict().items() if not k.endswith("pos_embed.pe")}
    config = {k: v for k, v in adapter.config.items() if not k.startswith("_")}
    return save_safetensors(state, path, {MOTION_CONFIG_KEY: json.dumps(config, default=list)})


MOTION_MODULES = ".motion_modules."  # in every key of a motion module, and of a LoRA for one


def is_motion_lora(path: str | Path, allow_pickle: bool = False) -> bool:
    """A LoRA with weights for AnimateDiff's motion modules (a MotionLoRA: zoom, pan, tilt, roll), read from its
    key names alone: it loads on a clip's motion UNet, not on the image model."""
    from personae.models.addons import check_lora_path
    from personae.models.model_files import tensor_shapes

    return any(MOTION_MODULES in key for file, _ in check_lora_path(path, allow_pickle)
               for key in tensor_shapes(file)[0])


def load_motion_loras(pipe, loras: list[tuple], active: dict[str, float], allow_pickle: bool = False) -> list:
    """Motion LoRAs ((path, weight) pairs; any layout lora_layouts reads, AnimateDiff's own included) as peft
    adapters on an AnimateDiff pipeline's motion UNet, set to their weights beside the `active` adapters there
    ({adapter: the UNet's weight}: the image LoRAs the motion UNet carries). A file with text-encoder weights beside
    its motion modules is refused: the text encoder is the image model's, loaded before the motion UNet exists."""
    from personae.models.addons import TEXT, LoadedLora, add_lora_adapter, file_sha256, lora_sources, read_lora

    read = []
    for path, weight, *_ in loras:
        p = Path(path).expanduser()
        lora = read_lora(pipe, p, allow_pickle)  # the pipe's UNet is the motion UNet: its motion modules are placed
        text = [module for component, module in [*lora.changes, *lora.patches] if component == TEXT]
        if text:
            raise UserError(f"{p} is a motion LoRA (it has weights for the motion modules) with text-encoder weights "
                            f"too ({len(text)} layers, e.g. {text[0]}), which personae does not load beside a motion "
                            "module.", "Use the motion LoRA alone, or split its text-encoder part into a LoRA of its "
                                       "own.")
        read.append((p, lora, float(weight)))
    loaded = []
    for i, (p, lora, weight) in enumerate(read):
        name = f"motion{i}_" + re.sub(r"[^\w-]", "_", p.stem)
        add_lora_adapter(pipe, lora, name)
        weights = lora_sources(p)[0][0]
        loaded.append(LoadedLora(p.stem, weight, file_sha256(weights, skip_safetensors_header=True)[:12], name,
                                 lora.layout))
    if loaded:
        pipe.unet.set_adapters([*active, *(l.adapter for l in loaded)], [*active.values(), *(l.weight for l in loaded)])
    return loaded
