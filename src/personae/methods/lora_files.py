"""LoRA files in the two layouts other tools read, written from (and read into) peft adapters.

kohya / A1111 layout (the default, what people share and what AUTOMATIC1111, ComfyUI and
kohya load): `lora_unet_<module path with _>.lora_down.weight`, `.lora_up.weight` and
`.alpha` (scale = alpha / rank); the SD-1 text encoder as `lora_te_text_model_<path>`.
Training metadata goes into the header under kohya's `ss_*` names.

diffusers / peft layout: `unet.<path>.lora_A.weight` ..., text encoder under its conventional
`text_encoder.text_model.` names. Each module's alpha / rank is multiplied into its up matrix and
the header says alpha = rank: diffusers before 0.34 ignores the adapter header and assumes alpha =
rank, so only this form gives the same image in every stack; the header is the few LoraConfig
fields (r, lora_alpha, target_modules) that every peft release accepts.

Reading goes through `models.lora_layouts`, the one reader of every layout found in the wild, so
`personae convert` accepts what `generate --lora` accepts (LyCORIS as its exact low-rank form).

diffusers' own `convert_state_dict_to_kohya` is not used: it writes alpha = rank and names
the text encoder `lora_te1_`, so its files load with a different output.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections import Counter
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from personae.errors import UserError
from personae.models.addons import lora_sources, read_lora_tensors
from personae.models.folders import save_safetensors
from personae.models.lora_layouts import TEXT, UNET, LoraFile, place, sd15_table, unplaced_message
from personae.models.lora_math import NO_PEFT_FORM
from personae.models.lora_weight_forms import NEEDS_BASE
from personae.models.peft_merged import merged_type

_PEFT_KEY = re.compile(r"^(?P<module>.+)\.(?:lora_(?P<part>A|B)(?:\.[^.]+)?\.weight"
                       r"|(?P<magnitude>lora_magnitude_vector)(?:\.[^.]+)?(?:\.weight)?)$")
_TE_PREFIX = "lora_te_text_model_"


def _module_weights(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{module: {"A": down, "B": up[, "M": DoRA magnitude]}} of a peft LoRA state dict."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = _PEFT_KEY.match(key)
        if match:
            modules.setdefault(match.group("module"), {})[match.group("part") or "M"] = value
    return modules


def _alpha(alphas: dict[str, float] | float, module: str, rank: int) -> float:
    return float(alphas) if isinstance(alphas, (int, float)) else float(alphas.get(module, rank))


def magnitude_key(component: str) -> str:
    """DoRA's magnitude parameter name: peft's loader (the UNet's) adds `.weight` itself, transformers' adapter
    loader (the text encoder's) does not, so there it is spelled out."""
    return "lora_magnitude_vector.weight" if component == "text_encoder" else "lora_magnitude_vector"


def dora_scale(magnitude: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """peft's DoRA magnitude ((out,) for a Linear, (1, out, 1, 1) for a Conv2d) as LyCORIS writes `dora_scale` with
    wd_on_out: (out, 1) / (out, 1, 1, 1), one value per output channel (ComfyUI tells the axis by this shape)."""
    return magnitude.reshape(-1, *[1] * (down.dim() - 1))


_ATTENTION = re.compile(r"(^|\.)attn\d\.(to_q|to_k|to_v|to_out\.0)$")


def diffusers_safe_alphas(alphas: dict[str, float]) -> dict[str, float]:
    """The alpha each module's key carries in a kohya file: its own, unless diffusers would misread it.

    diffusers (0.42) converts a kohya file's alphas into peft's lora_alpha (the most common one) plus an
    alpha_pattern, but names the attention projections' entries by their old processor names
    (`attn1.processor.to_q_lora...`), which match no layer: an attention layer whose alpha is not the file's most
    common one loads at the wrong scale (block_alphas, or locon's conv_alpha where convolutions outnumber the
    attention layers). Then every module carries the most common alpha and its up matrix the difference (up x
    alpha / written alpha): the same weight change in every reader (A1111, ComfyUI, kohya, diffusers)."""
    values = {m: float(torch.tensor(a, dtype=torch.float32)) for m, a in alphas.items()}
    counts = Counter(values.values()).most_common()
    if not counts:
        return values
    common = counts[0][0]
    strict = len(counts) == 1 or counts[0][1] > counts[1][1]
    if strict and all(a == common for m, a in values.items() if _ATTENTION.search(m)):
        return values
    return {m: common for m in values}


def peft_to_kohya(unet_state: dict[str, torch.Tensor], te_state: dict[str, torch.Tensor] | None,
                  unet_alpha: dict[str, float] | float, te_alpha: dict[str, float] | float | None = None,
                  dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """peft LoRA / DoRA state dicts (keys relative to the UNet / text encoder) -> kohya tensors in `dtype`.

    Alphas are one number or {module: alpha}; a DoRA magnitude becomes `dora_scale` (LyCORIS' name)."""
    out = {}
    parts = [("lora_unet_", unet_state, unet_alpha)]
    if te_state:
        parts.append((_TE_PREFIX, te_state, te_alpha if te_alpha is not None else unet_alpha))
    for prefix, state, alphas in parts:
        modules = _module_weights(state)
        trained = {module: _alpha(alphas, module, w["A"].shape[0]) for module, w in modules.items()}
        written = diffusers_safe_alphas(trained)
        for module, w in modules.items():
            alpha, up = written[module], w["B"].detach().to("cpu", torch.float32) * (trained[module] / written[module])
            module = module.removeprefix("text_model.")  # transformers < 5 nests the text model
            name = prefix + module.replace(".", "_")
            out[f"{name}.lora_down.weight"] = w["A"].detach().to("cpu", dtype).contiguous()
            out[f"{name}.lora_up.weight"] = up.to(dtype).contiguous()
            out[f"{name}.alpha"] = torch.tensor(alpha, dtype=dtype)
            if "M" in w:
                out[f"{name}.dora_scale"] = dora_scale(w["M"], w["A"]).detach().to("cpu", dtype).contiguous()
    return out


DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"


def write_diffusers(folder: Path, parts: dict[str, tuple[dict[str, torch.Tensor], dict[str, float] | float]],
                    metadata: dict[str, str] | None = None, dtype: torch.dtype = torch.float32) -> Path:
    """Write `folder/pytorch_lora_weights.safetensors` from peft-style states, tensors in `dtype`.

    parts: {"unet" | "text_encoder": (state with `<module>.lora_A/B.weight` keys, alpha or {module: alpha})}.
    """
    tensors, header = {}, {}
    for part, (state, alphas) in parts.items():
        modules = _module_weights(state)
        if not modules:
            continue
        for module, w in modules.items():
            rank = w["A"].shape[0]
            alpha = _alpha(alphas, module, rank)
            name = module
            if part == "text_encoder" and not module.startswith("text_model."):
                name = "text_model." + module  # transformers 4's names; diffusers strips them for transformers 5
            tensors[f"{part}.{name}.lora_A.weight"] = w["A"].detach().to("cpu", dtype).contiguous()
            up = w["B"].detach().to("cpu", torch.float32) * (alpha / rank)
            tensors[f"{part}.{name}.lora_B.weight"] = up.to(dtype).contiguous()
            if "M" in w:  # DoRA: peft's magnitude, under peft's name (diffusers then loads it with use_dora)
                tensors[f"{part}.{name}.{magnitude_key(part)}"] = w["M"].detach().to("cpu", dtype).contiguous()
        ranks = {m: w["A"].shape[0] for m, w in modules.items()}
        common = max(set(ranks.values()), key=list(ranks.values()).count)
        header[f"{part}.r"] = common
        header[f"{part}.lora_alpha"] = common
        # module paths without `text_model.`: peft matches them as suffixes under either transformers' names
        header[f"{part}.target_modules"] = sorted(m.removeprefix("text_model.") for m in modules)
        if any("M" in w for w in modules.values()):
            header[f"{part}.use_dora"] = True
        if any(r != common for r in ranks.values()):
            odd = {m.removeprefix("text_model."): r for m, r in ranks.items() if r != common}
            header[f"{part}.rank_pattern"], header[f"{part}.alpha_pattern"] = odd, odd
    if not tensors:
        raise ValueError("there are no LoRA weights to write")
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", "lora_adapter_metadata": json.dumps(header, sort_keys=True)}
    meta.update(metadata or {})
    return save_safetensors(tensors, folder / DIFFUSERS_FILE, meta)


def write_kohya(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """The kohya file, with sd-scripts' precomputed hashes (A1111 reads `sshs_model_hash` instead of hashing)."""
    meta = {k: str(v) for k, v in metadata.items()}
    meta.update(kohya_hashes(tensors, meta))
    return save_safetensors(tensors, path, meta)


def write_a1111_card(lora_file: Path, trigger: str, base_model: str) -> Path:
    """A1111's user metadata for the LoRA's card: `NAME.json` beside `NAME.safetensors`, as its "Edit metadata"
    dialog writes it. A click on the card adds `<lora:NAME:weight>` and the activation text (the trigger) to the
    prompt; "sd version" SD1 lists it with SD-1 models; "preferred weight" 0 leaves the weight to A1111's default."""
    from personae.staging import atomic_file

    card = {"description": f"trained with personae on {base_model}", "sd version": "SD1", "activation text": trigger,
            "preferred weight": 0, "negative text": "", "notes": ""}
    path = lora_file.with_suffix(".json")
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(card, indent=4, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def kohya_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, str]:
    """sd-scripts' `sshs_model_hash` (sha256 of the tensor bytes after the header: A1111's LoRA hash) and
    `sshs_legacy_hash` (8 hex digits of the sha256 of 64 KiB at 1 MiB), over the file with its ss_* header."""
    from safetensors.torch import save

    data = save(tensors, metadata={k: v for k, v in metadata.items() if k.startswith("ss_")})
    (header_len,) = struct.unpack("<Q", data[:8])
    return {"sshs_model_hash": hashlib.sha256(data[8 + header_len:]).hexdigest(),
            "sshs_legacy_hash": hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]}


def training_metadata(path: Path) -> dict[str, str]:
    """The header fields that describe how a LoRA was made (kohya's ss_*, modelspec.*, ours), to carry across
    a conversion; the file's own hashes are recomputed for the new file."""
    meta = {}
    for file, _ in lora_sources(Path(path)):  # a file, or each adapter file of a peft folder
        try:
            with safe_open(str(file), framework="pt") as fh:
                meta |= fh.metadata() or {}
        except (SafetensorError, OSError):
            continue  # a pickled LoRA (read with --allow-pickle) carries no header
    return {k: v for k, v in meta.items() if k.startswith(("ss_", "modelspec.", "personae_"))}


def kohya_metadata(*, rank: int, alpha: float, steps: int, base_model: str, trigger: str, name: str,
                   te_trained: bool, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The header fields kohya sd-scripts writes (those A1111 and civitai read).

    `base_model` is the model's name (folder or file name, or hub id), never a path of this machine; `extra`
    carries the dataset's fields (`data.stats.DatasetStats.kohya_fields`) and the training settings."""
    meta = {
        "ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": f"{alpha:g}",
        "ss_base_model_version": "sd_v1", "ss_sd_model_name": base_model, "ss_output_name": name,
        "ss_steps": str(steps), "ss_training_comment": f"trained with personae; trigger: {trigger}" if trigger else "",
        "ss_network_args": json.dumps({"text_encoder": te_trained}),
        "ss_tag_frequency": json.dumps({}),
        "modelspec.architecture": "stable-diffusion-v1/lora", "modelspec.title": name,
        "personae_trigger": trigger,
        **({"modelspec.trigger_phrase": trigger} if trigger else {}),  # the model spec's: what UIs add to a prompt
    }
    meta.update(extra or {})
    return meta


def read_lora_file(path: Path, allow_pickle: bool = False) -> LoraFile:
    """A LoRA-family file in any layout `lora_layouts` reads, every key placed on an SD-1.x module by name.

    No model is at hand here, so sizes are not checked (a LoRA for the tiny model converts too).
    """
    tensors, header, configs = read_lora_tensors(path, allow_pickle)  # a file, or a peft adapter folder
    if not tensors:
        raise ValueError("it holds no tensors")
    if merged_type(configs):
        raise UserError(f"{path} cannot be converted: it is a peft {merged_type(configs)} adapter, which {NEEDS_BASE}.",
                        "Use it as it is: personae generate --lora applies it, and peft's PeftModel loads it.")
    lora = place(path, tensors, header, sd15_table(), check_sizes=False, configs=configs)
    needs_base = next(((keys[0], why) for keys, why in lora.unplaced if why.endswith((NEEDS_BASE, NO_PEFT_FORM))),
                      None)
    if needs_base:  # OFT, BOFT, GLoRA, IA3 (each weight recomputed from the base model's), DoRA on the input axis
        key, why = needs_base
        raise UserError(f"{path} cannot be converted: {key.rsplit('.', 1)[0]}: {why}.",
                        "Use the file as it is: personae generate --lora, A1111 and ComfyUI apply it.")
    if lora.unplaced:
        raise ValueError(unplaced_message(lora, len(tensors)))
    if lora.patches:
        (component, module), *_ = lora.patches
        raise UserError(f"{path} cannot be converted: it changes {len(lora.patches)} normalisation layers or "
                        f"embeddings (e.g. the {component}'s {module}), which the converted file would not hold.",
                        "Use the file as it is: personae generate --lora, A1111 and ComfyUI apply it.")
    if any(change.bias is not None for change in lora.changes.values()):
        raise ValueError("it changes layer biases (a full-diff diff_b), which a LoRA file cannot hold")
    if lora.embeddings:
        raise ValueError(f"it bundles the embeddings {', '.join(lora.embeddings)} (bundle_emb keys), which the "
                         "converted file would lose; personae generate --lora reads the file as it is")
    return lora


def _resized(lora: LoraFile, spec, notes: list[str] | None) -> dict[str, str]:
    """`spec` (methods.lora_resize.Resize) applied to the read file; the header fields that change with it."""
    if spec is None:
        return {}
    from personae.methods.lora_resize import resize

    said = resize(lora, spec)
    if notes is not None:
        notes.append(said)
    ranks = {c.rank for c in lora.changes.values()}
    alphas = {float(c.alpha) for c in lora.changes.values()}
    return {"ss_network_dim": str(max(ranks)) if not spec.dynamic_method else "Dynamic",
            "ss_network_alpha": f"{max(alphas):g}" if not spec.dynamic_method else "Dynamic",
            "personae_resized": said}


def kohya_to_diffusers_file(src: Path, dst_folder: Path, allow_pickle: bool = False, resize=None,
                            notes: list[str] | None = None, dtype: torch.dtype = torch.float32) -> Path:
    """Convert a LoRA in any layout personae reads (kohya in either spelling, the old processor layout,
    LyCORIS as its exact low-rank form) to the diffusers/peft layout, keeping its training metadata; with `resize`
    (methods.lora_resize.Resize) at a lower rank, what was done appended to `notes`."""
    lora = read_lora_file(src, allow_pickle)
    changed = _resized(lora, resize, notes)
    meta = dict(training_metadata(src), personae_converted_from=src.name, **changed)
    return write_diffusers_changes(lora.changes, dst_folder, meta, dtype)


def write_diffusers_changes(changes: dict, dst_folder: Path, meta: dict[str, str],
                            dtype: torch.dtype = torch.float32) -> Path:
    """A read (or merged) file's changes in the diffusers / peft layout."""
    parts = {}
    for component in (UNET, TEXT):
        mine = {module: c for (comp, module), c in changes.items() if comp == component}
        state = {}
        for module, change in mine.items():
            state[f"{module}.lora_A.weight"], state[f"{module}.lora_B.weight"] = change.down, change.up
            if change.magnitude is not None:
                state[f"{module}.{magnitude_key(component)}"] = change.magnitude
        parts[component] = (state, {module: float(change.alpha) for module, change in mine.items()})
    return write_diffusers(dst_folder, parts, meta, dtype)


def diffusers_to_kohya_file(src: Path, dst: Path, allow_pickle: bool = False, resize=None,
                            notes: list[str] | None = None, dtype: torch.dtype = torch.float32) -> Path:
    """Convert a LoRA in any layout but kohya's to the kohya/A1111 layout, keeping each module's alpha; with `resize`
    any layout, kohya's too, at a lower rank (kohya's resize_lora), what was done appended to `notes`."""
    lora = read_lora_file(src, allow_pickle)
    if lora.naming in ("kohya", "kohya-ldm") and resize is None:
        raise ValueError(f"{src} is already in the kohya layout (give --rank to resize it)")
    changed = _resized(lora, resize, notes)
    meta = dict(training_metadata(src), personae_converted_from=src.name, **changed)
    return write_kohya_changes(lora.changes, dst, meta, dtype)


def write_kohya_changes(changes: dict, dst: Path, meta: dict[str, str], dtype: torch.dtype = torch.float32) -> Path:
    """A read (or merged) file's changes in the kohya / A1111 layout (LyCORIS' module name for DoRA)."""
    out = {}
    for (component, module), change in sorted(changes.items()):
        prefix = "lora_unet_" if component == UNET else _TE_PREFIX
        name = prefix + module.removeprefix("text_model.").replace(".", "_")
        out[f"{name}.lora_down.weight"] = change.down.to(dtype).contiguous()
        out[f"{name}.lora_up.weight"] = change.up.to(dtype).contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(change.alpha), dtype=dtype)
        if change.magnitude is not None:
            out[f"{name}.dora_scale"] = dora_scale(change.magnitude, change.down).to(dtype)
    dora = any(change.magnitude is not None for change in changes.values())
    header = {"ss_network_module": "lycoris.kohya" if dora else "networks.lora", "ss_base_model_version": "sd_v1"}
    header.update(meta)
    return write_kohya(dst, out, header)


def merge_lora_files(sources: list[tuple[Path, float]], dst: Path, to: str, spec, clamp_quantile: float = 0.99,
                     allow_pickle: bool = False, dtype: torch.dtype = torch.float32) -> tuple[Path, str]:
    """Several LoRA files at their weights as one (kohya's svd_merge_lora; methods.lora_resize.merge), written in
    the kohya layout (`to` "kohya", dst a file) or the diffusers one (dst a folder); returns (file, what was done)."""
    from personae.methods.lora_resize import merge

    loras = [(read_lora_file(Path(path), allow_pickle), weight) for path, weight in sources]
    changes, said = merge(loras, spec, clamp_quantile)
    meta = {"ss_network_dim": str(spec.rank), "ss_network_alpha": f"{float(spec.rank):g}",
            "ss_network_args": json.dumps({"conv_dim": str(spec.conv_rank), "conv_alpha": f"{float(spec.conv_rank):g}"}
                                          if spec.conv_rank else {}),
            "personae_merged_from": json.dumps([[Path(path).name, weight] for path, weight in sources]),
            "personae_merged": said}
    if to == "kohya":
        return write_kohya_changes(changes, dst, meta, dtype), said
    return write_diffusers_changes(changes, dst, meta, dtype), said
