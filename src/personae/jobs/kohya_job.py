"""kohya's sd-scripts training config (`--config_file config.toml`, as the kohya_ss GUI saves it) read as a job.

    personae train ~/kohya/config_lora.toml          # the same run, trained by personae

Every key is placed or refused: a setting personae has becomes that setting (network_dim -> lora.rank,
optimizer_type AdamW8bit -> train.optimizer adamw8bit, ...); a key that only tunes kohya's own machinery
(data-loader workers, logging, attention kernels) is listed as not needed here; a key that would change
what is trained and that personae cannot do (SDXL, v2, random crops, colour augmentation, ...) stops the
load, named, with what to do. kohya's defaults where they differ from personae's are written out
(min-SNR off, the text encoder trained with the UNet, LoRA on attention and feed-forward layers only).
The training folders (train_data_dir, reg_data_dir, dataset_config) are read in jobs/kohya_dataset.py.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from personae.config.train import INIT_SHAPE
from personae.errors import UserError
from personae.jobs.kohya_dataset import SUBSET_DATA, caption_extension, read_dataset_config, reg_data_dir

try:
    import tomllib  # Python 3.11+
except ModuleNotFoundError:  # pragma: no cover - Python 3.10: the same parser as the tomli package
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None

# kohya's networks.lora targets (its Transformer2DModel modules) without conv_dim: attention, projections,
# feed-forward; personae's own default adds the resnets' convolutions
KOHYA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
OPTIMIZERS = {"adamw": "adamw", "adamw8bit": "adamw8bit", "prodigy": "prodigy", "adafactor": "adafactor",
              "lion": "lion"}
SCHEDULERS = {"constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"}
PRECISION = {"float": "fp32", "fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}
SAMPLERS = {"ddim": "DDIM", "pndm": "PLMS", "lms": "LMS", "k_lms": "LMS", "euler": "Euler", "k_euler": "Euler",
            "euler_a": "Euler a", "k_euler_a": "Euler a", "dpmsolver": "DPM++ 2M", "dpmsolver++": "DPM++ 2M",
            "dpmsingle": "DPM++ SDE", "heun": "Heun", "dpm_2": "DPM2", "k_dpm_2": "DPM2", "dpm_2_a": "DPM2 a",
            "k_dpm_2_a": "DPM2 a"}
# kohya's block_dims / block_alphas order: IN00-IN11, MID, OUT00-OUT11
BLOCKS = [f"IN{i:02d}" for i in range(12)] + ["M00"] + [f"OUT{i:02d}" for i in range(12)]
# keys that only steer kohya's machinery: the trained weights do not depend on them (why, where it helps)
NOT_NEEDED = {
    "logging_dir": "TensorBoard logs go to the run folder's logs/", "log_prefix": "", "log_with": "",
    "log_tracker_name": "", "log_config": "", "wandb_api_key": "", "wandb_run_name": "",
    "max_data_loader_n_workers": "personae reads the cached latents itself", "persistent_data_loader_workers": "",
    "xformers": "PyTorch's SDPA attention is used", "sdpa": "", "mem_eff_attn": "", "lowram": "", "lowvram": "",
    "save_model_as": "exports are .safetensors (kohya layout) plus a diffusers copy",
    "save_state": "checkpoints always hold the optimizer state (personae train --resume)",
    "save_state_on_train_end": "", "save_every_n_epochs": "set train.save_every (steps) for checkpoints in between; "
    "the last is always saved", "save_last_n_epochs": "train.keep_last keeps the newest checkpoints",
    "save_last_n_steps": "", "save_n_epoch_ratio": "", "save_every_n_steps": "set train.save_every",
    "sample_every_n_epochs": "validation grids are drawn at every checkpoint", "sample_every_n_steps": "",
    "sample_at_first": "the base model's grid is always drawn first", "vae_batch_size": "",
    "cache_text_encoder_outputs": "caption encodings are cached whenever the text encoder does not train",
    "cache_text_encoder_outputs_to_disk": "",
    "huggingface_repo_id": "",
    "huggingface_token": "", "output_config": "", "dynamo_backend": "", "ddp_timeout": "",
    "ddp_gradient_as_bucket_view": "", "ddp_static_graph": "", "debug_dataset": "", "console_log_level": "",
    "console_log_file": "", "console_log_simple": "", "bucket_reso_steps": "buckets step by 64 pixels",
    "min_bucket_reso": "", "max_bucket_reso": "", "bucket_no_upscale": "",
}
# what the exports say about themselves: kohya's keys -> the job's metadata section
METADATA = {"metadata_title": "title", "metadata_author": "author", "metadata_description": "description",
            "metadata_license": "license", "metadata_tags": "tags", "training_comment": "comment"}
# what personae cannot train as asked: refused when set (the kohya_ss GUI writes each one, off, in every config)
REFUSED = {"sdxl": "personae trains SD-1.5 models", "v2": "personae trains SD-1.5 models",
           "full_fp16": "trained weights in fp16 need kohya's own gradient scaler: use full_bf16, or mixed_precision "
                        "fp16 alone (the frozen weights in fp16, what trains in fp32)", "fp8_base": "not available",
           "color_aug": "not available", "random_crop": "not available", "face_crop_aug_range": "not available",
           "network_train_text_encoder_only": "not available",
           "in_json": "fine-tuning metadata is not read; pass train_data_dir",
           "token_warmup_step": "not available",
           "resume": "personae resumes its own run folders (personae train --resume)"}


def is_kohya_config(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".toml"


def flat_config(path: Path) -> dict:
    """The TOML's keys, sections flattened one level as sd-scripts' read_config_from_file flattens them."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} could not be read as a kohya config (TOML): {exc}.",
                        "Pass the config_file the kohya_ss GUI or sd-scripts wrote.") from None
    return flat_text(text, str(path))


