"""LoRA-family files in every layout found in the wild, read into one form and placed on an SD-1.x model.

The one place that knows how files name a module:

  kohya / A1111   `lora_unet_<module path with _>.<param>`, `lora_te_[text_model_]...` (diffusers
                  writes `lora_te1_`); the UNet path in the diffusers spelling (down_blocks_0_...)
                  or the LDM spelling (input_blocks_1_1_..., middle_block_..., output_blocks_...,
                  in_layers_2, time_embed_0, out_2), mapped by `original_layout`.
  processor       the 2023 diffusers scripts: `[unet.]<attention>.processor.to_q_lora.down.weight`,
                  `text_encoder.text_model.<layer>.self_attn.to_q_lora.up.weight`, `...lora_linear_layer...`.
  diffusers/peft  `unet.<path>.lora_A.weight` / `lora_B.weight` / `lora.down.weight`, `text_encoder.<path>`
                  with or without `text_model.`; alphas from the `lora_adapter_metadata` header.
  peft adapter    `base_model.model.<path>` (PeftModel.save_pretrained), scales from adapter_config.json.
  LyCORIS         `lycoris_<UNet path with _>` (its generic wrapper, SimpleTuner).
  kohya OFT       `oft_unet_<UNet path with _>` (sd-scripts' networks.oft).
  ComfyUI         `diffusion_model.<LDM path>`, `text_encoders.clip_l.transformer.text_model.<path>`.
  OMI             `unet.<LDM path>`, `clip_l.text_model.<path>` (OneTrainer).

Parameters (`lora_down`/`lora_up`/`lora_mid`/`alpha`, LyCORIS `hada_*`, `lokr_*`, `diff`/`diff_b`, `dora_scale`)
become one exact low-rank change per module (`lora_math`); the forms made from a layer's own weight (`oft_blocks`/
`rescale`, GLoRA `a1.weight`..., IA3 `weight`/`on_input`: `lora_weight_forms`) and changes to normalisation
layers and embeddings (`diff`/`diff_b`, `w_norm`/`b_norm`, a LoRA pair on a token table) are kept apart, applied
beside their layers (`layer_patches`). Every key
must land on a layer of the model with matching sizes; a file where any does not is refused, naming the keys
(LyCORIS forms personae does not apply by what they are),
and a file made for SDXL or SD-2 is named as such in one line. `bundle_emb.<token>.*` keys are
embeddings bundled with the LoRA (A1111 reads them): kept apart for the loader.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import torch
from peft.utils.other import get_pattern_key

from personae.errors import UserError
from personae.models.layer_patches import PATCHED, Patch, patch_of
from personae.models.lora_math import FROM_BASE, LowRank, dora_on_input, kind_label, kind_of, low_rank
from personae.models.lora_weight_forms import prepare
from personae.models.original_layout import unet_module_names_to_original

UNET, TEXT = "unet", "text_encoder"
NAMINGS = {
    "kohya": "kohya/A1111 names (diffusers spelling: lora_unet_down_blocks_...)",
    "kohya-ldm": "kohya/A1111 names (LDM spelling: lora_unet_input_blocks_...)",
    "kohya-oft": "kohya's OFT names (oft_unet_down_blocks_..., sd-scripts' networks.oft)",
    "processor": "the old diffusers attention-processor layout (...processor.to_q_lora.down.weight, 2023 scripts)",
    "peft": "the diffusers/peft layout (unet.<module>.lora_A.weight)",
    "lycoris": "LyCORIS' own names (lycoris_down_blocks_..., as SimpleTuner and create_lycoris write them)",
    "comfyui": "ComfyUI's model-key names (diffusion_model.input_blocks..., text_encoders.clip_l.transformer...)",
    "omi": "the Open Model Initiative layout (unet.input_blocks..., clip_l.text_model..., OneTrainer's)",
    "peft-adapter": "peft's own adapter layout (adapter_model.safetensors + adapter_config.json, base_model.model...)",
    "animatediff": "AnimateDiff's MotionLoRA layout (...motion_modules.0.temporal_transformer...attention_blocks.0."
                   "processor.to_q_lora.down.weight)",
}
_PARAM = re.compile(
    r"^(?P<name>.+?)\.(?P<param>lora_(?:down|up|mid)\.weight|lora\.(?:down|up)\.weight|lora_[AB](?:\.[\w-]+)?\.weight"
    r"|lora_B(?:\.[\w-]+)?\.bias|(?:down|up)\.weight|alpha|hada_\w+|lokr_\w+|diff(?:_b)?|dora_scale|[wb]_norm|scale"
    r"|lora_magnitude_vector(?:\.[\w-]+)?(?:\.weight)?|oft_blocks|oft_diag|rescale|[ab][12]\.weight|on_input"
    r"|weight)$")  # a bare `weight` is IA3's, beside its on_input
_CANONICAL = [(re.compile(r"^(lora_down|lora\.down|lora_A(\.[\w-]+)?|down)\.weight$"), "down"),
              (re.compile(r"^(lora_up|lora\.up|lora_B(\.[\w-]+)?|up)\.weight$"), "up"),
              (re.compile(r"^lora_B(\.[\w-]+)?\.bias$"), "up_bias"), (re.compile(r"^lora_mid\.weight$"), "mid"),
              (re.compile(r"^lora_magnitude_vector(\.[\w-]+)?(\.weight)?$"), "dora_scale")]
_PROCESSOR = [(re.compile(r"\.processor\.to_(q|k|v)_lora$"), r".to_\1"), (re.compile(r"\.processor\.to_out_lora$"), ".to_out.0"),
              (re.compile(r"\.self_attn\.to_(q|k|v)_lora$"), r".self_attn.\1_proj"),
              (re.compile(r"\.self_attn\.to_out_lora$"), ".self_attn.out_proj"), (re.compile(r"\.lora_linear_layer$"), "")]
_SHOWN = 3  # modules whose unplaced keys a refusal names
# why a key on another layer is not placed
_NOT_LINEAR = ", and personae changes Linear, Conv2d, normalisation and embedding layers only"
# LyCORIS forms that are no low-rank change of a Linear / Conv2d weight, each known by a parameter only it has:
# (suffix, what the file holds, which tools apply it)
_FOREIGN = [(".oft_diag", "OFT modules in LyCORIS 1's layout (oft_diag: the rotation itself; LyCORIS 2 and later write "
                          "oft_blocks, which personae reads)", "A1111 applies them"),
            (".lambda_layer", "T-LoRA modules", "LyCORIS itself applies them")]


@dataclass
class ModuleTable:
    """Where a file's names can land: every Linear / Conv2d of the UNet and text encoder, under every spelling."""

    shapes: dict[tuple[str, str], tuple[int, ...]]  # (component, module path) -> weight shape
    spellings: dict[str, tuple[str, str, str]]  # a file's module name -> (component, module path, naming)
    family: str = "SD-1"  # the model's: files for another family are named as such
    # a file's module name -> (component, module path, class) for the other layers with a weight: normalisation layers
    # and embeddings take changes outside peft (layer_patches), any other is named in a refusal
    others: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    # (component, module path) -> the layer itself: the Linear / Conv2d whose weight OFT / GLoRA / IA3 changes are
    # made from, and the other layers (empty for a table of names and shapes only)
    modules: dict[tuple[str, str], torch.nn.Module] = field(default_factory=dict)


