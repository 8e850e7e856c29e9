"""ComfyUI pictures: the `prompt` text chunk (the API-format graph ComfyUI ran) read as generate settings.

    reading = read_comfy_graph(text, "photo.png")
    reading.settings   # {"prompt": ..., "seed": ..., "sampler": "dpmpp_2m karras", ...}: GenerateSettings fields
    reading.notes      # what the graph does that personae does differently, each named (png_not_applied)

The graph is {"<node id>": {"class_type": ..., "inputs": {name: value, or [node id, output index]}}}. The
picture is what the last sampler makes (a KSampler, or a KSamplerAdvanced set up to run as one): the walk starts
there and follows its links back: model <- LoRAs <- checkpoint; conditioning <- ControlNet units
(media/comfy_controls.py) <- text encoders, joined by ComfyUI's combines and concats (media/comfy_prompts.py) <-
clip skip <- LoRAs <- checkpoint; latent <- an empty latent, an encoded picture (img2img) or the first pass of a
hires fix (media/comfy_hires.py). Every node on that walk is one of the classes in INPUTS, with exactly the inputs
ComfyUI's nodes.py declares for it; anything else there is refused by name. Nodes off the walk (previews, notes,
another branch) are not read.

The sampler stays in ComfyUI's words ("dpmpp_2m karras"): inference/samplers.py reads those (not imported here:
media/ sits below inference/).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import PureWindowsPath

from personae.errors import UserError
from personae.media.comfy_controls import CONTROL_INPUTS, control_chain, pass_units
from personae.media.comfy_hires import HIRES_INPUTS, SAMPLER_NODES, hires_pass, hires_settings, steps_for
from personae.media.comfy_mask import mask_settings
from personae.media.comfy_prompts import conditioning_texts, joined_prompt, prompt_notes
from personae.media.png import lora_tag

# the inputs of each node class personae places (ComfyUI's nodes.py; "upload" is LoadImage's upload widget)
INPUTS: dict[str, set[str]] = {
    "KSampler": {"model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative",
                 "latent_image", "denoise"},
    "KSamplerAdvanced": {"model", "add_noise", "noise_seed", "steps", "cfg", "sampler_name", "scheduler", "positive",
                         "negative", "latent_image", "start_at_step", "end_at_step", "return_with_leftover_noise"},
    "CheckpointLoaderSimple": {"ckpt_name"},
    "CLIPTextEncode": {"text", "clip"},
    "ConditioningCombine": {"conditioning_1", "conditioning_2"},
    "ConditioningConcat": {"conditioning_to", "conditioning_from"},
    "CLIPSetLastLayer": {"clip", "stop_at_clip_layer"},
    "EmptyLatentImage": {"width", "height", "batch_size"},
    "LoraLoader": {"model", "clip", "lora_name", "strength_model", "strength_clip"},
    "LoraLoaderModelOnly": {"model", "lora_name", "strength_model"},
    "FreeU": {"model", "b1", "b2", "s1", "s2"},
    "FreeU_V2": {"model", "b1", "b2", "s1", "s2"},
    "ModelSamplingDiscrete": {"model", "sampling", "zsnr"},
    "VAELoader": {"vae_name"},
    "VAEEncode": {"pixels", "vae"},
    "VAEDecode": {"samples", "vae"},
    "LoadImage": {"image", "upload"},
    "LoadImageMask": {"image", "channel", "upload"},
    "SetLatentNoiseMask": {"samples", "mask"},
    "VAEEncodeForInpaint": {"pixels", "vae", "mask", "grow_mask_by"},
    "LatentUpscale": {"samples", "upscale_method", "width", "height", "crop"},
    "LatentUpscaleBy": {"samples", "upscale_method", "scale_by"},
    "SaveImage": {"images", "filename_prefix"},
    "PreviewImage": {"images"},
    **CONTROL_INPUTS,  # ControlNet units on the conditioning (media/comfy_controls.py)
    **HIRES_INPUTS,  # a hires fix in pixels (media/comfy_hires.py)
}
# ComfyUI samplers that draw noise at every step (on the GPU there, from the seed's CPU generator here)
_NOISY = re.compile(r"ancestral|sde|^lcm$|^ddpm$|^er_sde$")


@dataclass
class ComfyReading:
    settings: dict  # GenerateSettings fields
    notes: list[str] = field(default_factory=list)  # said whatever the run's options (png_not_applied)
    checkpoint: str = ""  # CheckpointLoaderSimple's ckpt_name, compared with the run's model
    vae: str = ""  # VAELoader's vae_name, if the picture is decoded by one
    upscaler: str = ""  # an UpscaleModelLoader's file (its stem: the hires upscaler's name), found by --upscaler-dir
    init_image: str = ""  # LoadImage's file, for img2img
    mask: str = ""  # the file the inpainting mask is read from
    embeddings: list[str] = field(default_factory=list)  # `embedding:name` in the texts, by name
    sampler_at: str = ""  # the node the sampler name comes from, for messages
    units: list[dict] = field(default_factory=list)  # ControlNet units (media/comfy_controls.py), in order
    texts: list[str] = field(default_factory=list)  # every CLIPTextEncode's text on the walk, as ComfyUI has it


class _Graph:
    def __init__(self, nodes: dict, source: str):
        self.nodes, self.source = nodes, source
        self.visits = 0  # nodes looked up on the walk: a graph linked in a loop (a damaged file) ends it

    def name(self, node_id: str) -> str:
        return f'{self.nodes[node_id].get("class_type")} node {node_id}'

    def refuse(self, what: str, fix: str = "") -> UserError:
        return UserError(f"--from-png: the ComfyUI graph in {self.source} {what}",
                         fix or "personae reads ComfyUI's own sampling nodes (" + ", ".join(INPUTS) + "). Pass the "
                         "settings on the command line instead, or save the picture from a graph of those nodes.")

    def node(self, node_id: str, wanted: tuple[str, ...] = ()) -> tuple[str, dict]:
        """(class_type, inputs) of a node on the walk, each input one personae places; refused otherwise."""
        node = self.nodes.get(node_id)
        self.visits += 1
        if self.visits > 8 * len(self.nodes) + 64:
            raise self.refuse(f"links its nodes in a loop (through node {node_id}); ComfyUI graphs run one way.")
        if not isinstance(node, dict) or not isinstance(node.get("inputs", {}), dict):
            raise self.refuse(f"links to node {node_id}, which it does not hold (the graph is damaged).")
        kind, inputs = node.get("class_type"), node.get("inputs", {})
        if kind not in INPUTS or (wanted and kind not in wanted):
            custom = "" if kind in INPUTS else ", a custom node (or one personae does not read),"
            there = f" (it reads {' or '.join(wanted)} there)" if wanted else ""
            raise self.refuse(f"has {self.name(node_id)}{custom} on the sampler's path; personae cannot place what "
                              f"it does there{there}.")
        extra = sorted(set(inputs) - INPUTS[kind])
        if extra:
            raise self.refuse(f'gives {self.name(node_id)} the input{"s" * (len(extra) > 1)} {", ".join(extra)}, which '
                              "personae cannot place (a newer or patched node?).")
        return kind, inputs

    def value(self, node_id: str, inputs: dict, name: str, kind: type | tuple = (int, float, str)):
        """An input's own value (not a link)."""
        value = inputs.get(name)
        if isinstance(value, bool) or not isinstance(value, kind):
            linked = str(value[0]) if isinstance(value, list) and value else None
            got = (f"a link to {self.name(linked) if linked in self.nodes else f'node {linked}'}" if linked
                   else "missing" if value is None else repr(value))
            raise self.refuse(f"gives {self.name(node_id)} the input {name} as {got}, which personae cannot read.")
        return value

    def link(self, node_id: str, inputs: dict, name: str) -> tuple[str, int]:
        """The (node id, output index) an input is linked to."""
        value = inputs.get(name)
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)):
            raise self.refuse(f"gives {self.name(node_id)} its input {name} not as a link to another node.")
        return str(value[0]), value[1]

    def consumers(self, node_id: str) -> list[str]:
        return [other for other, node in self.nodes.items() if isinstance(node, dict) and any(
            isinstance(v, list) and len(v) == 2 and str(v[0]) == node_id for v in (node.get("inputs") or {}).values())]


