"""What a single-file SD-1.x checkpoint predicts, and on which noise schedule, said the ways the tools that
share such files say it; read when one loads, written when personae writes one.

- A1111 reads `<name>.yaml` beside `<name>.safetensors` as the checkpoint's original (LDM) model config
  (sd_models_config.find_checkpoint_config_near_filename): `model.params.parameterization` is "eps" (the
  default) or "v", and `linear_start`, `linear_end`, `timesteps` and `scale_factor` give the noise schedule
  and the latent scale. ComfyUI's "Load Checkpoint With Config" reads the same file.
- ComfyUI's checkpoint save adds an empty tensor `v_pred` to a v-prediction model's weights; ComfyUI reads it
  back for SDXL (an SD-1 checkpoint there takes a ModelSamplingDiscrete node, which personae's
  --prediction-type mirrors), and `ztsnr` beside it marks a model made for the zero-terminal-SNR noise schedule
  (Forge reads it for every model).
- kohya's sd-scripts (sai_model_spec) writes `modelspec.prediction_type` ("epsilon" or "v") into the header.
- personae's own files carry the diffusers configs in their header as well.

Every source that says something must agree with the others: a checkpoint read one way here and another way
in A1111 would draw differently in each, so a disagreement stops the load, naming the sources. A .yaml is read
with yaml.safe_load: its `target:` class paths are text, never imported.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import yaml

from personae.errors import UserError

V_PRED_KEY = "v_pred"  # ComfyUI's (and Forge's) marker of a v-prediction checkpoint
ZTSNR_KEY = "ztsnr"  # theirs for a zero-terminal-SNR one
MODELSPEC_KEY = "modelspec.prediction_type"  # the model spec's header field (kohya sd-scripts writes it)
_MODELSPEC = {"epsilon": "epsilon", "eps": "epsilon", "v": "v_prediction", "v_prediction": "v_prediction"}
WRITTEN_BY = "# written by personae"  # the first line of a .yaml personae wrote: the only kind it replaces
_PARAMETERIZATION = {"eps": "epsilon", "v": "v_prediction"}
_LDM_NUMBERS = {"linear_start": ("scheduler", "beta_start"), "linear_end": ("scheduler", "beta_end"),
                "timesteps": ("scheduler", "num_train_timesteps"), "scale_factor": ("vae", "scaling_factor")}
_LABELS = {("scheduler", "prediction_type"): "prediction type",
           ("scheduler", "rescale_betas_zero_snr"): "zero-terminal-SNR noise schedule",
           ("scheduler", "beta_start"): "first beta", ("scheduler", "beta_end"): "last beta",
           ("scheduler", "num_train_timesteps"): "number of timesteps", ("vae", "scaling_factor"): "latent scale"}


def config_beside(path: Path) -> Path:
    """Where A1111 looks for a checkpoint's own config: its name with .yaml for its suffix."""
    return path.with_suffix(".yaml")


