"""ComfyUI's ControlNet nodes on a sampler's conditioning, read as ControlNet units (media/comfy_graph.py walks the
graph; this reads what sits between a sampler and its text encoders).

    KSampler.positive / .negative <- ControlNetApplyAdvanced <- ... <- CLIPTextEncode
                                        control_net <- ControlNetLoader
                                        image       <- LoadImage (a ready map), or Canny / ImageInvert <- LoadImage

Each ControlNetApplyAdvanced is a unit (the one nearest the text encoders first, as ComfyUI chains them): its
strength the weight, its start / end percent the guidance window (by noise level, as ComfyUI counts it:
inference/control_steps.py). The old ControlNetApply (the prompt alone) is a
unit too, and said. A unit is a plain dict here; jobs/png_controls.py makes ControlRef fields of it. An
InpaintModelConditioning on the way (an inpainting checkpoint's picture and mask) is passed through and named, for
comfy_graph to read with the sampler's latent.
"""

from __future__ import annotations

from pathlib import PureWindowsPath

from personae.media.controlnet_text import pools_by_name

CONTROL_INPUTS: dict[str, set[str]] = {  # ComfyUI's nodes.py and comfy_extras/nodes_canny.py
    "ControlNetApplyAdvanced": {"positive", "negative", "control_net", "image", "strength", "start_percent",
                                "end_percent", "vae"},  # vae: optional, for the newer model families
    "ControlNetApply": {"conditioning", "control_net", "image", "strength"},
    "ControlNetLoader": {"control_net_name"},
    "Canny": {"image", "low_threshold", "high_threshold"},
    "ImageInvert": {"image"},  # 1 - the picture: A1111's "invert (from white bg & black line)"
    # an inpainting model's picture and mask on the conditioning, and its latent (read in comfy_graph._latent)
    "InpaintModelConditioning": {"positive", "negative", "vae", "pixels", "mask", "noise_mask"},
}


def control_chain(graph, sampler_id: str, inputs: dict, notes: list[str]
                  ) -> tuple[str, str, list[dict], list[str]]:
    """(positive text node, negative text node, units, InpaintModelConditioning nodes) of a sampler: its
    conditioning followed back through the ControlNet (and inpainting model) nodes to the CLIPTextEncodes. What
    ComfyUI does there that personae does another way is added to `notes`."""
    positive, negative = graph.link(sampler_id, inputs, "positive"), graph.link(sampler_id, inputs, "negative")
    units: list[dict] = []
    inpaint: list[str] = []
    while True:
        kinds = [graph.nodes.get(node_id, {}).get("class_type") for node_id, _ in (positive, negative)]
        both = ("ControlNetApplyAdvanced", "InpaintModelConditioning")
        if kinds[0] in both or kinds[1] in both:
            node_id = positive[0]
            if positive != (node_id, 0) or negative != (node_id, 1):
                raise graph.refuse(f"gives {graph.name(sampler_id)} its prompt and negative prompt through different "
                                   f"{' or '.join(sorted({k for k in kinds if k in both}))} nodes; personae conditions "
                                   "both alike, as one such node does.")
            kind, apply = graph.node(node_id, both)
            if kind == "InpaintModelConditioning":
                inpaint.append(node_id)
                positive, negative = graph.link(node_id, apply, "positive"), graph.link(node_id, apply, "negative")
                continue
            units.insert(0, _unit(graph, node_id, apply, notes))
            positive, negative = graph.link(node_id, apply, "positive"), graph.link(node_id, apply, "negative")
        elif kinds[0] == "ControlNetApply":
            node_id = positive[0]
            _, apply = graph.node(node_id, ("ControlNetApply",))
            units.insert(0, _unit(graph, node_id, apply, notes))
            notes.append(f"{graph.name(node_id)} controls the prompt alone (ComfyUI's older node); personae controls "
                         "the prompt and the negative prompt alike, as ControlNetApplyAdvanced and A1111's Balanced "
                         "do")
            positive = graph.link(node_id, apply, "conditioning")
        elif kinds[1] == "ControlNetApply":
            raise graph.refuse(f"controls {graph.name(sampler_id)}'s negative prompt alone ({graph.name(negative[0])});"
                               " personae applies a unit to the prompt and the negative prompt alike.")
        else:
            return positive[0], negative[0], units, inpaint