def _parse(text: str, source: str) -> dict:
    try:
        nodes = json.loads(text)
    except ValueError as exc:
        raise UserError(f"--from-png: the ComfyUI graph in {source} (its `prompt` text chunk) is not valid JSON "
                        f"({exc}).", "The file was damaged or edited; pass the settings on the command line.") from None
    if not isinstance(nodes, dict) or not all(isinstance(n, dict) and "class_type" in n for n in nodes.values()):
        raise UserError(f"--from-png: the `prompt` text chunk of {source} is not a ComfyUI graph ({{node id: "
                        "{class_type, inputs}}).", "Pass the settings on the command line instead.")
    return {str(k): v for k, v in nodes.items()}


def _last_sampler(graph: _Graph) -> tuple[str, list[str]]:
    """The sampler whose latent no other sampler reads (through a latent upscale: the hires fix)."""
    samplers = [i for i, n in graph.nodes.items() if n.get("class_type") in SAMPLER_NODES]
    if not samplers:
        custom = sorted({str(n.get("class_type")) for n in graph.nodes.values()} - set(INPUTS))
        raise graph.refuse("has no KSampler or KSamplerAdvanced node" + (f" (its sampling is done by nodes personae "
                           f"does not read: {', '.join(custom)})" if custom else "") + ".")
    last = [s for s in samplers if not _upstream_samplers_of_any(graph, s, samplers)]
    if len(last) != 1 or len(samplers) > 2:
        raise _several(graph, samplers)
    return last[0], samplers