@dataclass
class LoraFile:
    """A file read, placed and turned into one low-rank change per module."""

    path: Path
    layout: str  # described for people: naming and kinds
    naming: str = ""  # the NAMINGS key most of its modules use
    changes: dict[tuple[str, str], LowRank] = field(default_factory=dict)
    unplaced: list[tuple[list[str], str]] = field(default_factory=list)  # (keys of one module, why not placed)
    layers: int = 0  # modules the file holds weights for
    # (the file's module name, the model's (out, in), the file's (out, in)) of every layer whose sizes differ
    misfits: list[tuple[str, tuple[int, int], tuple[int, int]]] = field(default_factory=list)
    # changes to normalisation layers and embeddings (layer_patches): (component, module path) -> change
    patches: dict[tuple[str, str], Patch] = field(default_factory=dict)
    # textual-inversion embeddings bundled in the file (A1111's bundle_emb.<token>.<vectors>, written by OneTrainer
    # for a LoRA trained with its embeddings): token -> (key, vectors as stored)
    embeddings: dict[str, tuple[str, torch.Tensor]] = field(default_factory=dict)
    kinds: Counter = field(default_factory=Counter)  # modules per kind: LoRA, LoCon, DoRA, LoHa, LoKr, full, ...


def _layers(model) -> tuple[dict[str, torch.nn.Module], dict[str, torch.nn.Module]]:
    """Linear / Conv2d modules by name (through a peft LoRA layer to the original it wraps), and the other layers
    with a weight of their own (normalisation layers, embeddings)."""
    layers, others = {}, {}
    for name, module in model.named_modules():
        if ".base_layer" in name or ".lora_" in name:
            continue  # a loaded LoRA's own parts
        base = getattr(module, "base_layer", module)
        if isinstance(base, (torch.nn.Linear, torch.nn.Conv2d)):
            layers[name] = base
        elif name and isinstance(getattr(base, "weight", None), torch.Tensor):
            others[name] = base
    return layers, others


