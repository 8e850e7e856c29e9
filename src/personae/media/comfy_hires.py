"""ComfyUI's hires fix (media/comfy_graph.py reads the rest of the graph): a sampler whose latent is a
LatentUpscale / LatentUpscaleBy of another sampler's is personae's hires fix, the first sampler its first pass.

    KSampler (redraw, denoise < 1) <- LatentUpscale(By) <- KSampler (first pass) <- EmptyLatentImage

The redraw's prompt, sampler and CFG become hires_prompt, hires_sampler and hires_cfg where they differ; what
ComfyUI does there that personae does another way (the upscale method, a stretch, the redraw's own seed) is said.
"""

from __future__ import annotations

import math

SAMPLER_NODES = ("KSampler", "KSamplerAdvanced")


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
    kind, up = graph.node(graph.link(second, inputs, "latent_image")[0])
    if kind not in ("LatentUpscale", "LatentUpscaleBy"):
        return None
    upscale_id = graph.link(second, inputs, "latent_image")[0]
    first = graph.link(upscale_id, up, "samples")[0]
    graph.node(first, SAMPLER_NODES)
    if not 0 < values["denoise"] < 1:
        raise graph.refuse(f"redraws the upscaled latent in {graph.name(second)} at denoise {values['denoise']:g}; "
                           "personae's hires fix redraws at a denoise between 0 and 1.")
    hires: dict = {"hires_upscaler": "latent", "hires_denoise": values["denoise"],
                   "hires_steps": steps_for(values["steps"], values["denoise"]), "_comfy_hires_steps": values["steps"]}
    if kind == "LatentUpscaleBy":
        hires["hires_scale"] = float(graph.value(upscale_id, up, "scale_by", (int, float)))
    else:
        width, height = (graph.value(upscale_id, up, k, int) for k in ("width", "height"))
        hires["hires_resize"] = f"{width}x{height}" if width or height else ""
        hires["hires_scale"] = 1.0
        hires["_crop"] = graph.value(upscale_id, up, "crop", str)
    hires["_method"] = graph.value(upscale_id, up, "upscale_method", str)
    hires["_at"] = graph.name(upscale_id)
    return first, hires


def hires_settings(graph, last: str, values: dict, base: dict, hires: dict, first: tuple, second: tuple,
                   reading) -> dict:
    """The second pass as personae's hires fix: its own prompt, sampler and CFG where they differ from the first
    (`first`: its prompt, negative prompt, clip and LoRAs; `second`: the redraw's, as comfy_graph._prompts reads
    them, its ControlNet units last)."""
    prompt, negative, clip, loras, _, hires["_units"] = second
    if (clip, loras) != (first[2], first[3]):
        raise graph.refuse(f"runs the hires pass {graph.name(last)} with other LoRAs or another clip skip than the "
                           "first pass; personae's hires fix uses the first pass's model.")
    method, crop, at = hires.pop("_method"), hires.pop("_crop", "disabled"), hires.pop("_at")
    if method != "bilinear":
        reading.notes.append(f"{at} upscales with {method}; personae's latent upscaler is bilinear (A1111's Latent)")
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