def _several(graph: _Graph, samplers: list[str]) -> UserError:
    return graph.refuse(f"has {len(samplers)} samplers ({', '.join(graph.name(s) for s in samplers)}) that do not "
                        "form a hires fix (a first pass; a LatentUpscale(By), or a VAEDecode, an image upscale and a "
                        "VAEEncode; a second pass).",
                        "personae reads one sampler, or two as a hires fix. Pass the settings on the command line.")


def _upstream_samplers_of_any(graph: _Graph, node_id: str, samplers: list[str]) -> bool:
    """Whether some other sampler reads this one's latent, directly or through other nodes."""
    seen, todo = set(), graph.consumers(node_id)
    while todo:
        other = todo.pop()
        if other in seen:
            continue
        seen.add(other)
        if other in samplers:
            return True
        todo += graph.consumers(other)
    return False


_SAMPLING = {"eps": "epsilon", "v_prediction": "v_prediction"}  # ModelSamplingDiscrete's, as personae names them


def _model(graph: _Graph, node_id: str) -> tuple[tuple, str]:
    """((("lora", LoRA node, file name, strength_model), ("freeu", node, "B1,B2,S1,S2", v2) or ("sampling", node,
    prediction type, zsnr), ...), checkpoint node) of a MODEL output, the sampler's end first."""
    kind, inputs = graph.node(node_id, ("LoraLoader", "LoraLoaderModelOnly", "FreeU", "FreeU_V2",
                                        "ModelSamplingDiscrete", "CheckpointLoaderSimple"))
    if kind == "CheckpointLoaderSimple":
        return (), node_id
    patches, checkpoint = _model(graph, graph.link(node_id, inputs, "model")[0])
    if kind == "ModelSamplingDiscrete":  # what the model predicts, and the zero-terminal-SNR schedule (zsnr)
        sampling = graph.value(node_id, inputs, "sampling", str)
        if sampling not in _SAMPLING:
            raise graph.refuse(f"sets {graph.name(node_id)} to {sampling!r} sampling; personae draws models that "
                               "predict the noise (eps) or the velocity (v_prediction).")
        if any(p[0] == "sampling" for p in patches):  # ComfyUI keeps the last one: the graph says two things
            raise graph.refuse(f"sets the model's sampling twice ({graph.name(node_id)} among them).")
        zsnr = inputs.get("zsnr", False)  # a BOOLEAN input (older ComfyUI releases have none: off)
        if not isinstance(zsnr, bool):
            raise graph.refuse(f"gives {graph.name(node_id)} the input zsnr as {zsnr!r}, which personae cannot read.")
        return (("sampling", node_id, _SAMPLING[sampling], zsnr), *patches), checkpoint
    if kind in ("FreeU", "FreeU_V2"):
        values = [float(graph.value(node_id, inputs, k, (int, float))) for k in ("b1", "b2", "s1", "s2")]
        if not all(0 <= v <= 10 for v in values):
            raise graph.refuse(f"gives {graph.name(node_id)} a value outside ComfyUI's range (0 to 10).")
        if any(p[0] == "freeu" for p in patches):
            raise graph.refuse(f"applies FreeU twice on the model ({graph.name(node_id)} among them); personae "
                               "applies it once.")
        return (("freeu", node_id, ",".join(f"{v:g}" for v in values), kind == "FreeU_V2"), *patches), checkpoint
    name = graph.value(node_id, inputs, "lora_name", str)
    strength = float(graph.value(node_id, inputs, "strength_model", (int, float)))
    return (("lora", node_id, name, strength), *patches), checkpoint


