"""ComfyUI's hires fix (media/comfy_graph.py reads the rest of the graph): a sampler that redraws another sampler's
picture made larger is personae's hires fix, the first sampler its first pass. Larger in the latents, or in pixels:

    KSampler (redraw, denoise < 1) <- LatentUpscale(By) <- KSampler (first pass)          --hires-upscaler latent
    KSampler (redraw) <- VAEEncode <- ImageScale(By) <- VAEDecode <- KSampler (first)     --hires-upscaler image
    KSampler (redraw) <- VAEEncode [<- ImageScale(By)] <- ImageUpscaleWithModel (UpscaleModelLoader) <- VAEDecode
        <- KSampler (first)                                                               --hires-upscaler NAME

The redraw's prompt, sampler and CFG become hires_prompt, hires_sampler and hires_cfg where they differ; what
ComfyUI does there that personae does another way (the resize method, a stretch, the model's tiles, the redraw's
own seed) is said.
"""

from __future__ import annotations

import math
import re
from pathlib import PureWindowsPath

SAMPLER_NODES = ("KSampler", "KSamplerAdvanced")
# the inputs of the nodes of a hires fix in pixels (ComfyUI's nodes.py and comfy_extras/nodes_upscale_model.py)
HIRES_INPUTS: dict[str, set[str]] = {
    "ImageScale": {"image", "upscale_method", "width", "height", "crop"},
    "ImageScaleBy": {"image", "upscale_method", "scale_by"},
    "ImageUpscaleWithModel": {"upscale_model", "image"},
    "UpscaleModelLoader": {"model_name"},
}
_NAMED_SCALE = re.compile(r"(?:^|[^a-z0-9])(\d)x|x(\d)(?:[^0-9]|$)", re.IGNORECASE)  # 4x-UltraSharp, RealESRGAN_x4plus


def steps_for(steps: int, denoise: float) -> int:
    """personae's steps for a ComfyUI pass of `steps` at `denoise` with one of diffusers' samplers (DDIM, UniPC):
    ComfyUI runs all its steps on the tail of a longer schedule; diffusers runs int(steps x denoise) of them, so the
    smallest count giving as many. The k-diffusion samplers run ComfyUI's own plan instead (jobs/generate.py:
    "_comfy_steps", "_comfy_hires_steps")."""
    total = max(steps, math.ceil(min(steps / denoise, 10**6) - 1e-9))  # past personae's bound: refused by name
    for _ in range(3):  # float rounding: one more step or two at most
        if int(total * denoise) >= steps:
            break
        total += 1
    return total


def hires_pass(graph, second: str, inputs: dict, values: dict) -> tuple[str, dict] | None:
    """(first sampler, hires settings) when the last sampler redraws an upscaled first pass; else None."""
    upscale_id = graph.link(second, inputs, "latent_image")[0]
    kind, up = graph.node(upscale_id)
    if kind == "VAEEncode":
        return _pixel_pass(graph, second, values, upscale_id, up)
    if kind not in ("LatentUpscale", "LatentUpscaleBy"):
        return None
    first = graph.link(upscale_id, up, "samples")[0]
    graph.node(first, SAMPLER_NODES)
    hires = _redraw(graph, second, values, "latent")
    _resize(graph, upscale_id, up, kind == "LatentUpscaleBy", hires)
    return first, hires


def _redraw(graph, second: str, values: dict, upscaler: str) -> dict:
    if not 0 < values["denoise"] < 1:
        raise graph.refuse(f"redraws the upscaled picture in {graph.name(second)} at denoise {values['denoise']:g}; "
                           "personae's hires fix redraws at a denoise between 0 and 1.")
    return {"hires_upscaler": upscaler, "hires_denoise": values["denoise"], "_notes": [],
            "hires_steps": steps_for(values["steps"], values["denoise"]), "_comfy_hires_steps": values["steps"]}


def _resize(graph, node_id: str, node: dict, by: bool, hires: dict, model_scale: int = 1) -> None:
    """hires_scale or hires_resize from a (Latent|Image)Scale(By) node; its method and crop for hires_settings."""
    if by:
        hires["hires_scale"] = model_scale * float(graph.value(node_id, node, "scale_by", (int, float)))
    else:
        width, height = (graph.value(node_id, node, k, int) for k in ("width", "height"))
        hires["hires_resize"] = f"{width}x{height}" if width or height else ""
        hires["hires_scale"] = 1.0
        hires["_crop"] = graph.value(node_id, node, "crop", str)
    hires["_method"] = graph.value(node_id, node, "upscale_method", str)
    hires["_at"] = graph.name(node_id)