def _unet_spellings(module: str) -> list[tuple[str, str]]:
    under = module.replace(".", "_")
    return [("lora_unet_" + under, "kohya"), ("lycoris_" + under, "lycoris"),  # LyCORIS' wrapper (ComfyUI reads it)
            ("oft_unet_" + under, "kohya-oft"),
            ("unet." + module, "peft"), (module, "peft"), ("base_model.model." + module, "peft-adapter")]


_MOTION_RENAMES = ((".attn1.", ".attention_blocks.0."), (".attn2.", ".attention_blocks.1."), (".norm1", ".norms.0"),
                   (".norm2", ".norms.1"), (".norm3", ".ff_norm"))


def _motion_spellings(module: str) -> list[tuple[str, str]]:
    """A motion module's layer as AnimateDiff's own files name it (the MotionLoRA .ckpt files, the original motion
    modules): `...motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.to_q`."""
    original = re.sub(r"(\.motion_modules\.\d+)\.", r"\1.temporal_transformer.", module)
    for diffusers_name, animatediff_name in _MOTION_RENAMES:
        original = original.replace(diffusers_name, animatediff_name)
    return [(original, "animatediff"), ("unet." + original, "animatediff")]


def _ldm_spellings(ldm: str) -> list[tuple[str, str]]:
    return [("lora_unet_" + ldm.replace(".", "_"), "kohya-ldm"), ("diffusion_model." + ldm, "comfyui"),
            ("unet." + ldm, "omi")]


def _text_spellings(module: str) -> list[tuple[str, str]]:
    path = module.removeprefix("text_model.")  # transformers 4 has the level, 5 does not
    under = path.replace(".", "_")
    kohya = [(prefix + under, "kohya") for prefix in ("lora_te_", "lora_te_text_model_", "lora_te1_",
                                                       "lora_te1_text_model_")]
    peft = [(prefix + path, "peft") for prefix in ("text_encoder.", "text_encoder.text_model.", "", "text_model.")]
    adapter = [(prefix + path, "peft-adapter") for prefix in ("base_model.model.text_model.", "base_model.model.")]
    return kohya + peft + adapter + [("text_encoders.clip_l.transformer.text_model." + path, "comfyui"),
                                     ("clip_l.text_model." + path, "omi")]