def _sampler(graph: _Graph, node_id: str) -> dict:
    """A sampler node's own values, a KSamplerAdvanced only where it runs as a plain KSampler."""
    kind, inputs = graph.node(node_id, SAMPLER_NODES)
    steps = graph.value(node_id, inputs, "steps", int)
    if not 1 <= steps <= 10000:
        raise graph.refuse(f"gives {graph.name(node_id)} {steps} steps, outside ComfyUI's range (1 to 10000).")
    if kind == "KSamplerAdvanced":
        add, start, end = (inputs.get("add_noise"), graph.value(node_id, inputs, "start_at_step", int),
                           graph.value(node_id, inputs, "end_at_step", int))
        if add != "enable" or start != 0 or end < steps:
            raise graph.refuse(f"runs {graph.name(node_id)} as part of a split sampling (add_noise {add}, "
                               f"start_at_step {start}, end_at_step {end} of {steps} steps); personae runs a sampler "
                               "from the first step to the last, with fresh noise.")
    seed = graph.value(node_id, inputs, "noise_seed" if kind == "KSamplerAdvanced" else "seed", int)
    if not 0 <= seed < 2**64:
        raise graph.refuse(f"gives {graph.name(node_id)} the seed {seed}, outside ComfyUI's range (0 to 2**64 - 1).")
    name, scheduler = (graph.value(node_id, inputs, k, str) for k in ("sampler_name", "scheduler"))
    denoise = float(graph.value(node_id, inputs, "denoise", (int, float))) if kind == "KSampler" else 1.0
    if not 0 <= denoise <= 1:
        raise graph.refuse(f"gives {graph.name(node_id)} the denoise {denoise:g}, outside ComfyUI's range (0 to 1).")
    return {"seed": seed, "steps": steps, "cfg": float(graph.value(node_id, inputs, "cfg", (int, float))),
            "sampler": f"{name} {scheduler}", "name": name, "denoise": denoise}


def _prompts(graph: _Graph, node_id: str, inputs: dict, reading: ComfyReading
             ) -> tuple[str, str, tuple, tuple, str, list[dict]]:
    """(prompt, negative, clip chain, model chain, checkpoint node, ControlNet units) of a sampler."""
    positive_id, negative_id, units, inpaint = control_chain(graph, node_id, inputs, reading.notes)
    latent = graph.link(node_id, inputs, "latent_image")
    latent_kind = graph.nodes.get(latent[0], {}).get("class_type")
    if inpaint != ([latent[0]] if latent_kind == "InpaintModelConditioning" else []) or \
            (inpaint and latent != (inpaint[0], 2)):
        raise graph.refuse(f"gives {graph.name(node_id)} an inpainting model's conditioning and latent from different "
                           "nodes; personae's inpainting reads the picture and mask once, from one "
                           "InpaintModelConditioning.")
    positives, clip = conditioning_texts(graph, positive_id, reading)
    negatives, negative_clip = conditioning_texts(graph, negative_id, reading)
    positive = joined_prompt(graph, node_id, positives, False, reading)
    negative = joined_prompt(graph, node_id, negatives, True, reading)
    if negative_clip != clip:
        raise graph.refuse(f"encodes {graph.name(node_id)}'s positive and negative prompts through different CLIP "
                           "chains (clip skip or LoRAs); personae encodes both with one.")
    loras, checkpoint = _model(graph, graph.link(node_id, inputs, "model")[0])
    if clip[2] != checkpoint:
        raise graph.refuse(f"takes {graph.name(node_id)}'s model and its text encoder from two checkpoints "
                           f"({graph.name(checkpoint)}, {graph.name(clip[2])}); personae loads one model.")
    return positive, negative, clip, loras, checkpoint, units