def _unit(graph, node_id: str, apply: dict, notes: list[str]) -> dict:
    loader_id = graph.link(node_id, apply, "control_net")[0]
    _, loader = graph.node(loader_id, ("ControlNetLoader",))
    strength = float(graph.value(node_id, apply, "strength", (int, float)))
    if not 0 <= strength <= 2:
        raise graph.refuse(f"gives {graph.name(node_id)} the strength {strength:g}; personae's Control Weight goes "
                           "from 0 to 2.")
    start, end = 0.0, 1.0
    if "start_percent" in apply or "end_percent" in apply:
        start, end = (float(graph.value(node_id, apply, k, (int, float))) for k in ("start_percent", "end_percent"))
        if not 0 <= start <= end <= 1:
            raise graph.refuse(f"gives {graph.name(node_id)} start_percent {start:g} and end_percent {end:g}; "
                               "personae's guidance window runs from 0 to 1, its start before its end.")
    model = graph.value(loader_id, loader, "control_net_name", str)
    if pools_by_name(model) and graph.nodes[node_id].get("class_type") == "ControlNetApplyAdvanced":
        notes.append(f"{graph.name(node_id)} applies a shuffle ControlNet (its control averaged over the picture) to "
                     "the negative prompt too, as ComfyUI's ControlNetApplyAdvanced does; personae gives the negative "
                     "prompt none of it, as A1111's ControlNet extension does")
    unit = {"node": node_id, "module": "none", "model": model,
            "weight": strength, "guidance_start": start, "guidance_end": end, "thresholds": None,
            "guidance_by": "steps" if (start, end) == (0.0, 1.0) else "noise"}  # ComfyUI counts by noise level
    image_id = graph.link(node_id, apply, "image")[0]
    kind, image = graph.node(image_id, ("LoadImage", "Canny", "ImageInvert"))
    if kind == "ImageInvert":  # ComfyUI's 1 - x of the picture on 0..1 is A1111's 255 - x
        unit["module"] = "invert (from white bg & black line)"
        image_id = graph.link(image_id, image, "image")[0]
        _, image = graph.node(image_id, ("LoadImage",))
    elif kind == "Canny":
        low, high = (float(graph.value(image_id, image, k, (int, float))) for k in ("low_threshold", "high_threshold"))
        unit["module"], unit["thresholds"] = "canny", (round(low * 255, 2), round(high * 255, 2))
        notes.append(f"{graph.name(image_id)} makes its map with kornia's canny (thresholds {low:g} and {high:g} of "
                     f"1, on the picture at its own size); personae makes it with OpenCV's at "
                     f"{unit['thresholds'][0]:g} and {unit['thresholds'][1]:g} of 255, so the edges differ a little")
        image_id = graph.link(image_id, image, "image")[0]
        _, image = graph.node(image_id, ("LoadImage",))
    unit["picture"] = PureWindowsPath(str(graph.value(image_id, image, "image", str))).name
    return unit


def pass_units(first: list[dict], second: list[dict] | None) -> list[dict]:
    """The units of a hires fix's two passes as one list, each with A1111's "Hires-Fix Option" from the passes its
    node conditions (a single pass: all "Both")."""
    if second is None:
        return [{**u, "hr_option": "Both"} for u in first]
    late = {u["node"] for u in second}
    early = {u["node"] for u in first}
    return [{**u, "hr_option": "Both" if u["node"] in late else "Low res only"} for u in first] + \
        [{**u, "hr_option": "High res only"} for u in second if u["node"] not in early]