def module_table(unet, text_encoder, with_weights: bool = True) -> ModuleTable:
    """Where a file's names land on these models; `with_weights`: keep the layers themselves (for the forms made
    from the base weight), not only their names and shapes."""
    (unet_layers, unet_others), (text_layers, text_others) = _layers(unet), _layers(text_encoder)
    ldm = unet_module_names_to_original(list(unet_layers) + list(unet_others), dict(unet.config))
    modules = {(UNET, m): layer for m, layer in unet_layers.items()} | {(TEXT, m): layer for m, layer in
                                                                       text_layers.items()}
    shapes = {key: tuple(layer.weight.shape) for key, layer in modules.items()}
    modules |= {(UNET, m): layer for m, layer in unet_others.items()} | {(TEXT, m): layer for m, layer in
                                                                        text_others.items()}
    named = [(UNET, m, _unet_spellings(m)) for m in unet_layers] + [(TEXT, m, _text_spellings(m)) for m in text_layers]
    named += [(UNET, m, _ldm_spellings(ldm[m])) for m in unet_layers if m in ldm]  # the diffusers names win
    named += [(UNET, m, _motion_spellings(m)) for m in unet_layers if ".motion_modules." in m]  # a motion UNet's
    spellings = {}
    for component, module, names in named:
        for name, naming in names:
            spellings.setdefault(name, (component, module, naming))
    others = {}
    for module, layer in unet_others.items():
        for name, _ in _unet_spellings(module) + (_ldm_spellings(ldm[module]) if module in ldm else []):
            others.setdefault(name, (UNET, module, type(layer).__name__))
    for module, layer in text_others.items():
        for name, _ in _text_spellings(module):
            others.setdefault(name, (TEXT, module, type(layer).__name__))
    cross = unet.config.cross_attention_dim
    return ModuleTable(shapes, spellings, "SDXL" if cross == 2048 else "SD-2" if cross == 1024 else "SD-1", others,
                       modules if with_weights else {})