def _pixel_pass(graph, second: str, values: dict, encode_id: str, encode: dict) -> tuple[str, dict] | None:
    """The hires fix in pixels: VAEDecode -> [ImageUpscaleWithModel] -> [ImageScale(By)] -> VAEEncode; None when
    the VAEEncode encodes something else (img2img's LoadImage, read and refused where latents are read)."""
    chain, node_id = [], graph.link(encode_id, encode, "pixels")[0]
    for wanted in (("ImageScale", "ImageScaleBy"), ("ImageUpscaleWithModel",)):
        kind = graph.nodes.get(node_id, {}).get("class_type")
        if kind in wanted:
            _, inputs = graph.node(node_id)
            chain.append((node_id, kind, inputs))
            node_id = graph.link(node_id, inputs, "image")[0]
    if graph.nodes.get(node_id, {}).get("class_type") != "VAEDecode" or not chain:
        if _drawn(graph, node_id):  # another sampler's picture, through nodes personae does not place: named
            graph.node(node_id, ("ImageScale", "ImageScaleBy", "ImageUpscaleWithModel", "VAEDecode"))
        return None
    _, decode = graph.node(node_id, ("VAEDecode",))
    first = graph.link(node_id, decode, "samples")[0]
    graph.node(first, SAMPLER_NODES)
    hires = _redraw(graph, second, values, "image")
    hires["_vaes"] = [graph.link(node_id, decode, "vae"), graph.link(encode_id, encode, "vae")]
    resize = next(((i, n) for i, kind, n in chain if kind != "ImageUpscaleWithModel"), None)
    scale = 1
    for apply_id, kind, apply in chain:
        if kind != "ImageUpscaleWithModel":
            continue
        loader = graph.link(apply_id, apply, "upscale_model")[0]
        _, load = graph.node(loader, ("UpscaleModelLoader",))
        file = graph.value(loader, load, "model_name", str)
        hires["hires_upscaler"] = hires["_model"] = PureWindowsPath(file).stem  # found through --upscaler-dir
        named = _NAMED_SCALE.search(PureWindowsPath(file).stem)
        scale = int(named.group(1) or named.group(2)) if named else 4
        hires["_notes"].append(f"{graph.name(apply_id)} runs {file} on 512-pixel tiles overlapping by 32; personae, "
                               "as A1111, on 192-pixel tiles, so the seams differ slightly")
        if resize is None or graph.nodes[resize[0]]["class_type"] == "ImageScaleBy":
            hires["_notes"].append(f"{file} is taken to enlarge {scale}x ({'by its name' if named else 'as most do'}); "
                                   "if it enlarges otherwise, the redraw's size differs from ComfyUI's (pass "
                                   "--hires-scale)")
        if resize is None:
            hires.update(hires_scale=float(scale), _method=None, _at=graph.name(apply_id))
    if resize:
        _resize(graph, *resize, graph.nodes[resize[0]]["class_type"] == "ImageScaleBy", hires, scale)
    return first, hires


def _drawn(graph, node_id: str) -> bool:
    """Whether a picture comes, through any nodes, from a sampler's latent."""
    seen, todo = set(), [node_id]
    while todo:
        current = todo.pop()
        node = graph.nodes.get(current)
        if current in seen or not isinstance(node, dict):
            continue
        seen.add(current)
        if node.get("class_type") in SAMPLER_NODES:
            return True
        todo += [str(v[0]) for v in (node.get("inputs") or {}).values() if isinstance(v, list) and len(v) == 2]
    return False


def hires_settings(graph, last: str, values: dict, base: dict, hires: dict, first: tuple, second: tuple,
                   reading) -> dict:
    """The second pass as personae's hires fix: its own prompt, sampler and CFG where they differ from the first
    (`first`: its prompt, negative prompt, clip and LoRAs; `second`: the redraw's, as comfy_graph._prompts reads
    them, its ControlNet units last)."""
    prompt, negative, clip, loras, _, hires["_units"] = second
    if (clip, loras) != (first[2], first[3]):
        raise graph.refuse(f"runs the hires pass {graph.name(last)} with other LoRAs, FreeU or another clip skip than "
                           "the first pass; personae's hires fix uses the first pass's model.")
    method, crop, at = hires.pop("_method"), hires.pop("_crop", "disabled"), hires.pop("_at")
    reading.upscaler = hires.pop("_model", "")
    if hires["hires_upscaler"] == "latent" and method != "bilinear":
        reading.notes.append(f"{at} upscales with {method}; personae's latent upscaler is bilinear (A1111's Latent)")
    elif hires["hires_upscaler"] != "latent" and method not in (None, "lanczos"):
        reading.notes.append(f"{at} resizes with {method}; personae resizes the picture with Lanczos (A1111's)")
    reading.notes.extend(hires.pop("_notes"))
    if hires.get("hires_resize") and crop == "disabled":
        reading.notes.append(f"{at} stretches to {hires['hires_resize']} (crop disabled); personae covers that size "
                             "and crops the overhang evenly, the same when the aspect ratio is kept")
    if values["seed"] != base["seed"]:
        reading.notes.append(f"the hires pass {graph.name(last)} has its own seed {values['seed']}; personae's hires "
                             f"fix draws the redraw's noise from the first seed {base['seed']}")
    if prompt != first[0]:
        hires["hires_prompt"] = prompt
    if negative != first[1]:
        hires["hires_negative"] = negative
    if values["sampler"] != base["sampler"]:
        hires["hires_sampler"] = values["sampler"]
    if values["cfg"] != base["cfg"]:
        hires["hires_cfg"] = values["cfg"]
    return hires