def _lora_tags(graph: _Graph, loras: tuple, clip_loras: tuple) -> str:
    """A1111's <lora:name:weight> tags (found through --lora-dir): <lora:name:te:unet> where the file's text-encoder
    strength (strength_clip; 0 for a LoraLoaderModelOnly, which leaves the text encoder alone) differs from its
    UNet strength (strength_model; 0 for a LoraLoader whose MODEL output goes unused)."""
    clip_strength = dict(clip_loras)
    tags = []
    for _, node_id, name, strength in reversed([p for p in loras if p[0] == "lora"]):  # the checkpoint's end first
        stem = PureWindowsPath(name).stem  # ComfyUI names "sub\\file.safetensors" on Windows
        tags.append(lora_tag(stem, clip_strength.pop(node_id, 0.0), strength))
    for node_id, te in reversed(clip_loras):  # on the text encoder only
        if node_id in clip_strength:
            name = graph.value(node_id, graph.nodes[node_id]["inputs"], "lora_name", str)
            tags.append(lora_tag(PureWindowsPath(name).stem, te, 0.0))
    return " ".join(tags)


def _latent(graph: _Graph, sampler_id: str, inputs: dict, values: dict, reading: ComfyReading) -> dict:
    """Size, batch and img2img settings from what the sampler's latent_image comes from."""
    latent_id = graph.link(sampler_id, inputs, "latent_image")[0]
    kind, latent = graph.node(latent_id, ("EmptyLatentImage", "VAEEncode", "SetLatentNoiseMask", "VAEEncodeForInpaint",
                                          "InpaintModelConditioning"))
    if kind == "EmptyLatentImage":
        if values["denoise"] < 1:
            raise graph.refuse(f"denoises {graph.name(sampler_id)} at {values['denoise']:g} from an empty latent; "
                               "personae draws txt2img from pure noise (denoise 1).")
        width, height, batch = (graph.value(latent_id, latent, k, int) for k in ("width", "height", "batch_size"))
        if batch > 1:
            reading.notes.append(f"batch_size {batch}: ComfyUI draws the whole batch's starting noise from one seed, "
                                 "personae (as A1111) gives image i the seed + i, so only the first picture matches "
                                 "the seed's noise")
        return {"width": width, "height": height, "batch_size": batch}
    settings: dict = {"strength": values["denoise"]}
    if kind == "SetLatentNoiseMask":  # img2img whose unmasked part the sampler keeps: A1111's inpainting
        settings.update(mask_settings(graph, latent_id, latent, reading), masked_content="original")
        reading.notes.append(f"{graph.name(latent_id)}: ComfyUI keeps the unmasked part by blending the latents at "
                             "every model call (its mask at the latents' size, not rounded) and keeps the decoded "
                             "picture whole; personae blends the denoised latents as A1111 (the mask rounded) and "
                             "pastes the unmasked pixels back, so the mask's edge differs a little")
        latent_id = graph.link(latent_id, latent, "samples")[0]
        kind, latent = graph.node(latent_id, ("VAEEncode",))
    elif kind == "InpaintModelConditioning":  # an inpainting model: the picture with its masked part grey beside it
        settings.update(mask_settings(graph, latent_id, latent, reading), masked_content="original")
        noise_mask = latent.get("noise_mask", True)  # ComfyUI's default; a switch, which graph.value does not read
        if not isinstance(noise_mask, bool):
            raise graph.refuse(f"gives {graph.name(latent_id)} the input noise_mask as {noise_mask!r}, which personae "
                               "cannot read.")
        if noise_mask:
            reading.notes.append(f"{graph.name(latent_id)} with noise_mask: ComfyUI also keeps the unmasked latents at "
                                 "every model call (its mask not rounded); personae keeps them in the denoised "
                                 "latents as A1111 does (the mask rounded) with a k-diffusion sampler, and leaves "
                                 "that to the inpainting model with DDIM, PLMS or UniPC")
    elif kind == "VAEEncodeForInpaint":
        settings.update(mask_settings(graph, latent_id, latent, reading), masked_content="fill")
        grow = graph.value(latent_id, latent, "grow_mask_by", int)
        reading.notes.append(f"{graph.name(latent_id)} paints the masked part grey before encoding it and grows the "
                             f"mask by {grow} pixels; personae starts the masked part from the colours around it "
                             "(masked content fill), the mask as drawn")
    _vae(graph, *graph.link(latent_id, latent, "vae"), reading)
    image_id = graph.link(latent_id, latent, "pixels")[0]
    _, load = graph.node(image_id, ("LoadImage",))
    reading.init_image = str(graph.value(image_id, load, "image", str))
    return settings