@cache
def sd15_table() -> ModuleTable:
    """The table of the SD-1.5 architecture (configs shipped in the package), for reading files with no model at hand."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from personae.models.tiny import SD15_DIR

    with torch.device("meta"):  # names and shapes only: no memory, no init time
        unet = UNet2DConditionModel.from_config(json.loads((SD15_DIR / "unet" / "config.json").read_text()))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(str(SD15_DIR / "text_encoder")))
    return module_table(unet, text_encoder, with_weights=False)


def _split(key: str) -> tuple[str, str] | None:
    """(module name as the file spells it, canonical parameter name), or None for a key of no known form."""
    match = _PARAM.match(key)
    if not match:
        return None
    name, param = match["name"], match["param"]
    for pattern, canonical in _CANONICAL:
        if pattern.match(param):
            return name, canonical
    return name, param


def _resolve(name: str, table: ModuleTable) -> tuple[str, str, str] | None:
    if name in table.spellings:
        return table.spellings[name]
    for pattern, repl in _PROCESSOR:
        renamed = pattern.sub(repl, name)
        if renamed != name and renamed in table.spellings:
            component, module, naming = table.spellings[renamed]
            return component, module, "animatediff" if naming == "animatediff" else "processor"
    return None


def _in_width(params: dict[str, torch.Tensor]) -> int | None:
    """Input width of a Linear's change, read from the file's own tensors (used to tell model families apart)."""
    if "down" in params:
        return params["down"].shape[1]
    if "hada_w1_b" in params:
        return params["hada_w1_b"].shape[1]
    if "diff" in params:  # a 1-D diff belongs to a normalisation layer: no width to read
        return params["diff"].shape[1] if params["diff"].ndim >= 2 else None
    if "a2.weight" in params:  # GLoRA: a2 (rank, in)
        return params["a2.weight"].shape[1]
    w1, w2 = params.get("lokr_w1", params.get("lokr_w1_b")), params.get("lokr_w2", params.get("lokr_w2_b"))
    return w1.shape[1] * w2.shape[1] if w1 is not None and w2 is not None and w2.ndim == 2 else None


FAMILIES = {"SD-1": "Stable Diffusion 1.x", "SD-2": "SD-2", "SDXL": "SDXL"}


def file_family(keys: list[str], metadata: dict[str, str], groups: dict[str, dict]) -> tuple[str, str] | None:
    """("SDXL" or "SD-2", the evidence) when the file shows it was made for one of them, else None."""
    header = f'{metadata.get("ss_base_model_version", "")} {metadata.get("modelspec.architecture", "")}'.lower()
    if "sdxl" in header or "stable-diffusion-xl" in header:
        return "SDXL", f'its header says "{header.strip()}"'
    if metadata.get("ss_v2") == "True" or "sd_v2" in header or "stable-diffusion-v2" in header:
        return "SD-2", f'its header says "{header.strip() or "ss_v2"}"'
    if any(k.startswith(("lora_te2_", "text_encoder_2.")) for k in keys):
        return "SDXL", "it has weights for a second text encoder (lora_te2_ keys)"
    if any(re.search(r"transformer_blocks[._][1-9]", k) for k in keys):
        return "SDXL", "its attention layers hold several transformer blocks (SD 1.x has one)"
    for name, params in groups.items():
        width = _in_width(params)
        if re.search(r"attn2[._](processor[._])?to_[kv]", name) and width in (1024, 2048):
            family = "SDXL" if width == 2048 else "SD-2"
            return family, f"its cross-attention reads {width}-wide text features (SD 1.x: 768)"
        if name.startswith(("lora_te", "text_encoder")) and width in (1024, 1280):
            family = "SDXL" if width == 1280 else "SD-2"
            return family, f"its text-encoder layers are {width} wide (SD 1.x: 768)"
    return None


def adapter_metadata(header: dict[str, str]) -> dict:
    """The diffusers/peft file's adapter configs ({"unet.lora_alpha": 8, ...}), {} without one."""
    try:
        return json.loads(header.get("lora_adapter_metadata") or "{}")
    except ValueError:
        return {}


def _peft_scaled(params: dict[str, torch.Tensor], configs: dict, component: str, module: str) -> dict:
    """A diffusers / peft module's parameters with the alpha that makes the readers' alpha / rank peft's own scale.

    The config ({"unet.lora_alpha": 8, ...}): lora_alpha / r (alpha / sqrt(r) with use_rslora) for LoRA, alpha / r
    for LoHa and LoKr, each through alpha_pattern / rank_pattern; no config: alpha = rank, as diffusers assumes.
    A LoKr with both factors full is scaled by 1 by the readers and by alpha / r by peft: lokr_w1 takes the scale.
    """
    config = {k[len(component) + 1:]: v for k, v in configs.items() if k.startswith(component + ".")}

    def pattern(name: str, default):  # peft's own lookup of rank_pattern / alpha_pattern
        patterns = config.get(name) or {}
        return patterns.get(get_pattern_key(list(patterns), module), default)

    if "down" in params:
        rank = params["down"].shape[0]
        alpha = float(pattern("alpha_pattern", config.get("lora_alpha", rank)))
        return params | {"alpha": torch.tensor(alpha * math.sqrt(rank) if config.get("use_rslora") else alpha)}
    r = int(pattern("rank_pattern", config.get("r", 0)))
    if not r:
        return params
    alpha = float(pattern("alpha_pattern", config.get("alpha", r)))
    if "lokr_w1" in params and "lokr_w2" in params:
        return params | {"lokr_w1": params["lokr_w1"].float() * (alpha / r)}
    return params | {"alpha": torch.tensor(alpha)}


def describe(namings: Counter, kinds: Counter) -> str:
    naming = NAMINGS[namings.most_common(1)[0][0]] if namings else "no layout personae knows"
    return naming + (", " + " + ".join(k for k, _ in kinds.most_common()) if kinds else "")