def _said_by_config(path: Path) -> dict[tuple[str, str], object]:
    """What the .yaml beside the checkpoint says, read as A1111 reads it ({} without one)."""
    config_path = config_beside(path)
    if not config_path.is_file():
        return {}
    fix = f"Correct or remove {config_path.name}: A1111 reads it as {path.name}'s model config too."
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"{config_path}, beside the checkpoint {path.name}, could not be read as its model config "
                        f"({' '.join(str(exc).split())}).", fix) from None
    model = config.get("model") if isinstance(config, dict) else None
    params = model.get("params") if isinstance(model, dict) else None
    if not isinstance(params, dict):
        raise UserError(f"{config_path}, beside the checkpoint {path.name}, is not an original Stable Diffusion model "
                        "config (it has no model: params: section).", fix)
    parameterization = params.get("parameterization", "eps")
    if parameterization not in _PARAMETERIZATION:
        raise UserError(f"{config_path} says parameterization: {parameterization!r}; personae draws and trains models "
                        "that predict the noise (eps) or the velocity (v).", fix)
    if params.get("beta_schedule", "linear") != "linear":
        raise UserError(f"{config_path} says beta_schedule: {params['beta_schedule']!r}; personae reads the "
                        "original configs' linear one (diffusers' scaled_linear).", fix)
    said: dict[tuple[str, str], object] = {("scheduler", "prediction_type"): _PARAMETERIZATION[parameterization]}
    for ldm_key, where in _LDM_NUMBERS.items():
        if ldm_key in params:
            value = params[ldm_key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise UserError(f"{config_path} says {ldm_key}: {value!r}, which is not a positive number.", fix)
            said[where] = int(value) if ldm_key == "timesteps" else float(value)
    return said


def _said_by_header(configs: dict) -> dict[tuple[str, str], object]:
    said: dict[tuple[str, str], object] = {}
    scheduler = configs.get("scheduler")
    if isinstance(scheduler, dict):
        said[("scheduler", "prediction_type")] = scheduler.get("prediction_type", "epsilon")
        said[("scheduler", "rescale_betas_zero_snr")] = bool(scheduler.get("rescale_betas_zero_snr", False))
        for key in ("beta_start", "beta_end", "num_train_timesteps"):
            if key in scheduler:
                said[("scheduler", key)] = scheduler[key]
    if isinstance(configs.get("vae"), dict) and "scaling_factor" in configs["vae"]:
        said[("vae", "scaling_factor")] = configs["vae"]["scaling_factor"]
    return said


def _said_by_modelspec(path: Path, metadata: dict[str, str]) -> dict[tuple[str, str], object]:
    if MODELSPEC_KEY not in metadata:
        return {}
    value = metadata[MODELSPEC_KEY]
    if value not in _MODELSPEC:
        raise UserError(f"{path}: its header says {MODELSPEC_KEY} {value!r}; personae draws and trains models that "
                        "predict the noise (epsilon) or the velocity (v).",
                        "Load a Stable Diffusion 1.x checkpoint of one of those two kinds.")
    return {("scheduler", "prediction_type"): _MODELSPEC[value]}


def modelspec_prediction(scheduler_config: dict) -> dict[str, str]:
    """The model spec's header field for a model with this scheduler, as kohya writes it."""
    return {MODELSPEC_KEY: "v" if scheduler_config.get("prediction_type") == "v_prediction" else "epsilon"}


def _said_by_markers(keys) -> dict[tuple[str, str], object]:
    said: dict[tuple[str, str], object] = {}
    if V_PRED_KEY in keys:
        said[("scheduler", "prediction_type")] = "v_prediction"
    if ZTSNR_KEY in keys:
        said[("scheduler", "rescale_betas_zero_snr")] = True
    return said


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-6)
    return a == b


def prediction_overrides(path: Path, keys, metadata: dict[str, str], header_configs: dict) -> dict[str, dict]:
    """The scheduler and VAE config values a checkpoint's sources say ({"scheduler": {...}, "vae": {...}}),
    from personae's header configs, the model spec's field in its header `metadata`, ComfyUI's marker keys among
    `keys` and the .yaml beside it; a UserError naming the sources when two of them disagree."""
    config_name = config_beside(path).name
    sources = {"its header": _said_by_header(header_configs), f"its {MODELSPEC_KEY}":
               _said_by_modelspec(path, metadata), "its marker key": _said_by_markers(keys),
               config_name: _said_by_config(path)}
    chosen: dict[tuple[str, str], tuple[str, object]] = {}
    for source, said in sources.items():
        for where, value in said.items():
            if where in chosen and not _same(chosen[where][1], value):
                first, earlier = chosen[where]
                marker = V_PRED_KEY if where[1] == "prediction_type" else ZTSNR_KEY
                names = [name.replace("its marker key", f"its {marker} key") for name in (first, source)]
                raise UserError(
                    f"{path} says two things about its {_LABELS[where]}: {names[0]} says {earlier!r}, {names[1]} "
                    f"says {value!r}. Tools that read one or the other would draw different pictures from it.",
                    f"Correct or remove {config_name} beside it." if config_name in (first, source) else
                    "The file contradicts itself: write it again with the tool that made it.")
            chosen.setdefault(where, (source, value))
    overrides: dict[str, dict] = {}
    for (part, key), (_, value) in chosen.items():
        overrides.setdefault(part, {})[key] = value
    return overrides


def marker_tensors(scheduler_config: dict) -> dict[str, torch.Tensor]:
    """The empty marker tensors ComfyUI writes into a v-prediction (and Forge reads for a zero-SNR) checkpoint."""
    markers = {}
    if scheduler_config.get("prediction_type") == "v_prediction":
        markers[V_PRED_KEY] = torch.zeros(0)
    if scheduler_config.get("rescale_betas_zero_snr"):
        markers[ZTSNR_KEY] = torch.zeros(0)
    return markers