def _vae(graph: _Graph, node_id: str, output: int, reading: ComfyReading) -> None:
    kind, inputs = graph.node(node_id, ("CheckpointLoaderSimple", "VAELoader"))
    if kind == "VAELoader":
        reading.vae = str(graph.value(node_id, inputs, "vae_name", str))


def _decoded(graph: _Graph, sampler_id: str, reading: ComfyReading) -> None:
    """What happens to the last sampler's latent on its way to a SaveImage: a VAEDecode, nothing else."""
    for consumer in graph.consumers(sampler_id):
        kind = graph.nodes[consumer].get("class_type")
        if kind != "VAEDecode":
            reading.notes.append(f"{graph.name(consumer)} after the sampler is not read (if it changes the saved "
                                 "picture, personae does not do it)")
            continue
        _, inputs = graph.node(consumer)
        _vae(graph, *graph.link(consumer, inputs, "vae"), reading)
        for after in graph.consumers(consumer):
            if graph.nodes[after].get("class_type") not in ("SaveImage", "PreviewImage"):
                reading.notes.append(f"{graph.name(after)} after the VAEDecode is not read (if it changes the saved "
                                     "picture, personae does not do it)")


def read_comfy_graph(text: str, source: str) -> ComfyReading:
    """Generate settings from ComfyUI's `prompt` chunk; raises a UserError naming what personae cannot place."""
    graph = _Graph(_parse(text, source), source)
    last, samplers = _last_sampler(graph)
    reading = ComfyReading({})
    _, inputs = graph.node(last, SAMPLER_NODES)
    values = _sampler(graph, last)
    hires = hires_pass(graph, last, inputs, values)
    if len(samplers) > 1 and not hires:
        raise _several(graph, samplers)
    base_id = hires[0] if hires else last
    _, base_inputs = graph.node(base_id)
    base = _sampler(graph, base_id) if hires else values
    prompt, negative, clip, loras, checkpoint, units = _prompts(graph, base_id, base_inputs, reading)
    data: dict = {"prompt": prompt, "negative": negative, "seed": base["seed"], "steps": base["steps"],
                  "cfg": base["cfg"], "sampler": base["sampler"], "clip_skip": clip[0]}
    reading.sampler_at = graph.name(base_id)
    data.update(_latent(graph, base_id, base_inputs, base, reading))
    if "strength" in data and hires:
        raise graph.refuse(f"runs a hires fix ({graph.name(last)}) on an img2img first pass; personae's hires fix "
                           "redraws a txt2img picture.")
    if "strength" in data:
        data["steps"] = steps_for(base["steps"], base["denoise"]) if base["denoise"] > 0 else base["steps"]
        data["_comfy_steps"] = base["steps"]
    if hires:
        data.update(hires_settings(graph, last, values, base, hires[1], (prompt, negative, clip, loras),
                                   _prompts(graph, last, inputs, reading), reading))
        for link in data.pop("_vaes", ()):  # the hires fix in pixels decodes and encodes with a VAE too
            _vae(graph, *link, reading)
    reading.units = pass_units(units, data.pop("_units") if hires else None)
    tags = _lora_tags(graph, loras, clip[1])
    for _, _, freeu, v2 in (p for p in loras if p[0] == "freeu"):  # FreeU's hooks, wherever it sits in the chain
        data.update(freeu=freeu, freeu_v2=v2)
    for _, _, prediction, zsnr in (p for p in loras if p[0] == "sampling"):
        data["prediction_type"] = prediction
        if zsnr:
            data["noise_schedule"] = "Zero Terminal SNR"
    if tags:
        data["prompt"] = f"{prompt} {tags}".strip()
    _decoded(graph, last, reading)
    _, ckpt = graph.node(checkpoint)
    reading.checkpoint = str(graph.value(checkpoint, ckpt, "ckpt_name", str))
    prompt_notes(reading.texts, reading)
    for name in dict.fromkeys((base["name"], values["name"])):
        if _NOISY.search(name):
            reading.notes.append(f"sampler {name}: ComfyUI draws its step noise on the GPU, personae from the seed's "
                                 "CPU generator, so the picture differs from ComfyUI's")
    reading.settings = data
    reading.notes = list(dict.fromkeys(reading.notes))  # a node both hires passes read is said once
    return reading