def place(path: Path, tensors: dict[str, torch.Tensor], header: dict[str, str], table: ModuleTable,
          check_sizes: bool = True, configs: dict | None = None) -> LoraFile:
    """Read every key onto a module of `table`; refuse SDXL / SD-2 files. Unplaced keys are listed, not dropped.

    `configs`: peft adapter configs read beside the file ({"unet.r": 8, ...}), added to the header's own."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    key_of: dict[tuple[str, str], str] = {}
    result = LoraFile(path, "")
    for key in tensors:
        if key.startswith("bundle_emb."):  # A1111 reads any one tensor per token (string_to_param.*, emb_params, ...)
            token = key.split(".")[1]
            if not token:
                result.unplaced.append(([key], "a bundled embedding without a token"))
            elif token in result.embeddings:
                result.unplaced.append(([key], f"a second tensor for the bundled embedding {token}"))
            else:
                result.embeddings[token] = (key, tensors[key])
            continue
        split = _split(key)
        if split is None:
            result.unplaced.append(([key], "not a LoRA parameter name"))
            continue
        if split in key_of:  # two spellings of one parameter: which one would apply is anyone's guess
            result.unplaced.append(([key], f"the same parameter as {key_of[split]}"))
            continue
        groups.setdefault(split[0], {})[split[1]] = tensors[key]
        key_of[split] = key
    for name in [n for n, params in groups.items() if "weight" in params and "on_input" not in params]:
        # a bare `.weight` is a LoRA parameter only as IA3's, beside its on_input (else: a model's own weights)
        result.unplaced.append(([key_of[(name, "weight")]], "not a LoRA parameter name"))
        del groups[name]["weight"], key_of[(name, "weight")]
        if not groups[name]:
            del groups[name]
    family = file_family(list(tensors), header, groups)
    if family and family[0] != table.family:
        model = FAMILIES[table.family]
        raise UserError(f"{path} is a LoRA for {family[0]}, not for {model}: {family[1]}.",
                        f"Use it with an {family[0]} model in another tool, or pick a LoRA made for {model}.")
    configs, namings, kinds = adapter_metadata(header) | (configs or {}), Counter(), Counter()
    for name, params in groups.items():
        keys = [key_of[(name, p)] for p in params]
        where = _resolve(name, table)
        if where is None and name in table.others:
            _place_other(result, table, name, params, keys, kinds)
            continue
        if where is None:
            result.unplaced.append((keys, "no module of this model is called that"))
            continue
        component, module, naming = where
        namings[naming] += 1
        if (component, module) in result.changes or (component, module) in result.patches:
            result.unplaced.append((keys, f"a second set of weights for {module}"))
            continue
        shape = table.shapes[(component, module)]
        params = dict(params)
        if naming == "peft-adapter" and not any(k.startswith(component + ".") for k in configs):
            result.unplaced.append((keys, "peft's adapter layout without its adapter_config.json beside it (the "
                                          "scale, alpha / r, is there)"))
            continue
        if naming in ("peft", "peft-adapter") and "alpha" not in params:
            params = _peft_scaled(params, configs, component, module)
        if naming in ("peft", "peft-adapter") and "dora_scale" in params:  # peft's magnitude: per output channel, (1, out, 1, 1) on convs
            params["dora_scale"] = params["dora_scale"].reshape(-1, *[1] * (len(shape) - 1))
        layer = table.modules.get((component, module))
        beside = layer is not None and (kind_of(params) in FROM_BASE or dora_on_input(params, shape))
        if beside:  # OFT, GLoRA, IA3, DoRA on the input axis: applied beside the layer (layer_patches)
            try:
                result.patches[(component, module)] = Patch(form=_beside(params, shape, layer))
            except (ValueError, RuntimeError) as exc:
                result.unplaced.append((keys, str(exc).splitlines()[0].rstrip(".")))
                continue
            kinds["DoRA (input axis)" if "dora_scale" in params else kind_label(params)] += 1
            continue
        try:
            change = low_rank(params, shape)
        except (ValueError, RuntimeError) as exc:
            result.unplaced.append((keys, str(exc).splitlines()[0].rstrip(".")))
            continue
        sizes = (change.up.shape[0], change.down.shape[1])
        if check_sizes and (sizes != shape[:2] or (change.bias is not None and change.bias.shape != (shape[0],))):
            result.unplaced.append((keys, f"a {sizes[0]}x{sizes[1]} change does not fit {module} "
                                          f"({'x'.join(map(str, shape))})"))
            result.misfits.append((name, tuple(shape[:2]), sizes))
            continue
        kinds[_kind_label(params, shape)] += 1
        result.changes[(component, module)] = change
    result.layers = len(groups)
    result.layout = describe(namings, kinds)
    result.kinds = kinds
    result.naming = namings.most_common(1)[0][0] if namings else ""
    return result


def _beside(params: dict, shape: tuple[int, ...], layer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What layer_patches needs to apply a form beside `layer`: lora_weight_forms.prepare's tensors, or for DoRA on
    the input axis the exact low-rank pair (its scale folded into up) and the magnitude per input channel."""
    if "dora_scale" not in params:
        return prepare(params, layer)
    change = low_rank({k: v for k, v in params.items() if k != "dora_scale"}, shape)
    return {"up": change.up.flatten(1) * (change.alpha / change.rank), "down": change.down.flatten(1),
            "dora_in": params["dora_scale"].detach().to("cpu", torch.float32).flatten()}