def flat_text(text: str, where: str) -> dict:
    """flat_config of TOML text (`where` names it in errors)."""
    if tomllib is None:  # pragma: no cover - Python 3.10 without tomli
        raise UserError(f"Reading the kohya config {where} needs Python 3.11 or the tomli package.",
                        "pip install tomli")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{where} could not be read as a kohya config (TOML): {exc}.",
                        "Pass the config_file the kohya_ss GUI or sd-scripts wrote.") from None
    flat = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def looks_like_kohya(text: str) -> bool:
    """Whether pasted text is a kohya training config (TOML naming a model to train)."""
    try:
        return "pretrained_model_name_or_path" in flat_text(text, "the text")
    except UserError:
        return False


def _network_args(values) -> dict[str, str]:
    if isinstance(values, str):
        values = shlex.split(values)
    args = {}
    for item in values or []:
        key, eq, value = str(item).partition("=")
        if not eq:
            raise UserError(f'network_args item "{item}" is not key=value.', "Write it as kohya does: \"conv_dim=8\".")
        args[key.strip()] = value.strip()
    return args


def _numbers(text: str, name: str) -> list[float]:
    try:
        return [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise UserError(f"network_args {name} {text!r} is not a comma-separated list of numbers.") from None


# kohya's per-prompt options in a sample prompts file: --n negative, --s steps, --l CFG scale, --d seed, --ss sampler
PROMPT_OPTIONS = {"n": "negative", "s": "steps", "l": "cfg", "d": "seed", "ss": "sampler"}


def _v_parameterization(model: str, refuse, notes: list[str]) -> None:
    """kohya trains the velocity when told; personae trains what the base model's scheduler config says it
    predicts, so the switch is taken only for a base model that predicts the velocity already."""
    from personae.models.resolve import prediction_type, resolve_model

    try:
        predicts, why = prediction_type(resolve_model(model)), "is a hub model not downloaded yet"
    except UserError as exc:  # missing, a pickle, a file that contradicts itself: said here, in its own words
        predicts, why = None, f"cannot be read ({exc})"
    if predicts == "v_prediction":
        notes.append("v_parameterization (the base model predicts the velocity: personae trains that)")
        return
    said = {None: why, "epsilon": "predicts the noise (epsilon)"}
    refuse("v_parameterization", f"the base model {model} {said.get(predicts, f'predicts {predicts}')}, and personae "
           "trains what the model predicts: a v-prediction checkpoint needs its .yaml (parameterization: v) beside "
           "it, as A1111 reads it, or ComfyUI's v_pred key")


def _prompts(spec: str, base: Path) -> tuple[dict, list[str]]:
    """kohya's sample prompts file (.txt: one per line, options after ' --') as the validation section, and notes:
    the options every line agrees on become its settings (one negative prompt, steps, CFG, seed and sampler serve
    every validation prompt); the others are said."""
    path = (base / spec).resolve() if not Path(spec).is_absolute() else Path(spec)
    if path.suffix.lower() != ".txt" or not path.is_file():
        raise UserError(f"sample_prompts {spec} is not a readable .txt prompts file.",
                        "Point it at kohya's prompt file (one prompt per line), or remove sample_prompts.")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts, options, notes = [], [], []
    for line in (line for line in lines if line and not line.startswith("#")):
        text, *parts = line.split(" --")
        prompts.append(text.strip())
        options.append({key: value.strip() for key, _, value in (part.strip().partition(" ") for part in parts)})
    validation: dict = {"prompts": prompts}
    for key in sorted({key for found in options for key in found}):
        values, field = [found.get(key) for found in options], PROMPT_OPTIONS.get(key)
        if field is None:
            notes.append(f"sample_prompts --{key} (validation images are drawn at the training size, without it)")
        elif len(set(values)) > 1:
            notes.append(f"sample_prompts --{key} differs between prompts (one {field} serves every validation "
                         f"prompt: {values[0] or 'the default'}, the first line's)")
        if field and values[0]:
            value = values[0]
            validation[field] = (int(value) if field in ("steps", "seed") else float(value) if field == "cfg"
                                 else SAMPLERS.get(value.lower(), "DDIM") if field == "sampler" else value)
    return validation, notes


def kohya_job(path: str | Path) -> tuple[dict, list[str]]:
    """(job data for TrainJob, notes: the keys not needed here, each with why) from a kohya config file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist or is not a file.", "Check the path.")
    return kohya_settings(flat_config(path), path.resolve().parent, str(path))


def kohya_settings(c: dict, base: Path, path: str) -> tuple[dict, list[str]]:
    """kohya_job of a flattened config; `base`: where its relative files are, `path`: its name in messages."""
    try:
        return _settings(c, base, path)
    except (ValueError, TypeError) as exc:  # a number that is not one (network_dim = "eight", resolution = "big")
        raise UserError(f"{path} holds a value that is not what kohya takes there ({exc}).",
                        "Fix the value (numbers as numbers, resolution as \"512\" or \"512,512\").") from None


def _settings(c: dict, base: Path, path: str) -> tuple[dict, list[str]]:
    refused, unknown, notes = [], [], []

    def refuse(key: str, why: str) -> None:
        refused.append(f"{key} = {c[key]!r} ({why})")

    for key, why in REFUSED.items():
        if c.get(key):
            refuse(key, why)
    d, t, lora, db = {}, {"min_snr_gamma": 0.0}, {}, {}  # the job's data, train, lora and dreambooth sections
    job: dict = {"version": 1, "method": "lora", "data": d, "train": t}
    job["lora"], job["dreambooth"] = lora, db
    if "pretrained_model_name_or_path" not in c or not (c.get("train_data_dir") or c.get("dataset_config")):
        raise UserError(f"{path} names no pretrained_model_name_or_path, or neither train_data_dir nor "
                        "dataset_config: it is not a kohya training config.",
                        "Pass the config_file sd-scripts trains from, or a personae job YAML.")
    job["base_model"] = str(c["pretrained_model_name_or_path"])
    if c.get("v_parameterization"):
        _v_parameterization(job["base_model"], refuse, notes)
    if c.get("dataset_config"):  # its subsets; train_data_dir and reg_data_dir are ignored, as kohya ignores them
        data, train, dreambooth, refused_there, said = read_dataset_config(str(c["dataset_config"]), base, c)
        d.update(data), t.update(train), db.update(dreambooth)
        refused += refused_there
        notes += said + [f"{key} (dataset_config is given: kohya ignores it too)" for key in
                         ("train_data_dir", "reg_data_dir") if c.get(key)]
    else:
        d.update(path=str(c["train_data_dir"]), sidecars="verbatim")  # captions as kohya reads them
    name = str(c.get("output_name") or "last")
    job["name"] = name
    job["output"] = str(Path(str(c.get("output_dir") or ".")) / name)  # a run folder of its own inside output_dir
    if not c.get("dataset_config"):  # else read per subset, the size from its dataset
        extension = caption_extension(c.get("caption_extension", ".caption"))  # sd-scripts' default is .caption
        if extension:
            d["caption_extension"] = extension
        else:
            refused.append(f"caption_extension = {c['caption_extension']!r} (personae reads .txt or .caption "
                           "caption files)")
        size = [int(v) for v in str(c.get("resolution", "512")).split(",")]
        if len(set(size)) != 1:
            refuse("resolution", "a square size: personae buckets each image's own shape")
        t["resolution"] = size[0]
        d["crop"] = "none" if c.get("enable_bucket") else "center"
    # the network
    module = str(c.get("network_module", "networks.lora"))
    args = _network_args(c.get("network_args"))
    algo = args.pop("algo", "lora" if module == "networks.lora" else None)
    if module not in ("networks.lora", "lycoris.kohya") or algo not in ("lora", "locon", "loha", "lokr"):
        raise UserError(f"{path}: network_module {module}{' algo=' + str(algo) if algo else ''} is not one personae "
                        "trains.", "Use networks.lora, or lycoris.kohya with algo=locon, loha or lokr.")
    conv = args.pop("conv_dim", None)
    conv_alpha = args.pop("conv_alpha", None)
    variant = "locon" if algo == "lora" and conv else algo
    if algo == "lora" and _true(args.pop("dora_wd", "false")):
        variant = "dora"
    lora["variant"] = variant
    preset = args.pop("preset", "full")
    if preset != "full":
        refused.append(f"network_args preset={preset} (LyCORIS' full preset is what personae trains)")
    if variant == "lora":
        lora["target_modules"] = KOHYA_TARGETS
    elif module == "lycoris.kohya":  # LyCORIS' full preset: attention, feed-forward, the resnets' convolutions
        lora["target_modules"] = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "proj_in", "proj_out",
                                  "ff.net.0.proj", "ff.net.2"]
    if conv and variant == "locon":
        lora["conv_rank"] = int(conv)
        if conv_alpha:
            lora["conv_alpha"] = float(conv_alpha)
    elif conv or conv_alpha:  # a rank of its own for the convolutions: personae's locon alone has one
        refused.append(f"network_args conv_dim / conv_alpha with algo={algo}{' and dora_wd' * (variant == 'dora')} "
                       "(personae gives the convolutions their own rank only in LoCon: algo=locon or networks.lora)")
    lora["rank"] = int(c.get("network_dim", 4))
    lora["alpha"] = float(c.get("network_alpha", 1))
    if c.get("network_dropout"):
        lora["dropout"] = float(c["network_dropout"])
    if "loraplus_lr_ratio" in args or c.get("loraplus_lr_ratio"):
        lora["loraplus_lr_ratio"] = float(args.pop("loraplus_lr_ratio", c.get("loraplus_lr_ratio")))
    for key, field in (("block_dims", "block_ranks"), ("block_alphas", "block_alphas")):
        if key in args:
            values = _numbers(args.pop(key), key)
            if len(values) != len(BLOCKS):
                raise UserError(f"network_args {key} has {len(values)} values; kohya's SD-1.5 blocks are 25 "
                                "(IN00-IN11, MID, OUT00-OUT11).")
            lora[field] = {b: (int(v) if field == "block_ranks" else v) for b, v in zip(BLOCKS, values)}
    if args:
        unknown += [f"network_args {k}={v}" for k, v in args.items()]
    if c.get("network_weights"):  # go on from a LoRA file: its layers, ranks and alphas make the adapter
        lora["init_from"] = str(c["network_weights"])
        shaped = [key for key in ("network_dim", "network_alpha") if c.get(key) is not None]
        shaped += [f"network_args {key}" for key in ("conv_dim", "conv_alpha", "block_dims", "block_alphas")
                   if key in _network_args(c.get("network_args"))]
        for key in INIT_SHAPE:
            lora.pop(key, None)
        if shaped:
            notes.append(f"{' / '.join(shaped)} (the adapter takes its layers, ranks and alphas from network_weights, "
                         "as kohya's dim_from_weights does; without it kohya stops when they differ from the file's)")
    lora["text_encoder"] = not c.get("network_train_unet_only", False)
    lr = float(c.get("unet_lr") or c.get("learning_rate") or 1e-4)
    t["learning_rate"] = lr
    if lora["text_encoder"] and c.get("text_encoder_lr"):
        lora["text_encoder_lr"] = float(c["text_encoder_lr"])
    # the loop
    if c.get("max_train_epochs"):
        t["epochs"] = int(c["max_train_epochs"])
    else:
        t["steps"] = int(c.get("max_train_steps", 1600))  # kohya's default
    simple = {"gradient_accumulation_steps": "gradient_accumulation",
              "max_grad_norm": "max_grad_norm", "seed": "seed", "clip_skip": "clip_skip",
              "noise_offset": "noise_offset", "multires_noise_iterations": "multires_noise_iterations",
              "multires_noise_discount": "multires_noise_discount", "ip_noise_gamma": "ip_noise_gamma",
              "ip_noise_gamma_random_strength": "ip_noise_gamma_random_strength", "min_snr_gamma": "min_snr_gamma",
              "debiased_estimation_loss": "debiased_estimation",
              "scale_v_pred_loss_like_noise_pred": "scale_v_pred_loss_like_noise_pred", "loss_type": "loss_type",
              "huber_c": "huber_c", "huber_schedule": "huber_schedule", "min_timestep": "min_timestep",
              "max_timestep": "max_timestep", "lr_scheduler_num_cycles": "lr_scheduler_num_cycles",
              "lr_scheduler_power": "lr_scheduler_power", "gradient_checkpointing": "gradient_checkpointing",
              "max_token_length": "max_token_length", "scale_weight_norms": "scale_weight_norms",
              "noise_offset_random_strength": "noise_offset_random_strength",
              "adaptive_noise_scale": "adaptive_noise_scale", "weighted_captions": "weighted_captions",
              "zero_terminal_snr": "zero_terminal_snr", "no_half_vae": "no_half_vae", "full_bf16": "full_bf16"}
    for key, field in simple.items():
        if c.get(key) is not None:
            t[field] = c[key]
    if c.get("train_batch_size") is not None and not c.get("dataset_config"):  # else the dataset's batch_size
        t["batch_size"] = c["train_batch_size"]
    t["mixed_precision"] = str(c.get("mixed_precision", "no"))
    scheduler = str(c.get("lr_scheduler", "constant")).lower()
    if scheduler not in SCHEDULERS:
        refuse("lr_scheduler", "use " + ", ".join(sorted(SCHEDULERS)))
    t["lr_scheduler"] = scheduler
    warmup = c.get("lr_warmup_steps", 0)
    if isinstance(warmup, float) and warmup < 1:  # kohya: a ratio of the steps
        if "steps" not in t:
            refuse("lr_warmup_steps", "a ratio of the steps needs max_train_steps; give the warm-up in steps")
        else:
            warmup = int(warmup * t["steps"])
    t["warmup_steps"] = int(warmup)
    optimizer = "adamw8bit" if c.get("use_8bit_adam") else "lion" if c.get("use_lion_optimizer") else \
        str(c.get("optimizer_type") or "AdamW").lower()
    if optimizer not in OPTIMIZERS:
        refuse("optimizer_type", "personae offers AdamW, AdamW8bit, Prodigy, Adafactor and Lion")
    t["optimizer"] = OPTIMIZERS.get(optimizer, "adamw")
    for item in _listed(c.get("optimizer_args")):
        key, _, value = (part.strip() for part in item.partition("="))
        if key == "weight_decay":
            t["weight_decay"] = float(value)
        elif optimizer == "adafactor" and key in ("scale_parameter", "relative_step", "warmup_init") \
                and not _true(value):
            continue  # what personae's Adafactor runs with
        else:
            unknown.append(f"optimizer_args {item}")
    job["output_dtype"] = PRECISION.get(str(c.get("save_precision", "float")), "fp32")
    cache = "disk" if c.get("cache_latents_to_disk") else "memory" if c.get("cache_latents") else "none"
    t["cache_latents"] = cache
    # the data (with a dataset_config, these keys are its fallbacks: read there)
    for key, (field, _) in SUBSET_DATA.items():
        if c.get(key) is not None and not c.get("dataset_config"):
            d[field] = c[key]
    if c.get("masked_loss"):
        d["masked_loss"] = "on"
    if c.get("vae"):
        job["vae"] = str(c["vae"])
    described = {field: str(c[key]) for key, field in METADATA.items() if c.get(key)}
    if described:
        job["metadata"] = described
    if c.get("reg_data_dir") and not c.get("dataset_config"):
        db.update(reg_data_dir(str(c["reg_data_dir"]), base))
    if c.get("prior_loss_weight") is not None:
        db["prior_loss_weight"] = float(c["prior_loss_weight"])
    if c.get("sample_prompts"):
        t["validation"], said = _prompts(str(c["sample_prompts"]), base)
        notes += said
        if c.get("sample_sampler") and "sampler" not in t["validation"]:  # a line's --ss wins, as in kohya
            t["validation"]["sampler"] = SAMPLERS.get(str(c["sample_sampler"]).lower(), "DDIM")
    placed = set(simple) | {
        "pretrained_model_name_or_path", "train_data_dir", "output_dir", "output_name", "network_module",
        "network_dim", "network_alpha", "network_dropout", "network_train_unet_only", "unet_lr", "learning_rate",
        "text_encoder_lr", "max_train_epochs", "max_train_steps", "mixed_precision", "lr_scheduler",
        "lr_warmup_steps", "optimizer_type", "optimizer_args", "use_8bit_adam", "use_lion_optimizer",
        "save_precision", "cache_latents", "cache_latents_to_disk", "shuffle_caption", "keep_tokens",
        "caption_dropout_rate", "caption_tag_dropout_rate", "caption_dropout_every_n_epochs", "flip_aug",
        "masked_loss", "reg_data_dir",
        "prior_loss_weight", "sample_prompts", "sample_sampler", "resolution", "enable_bucket", "caption_extension",
        "network_args", "loraplus_lr_ratio", "network_weights", "dim_from_weights", "vae", "dataset_config",
        "train_batch_size", "v_parameterization", *METADATA}
    for key, value in c.items():
        if key in placed or key in REFUSED:  # read above, or refused when set
            continue
        if key in NOT_NEEDED:
            if value not in (None, False, "", 0, []):
                notes.append(key + (f" ({NOT_NEEDED[key]})" if NOT_NEEDED[key] else ""))
        else:
            unknown.append(key)
    if refused or unknown:
        lines = [f"- {r}" for r in dict.fromkeys(refused)] + [f"- {u} (not a setting personae knows)" for u in unknown]
        # (once each: a key in the config or in [general] is every subset's fallback)
        raise UserError(f"{path} asks for what personae cannot train as asked:\n" + "\n".join(lines),
                        "Remove those keys (or set them to their defaults) and train again; every other key is read.")
    return job, notes


def _true(value) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def _listed(values) -> list[str]:
    if isinstance(values, str):
        return shlex.split(values)
    return [str(v) for v in values or []]