def _place_other(result: LoraFile, table: ModuleTable, name: str, params: dict, keys: list[str],
                 kinds: Counter) -> None:
    """A change to a normalisation layer or embedding (layer_patches), or why it cannot be placed."""
    component, module, cls = table.others[name]
    layer = table.modules.get((component, module))  # None in a table of names only: sizes not checked
    if cls not in PATCHED:
        result.unplaced.append((keys, f"{module} is a {cls} layer{_NOT_LINEAR}"))
        return
    if (component, module) in result.patches:
        result.unplaced.append((keys, f"a second set of weights for {module}"))
        return
    try:
        patch = patch_of(params, cls, tuple(layer.weight.shape) if layer is not None else None)
    except ValueError as exc:
        result.unplaced.append((keys, f"{module} is a {cls} layer: {exc}"))
        return
    result.patches[(component, module)] = patch
    kinds[f"{'embedding' if cls == 'Embedding' else 'norm'} {patch.label}"] += 1


def _kind_label(params, shape) -> str:
    if "dora_scale" in params:
        return "DoRA"
    if "down" in params:
        return "LoCon" if len(shape) == 4 and shape[2:] != (1, 1) else "LoRA"
    return kind_label(params)


def unplaced_message(lora: LoraFile, total_keys: int) -> str:
    """Which keys found no module (the first few, with why) and the layout the file seems to be in."""
    n = sum(len(keys) for keys, _ in lora.unplaced)
    shown = "; ".join(f"{', '.join(keys)}: {why}" for keys, why in lora.unplaced[:_SHOWN])
    more = sum(len(keys) for keys, _ in lora.unplaced[_SHOWN:])
    return (f"{n} of its {total_keys} keys fit no module of a Stable Diffusion 1.x model. It looks like "
            f"{lora.layout}. Unplaced: {shown}{f'; and {more} more' if more else ''}")


def refuse_unplaced(lora: LoraFile, total_keys: int) -> None:
    """A file that would load only in part is refused: one paragraph naming the keys and the layout; a file
    whose layers have other sizes than this model's (made for another base model) in one line."""
    if lora.misfits:
        name, expected, got = lora.misfits[0]
        raise UserError(f"LoRA {lora.path} was made for another base model (e.g. SDXL / a different size): "
                        f"{len(lora.misfits)} of {lora.layers} layers have other shapes, first: {name} expected "
                        f"({expected[0]}, {expected[1]}) got ({got[0]}, {got[1]}).",
                        "Use a LoRA trained for this model.")
    unplaced = [key for group, _ in lora.unplaced for key in group]
    for suffix, kind, who in _FOREIGN:
        example = next((key for key in unplaced if key.endswith(suffix)), None)
        if example:
            raise UserError(f"{lora.path} holds LyCORIS {kind}, e.g. {example}, which personae cannot apply: it "
                            "loads LoRA, LoCon, LoHa, LoKr, DoRA, full-diff, OFT, BOFT, GLoRA and IA3 modules, each as "
                            "the exact change it makes.", f"{who}; for personae, train the concept as one of those "
                            "forms.")
    if unplaced and all(".motion_modules." in key for key in unplaced):
        raise UserError(f"{lora.path} is a motion LoRA for AnimateDiff's motion modules (a MotionLoRA: zoom, pan, "
                        f"tilt, roll), e.g. {unplaced[0]}; a picture has no motion modules.",
                        "Give it to `personae animate --lora`, which loads it on the clip's motion modules.")
    if lora.unplaced:
        raise UserError(
            f"{lora.path} would load only in part, so personae does not load it: {unplaced_message(lora, total_keys)}.",
            "Check that it is a LoRA-family file (LoRA, LoCon, LoHa, LoKr, full diff, OFT, GLoRA, IA3) made for SD "
            "1.x; a textual-inversion "
            "embedding goes with --embedding and a full checkpoint with --model.")


def peft_layers(changes: dict[tuple[str, str], LowRank], component: str) -> tuple[dict[str, torch.Tensor], dict]:
    """One component's changes as peft LoRA weights (keys relative to it) and the LoraConfig fields that load them."""
    mine = {module: c for (comp, module), c in changes.items() if comp == component}
    if not mine:
        return {}, {}
    ranks = {m: c.rank for m, c in mine.items()}
    alphas = {m: c.alpha for m, c in mine.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    has_bias = any(c.bias is not None for c in mine.values())
    dora = [m for m, c in mine.items() if c.magnitude is not None]
    if dora and len(dora) != len(mine):  # peft's use_dora gives every layer of an adapter a magnitude
        plain = next(m for m in mine if m not in dora)
        raise UserError(f"This LoRA mixes DoRA layers ({dora[0]} has a dora_scale) with plain LoRA layers ({plain} "
                        f"has none) in its {component}; personae loads a file as one peft adapter, DoRA or not.",
                        "Load a file whose layers are all DoRA or all plain LoRA.")
    state = {}
    for module, change in mine.items():
        state[f"{module}.lora_A.weight"] = change.down
        state[f"{module}.lora_B.weight"] = change.up
        if has_bias:  # peft gives every layer of the adapter a bias: zeros where the file has none
            state[f"{module}.lora_B.bias"] = change.bias if change.bias is not None else torch.zeros(change.up.shape[0])
        if change.magnitude is not None:  # peft's shape: (out,) on a Linear, (1, out, 1, 1) on a Conv2d
            m = change.magnitude
            key = "lora_magnitude_vector" + (".weight" if component == TEXT else "")  # as lora_files.magnitude_key
            state[f"{module}.{key}"] = m if change.down.dim() == 2 else m.reshape(1, -1, 1, 1)
    config = {"r": r, "lora_alpha": alpha, "target_modules": sorted(mine),
              "rank_pattern": {m: v for m, v in ranks.items() if v != r},
              "alpha_pattern": {m: v for m, v in alphas.items() if v != alpha}}
    if has_bias:  # only then: older peft versions reject fields they do not know
        config["lora_bias"] = True
    if dora:
        config["use_dora"] = True
    return state, config
