"""--from-png on pictures saved by ComfyUI: the `prompt` graph read into generate settings, refusals by node.

The fixtures are graphs shaped as ComfyUI writes them (its default workflow's node ids, the input names of its
nodes.py), stored as ComfyUI stores them: `prompt` and `workflow` text chunks.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from personae.config.generate import GenerateSettings
from personae.errors import UserError
from personae.jobs.generate import png_not_applied, settings_from_png
from personae.media.png import parse_parameters, read_png_text

BIG_SEED = 1_063_845_123_445_107  # a seed as ComfyUI draws them: far above 2**32


def default_graph(**ksampler) -> dict:
    """ComfyUI's default txt2img workflow in API format."""
    graph = {
        "3": {"class_type": "KSampler", "inputs": {
            "seed": BIG_SEED, "steps": 20, "cfg": 8.0, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 768, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "lowres, blurry", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
    }
    graph["3"]["inputs"].update(ksampler)
    return graph


def comfy_png(path, graph: dict | None, workflow: bool = True, size=(64, 64), prompt_text: str | None = None):
    """A PNG as ComfyUI's SaveImage writes it: `prompt` (the API graph) and `workflow` (the editor's graph)."""
    info = PngInfo()
    if graph is not None or prompt_text is not None:
        info.add_text("prompt", prompt_text if prompt_text is not None else json.dumps(graph))
    if workflow:
        info.add_text("workflow", json.dumps({"last_node_id": 9, "nodes": [], "links": [], "version": 0.4}))
    Image.new("RGB", size, (90, 120, 150)).save(path, pnginfo=info)
    return path


def with_lora_chain(graph: dict, strength_clip: float = 0.8) -> dict:
    """CheckpointLoaderSimple -> LoraLoader -> LoraLoaderModelOnly -> KSampler; clip: LoraLoader -> CLIPSetLastLayer."""
    graph = copy.deepcopy(graph)
    graph["10"] = {"class_type": "LoraLoader", "inputs": {
        "lora_name": "styles\\watercolor.safetensors", "strength_model": 0.8, "strength_clip": strength_clip,
        "model": ["4", 0], "clip": ["4", 1]}}
    graph["11"] = {"class_type": "LoraLoaderModelOnly", "inputs": {
        "lora_name": "detail.safetensors", "strength_model": 0.5, "model": ["10", 0]}}
    graph["12"] = {"class_type": "CLIPSetLastLayer", "inputs": {"stop_at_clip_layer": -2, "clip": ["10", 1]}}
    graph["3"]["inputs"]["model"] = ["11", 0]
    graph["6"]["inputs"]["clip"] = graph["7"]["inputs"]["clip"] = ["12", 0]
    return graph


def hires_graph(**second) -> dict:
    """The two-pass "hires fix" graph: KSampler -> LatentUpscaleBy -> KSampler at denoise 0.5."""
    graph = default_graph(steps=12, sampler_name="dpmpp_2m", scheduler="karras", cfg=7.0)
    graph["10"] = {"class_type": "LatentUpscaleBy", "inputs": {
        "upscale_method": "bilinear", "scale_by": 1.5, "samples": ["3", 0]}}
    graph["11"] = {"class_type": "KSampler", "inputs": {
        "seed": BIG_SEED, "steps": 10, "cfg": 7.0, "sampler_name": "dpmpp_2m", "scheduler": "karras",
        "denoise": 0.5, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["10", 0]}}
    graph["11"]["inputs"].update(second)
    graph["8"]["inputs"]["samples"] = ["11", 0]
    return graph


def read(tmp_path, graph, name="comfy.png") -> dict:
    return settings_from_png(comfy_png(tmp_path / name, graph))


def refusal(tmp_path, graph, prompt_text=None) -> str:
    with pytest.raises(UserError) as caught:
        settings_from_png(comfy_png(tmp_path / "refused.png", graph, prompt_text=prompt_text))
    return str(caught.value)


def not_applied(tmp_path, graph, **settings) -> str:
    png = comfy_png(tmp_path / "notes.png", graph)
    data = {"model": "./models/v1-5-pruned-emaonly.safetensors", **settings_from_png(png), **settings}
    return "; ".join(png_not_applied(png, GenerateSettings(**data)))


# -- what is read

def test_the_default_workflow_reads_as_its_txt2img_settings(tmp_path):
    data = read(tmp_path, default_graph())
    assert data == {"prompt": "a photo of a cat", "negative": "lowres, blurry", "seed": BIG_SEED, "steps": 20,
                    "cfg": 8.0, "sampler": "Euler", "clip_skip": 1, "width": 512, "height": 768, "batch_size": 1,
                    "rng": "CPU", "pad_conds": "off", "quantize": True, "emphasis": "ComfyUI"}
    GenerateSettings(model="m", **data)  # a seed above 2**32 is a valid personae seed
    assert not_applied(tmp_path, default_graph()) == ""  # same checkpoint name, nothing else to say


@pytest.mark.parametrize("sampler_name, scheduler, ours", [
    ("dpmpp_2m", "karras", "DPM++ 2M Karras"), ("euler_ancestral", "normal", "Euler a"),
    ("dpmpp_2m_sde", "exponential", "DPM++ 2M SDE Exponential"), ("ddim", "sgm_uniform", "DDIM SGM Uniform"),
    ("uni_pc", "normal", "UniPC")])
def test_sampler_and_scheduler_become_personaes_sampler(tmp_path, sampler_name, scheduler, ours):
    assert read(tmp_path, default_graph(sampler_name=sampler_name, scheduler=scheduler))["sampler"] == ours


def test_a_sampler_personae_lacks_stays_by_name_and_is_said(tmp_path):
    graph = default_graph(sampler_name="euler", scheduler="kl_optimal")  # ComfyUI's ends at 0, A1111's does not
    assert read(tmp_path, graph)["sampler"] == "euler kl_optimal"  # --sampler replaces it; else it fails by name
    assert 'sampler "euler kl_optimal" of KSampler node 3' in not_applied(tmp_path, graph, sampler="Euler")


def test_lora_chains_and_clip_skip(tmp_path):
    """A LoraLoader is <lora:name:w>, or A1111's <lora:name:te:unet> where strength_clip and strength_model differ;
    a LoraLoaderModelOnly leaves the text encoder alone (te 0), a LoraLoader whose MODEL output goes unused the
    UNet (unet 0). Nothing of that is drawn otherwise, so nothing is said."""
    data = read(tmp_path, with_lora_chain(default_graph()))
    assert data["prompt"] == "a photo of a cat <lora:watercolor:0.8> <lora:detail:0:0.5>"
    assert data["clip_skip"] == 2 and data["negative"] == "lowres, blurry"
    assert not_applied(tmp_path, with_lora_chain(default_graph())) == ""
    data = read(tmp_path, with_lora_chain(default_graph(), strength_clip=0.3))
    assert data["prompt"] == "a photo of a cat <lora:watercolor:0.3:0.8> <lora:detail:0:0.5>"
    clip_only = with_lora_chain(default_graph())
    clip_only["11"]["inputs"]["model"] = ["4", 0]  # the LoraLoader's MODEL output unused
    assert read(tmp_path, clip_only)["prompt"] == "a photo of a cat <lora:detail:0:0.5> <lora:watercolor:0.8:0>"


def test_ksampler_advanced_reads_when_it_runs_as_a_ksampler(tmp_path):
    graph = default_graph()
    inputs = graph["3"]["inputs"]
    graph["3"] = {"class_type": "KSamplerAdvanced", "inputs": {
        "add_noise": "enable", "noise_seed": 5, "steps": 8, "cfg": 6.5, "sampler_name": "dpmpp_2m",
        "scheduler": "karras", "start_at_step": 0, "end_at_step": 10000, "return_with_leftover_noise": "disable",
        **{k: inputs[k] for k in ("model", "positive", "negative", "latent_image")}}}
    data = read(tmp_path, graph)
    assert (data["seed"], data["steps"], data["cfg"], data["sampler"]) == (5, 8, 6.5, "DPM++ 2M Karras")
    graph["3"]["inputs"]["end_at_step"] = 4
    message = refusal(tmp_path, graph)
    assert "KSamplerAdvanced node 3" in message and "end_at_step 4 of 8 steps" in message


def test_img2img_graph_reads_the_denoise_as_strength_and_asks_for_the_picture(tmp_path):
    graph = default_graph(denoise=0.6, steps=12)
    graph["5"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    graph["10"] = {"class_type": "LoadImage", "inputs": {"image": "portrait.png", "upload": "image"}}
    data = read(tmp_path, graph)
    assert data["strength"] == 0.6 and "width" not in data
    # ComfyUI runs its 12 steps on the tail of a schedule of 12 / 0.6: A1111's "img2img fix steps"
    assert (data["steps"], data["img2img_fix_steps"]) == (12, True)
    graph["3"]["inputs"]["sampler_name"] = "ddim"  # diffusers' DDIM: as many steps as its int(steps x strength)
    data = read(tmp_path, graph, "ddim.png")
    assert int(data["steps"] * data["strength"]) == 12 and "img2img_fix_steps" not in data
    assert 'img2img from LoadImage "portrait.png" (pass that picture with --init-image' in not_applied(tmp_path, graph)
    assert "LoadImage" not in not_applied(tmp_path, graph, init_image="portrait.png")


def test_hires_graph_becomes_the_latent_hires_fix(tmp_path):
    data = read(tmp_path, hires_graph())
    assert (data["steps"], data["width"], data["height"]) == (12, 512, 768)
    assert (data["hires_scale"], data["hires_upscaler"], data["hires_denoise"]) == (1.5, "latent", 0.5)
    assert data["hires_steps"] == 10 and "hires_sampler" not in data and "hires_prompt" not in data  # ComfyUI's
    data = read(tmp_path, hires_graph(sampler_name="euler", cfg=5.0, seed=1), "second.png")
    assert (data["hires_sampler"], data["hires_cfg"]) == ("Euler Karras", 5.0)
    notes = not_applied(tmp_path, hires_graph(seed=1))
    assert "KSampler node 11 has its own seed 1" in notes
    graph = hires_graph()
    graph["10"] = {"class_type": "LatentUpscale", "inputs": {
        "upscale_method": "nearest-exact", "width": 768, "height": 1152, "crop": "disabled", "samples": ["3", 0]}}
    assert read(tmp_path, graph, "resize.png")["hires_resize"] == "768x1152"
    assert "LatentUpscale node 10 upscales with nearest-exact" in not_applied(tmp_path, graph)


def test_what_comfyui_draws_differently_is_said(tmp_path):
    graph = default_graph(sampler_name="euler_ancestral")
    graph["5"]["inputs"]["batch_size"] = 4
    graph["6"]["inputs"]["text"] = "a (photo:1.2) of a cat, embedding:easynegative.pt"
    assert read(tmp_path, graph)["prompt"] == "a (photo:1.2) of a cat, easynegative"
    notes = not_applied(tmp_path, graph)
    for said in ("batch_size 4: ComfyUI draws the whole batch's starting noise from one seed",
                 "sampler euler_ancestral: ComfyUI draws its step noise on the GPU",
                 "embedding:easynegative (written as the name; pass --embeddings-dir"):
        assert said in notes, (said, notes)
    assert "embedding" not in not_applied(tmp_path, graph, embeddings=["easynegative.pt"])
    assert "weighted" not in notes  # weighted as ComfyUI weights them (test_comfy_prompts.py)
    notes = not_applied(tmp_path, default_graph(), model="./tiny")
    assert 'CheckpointLoaderSimple "v1-5-pruned-emaonly.safetensors" (this run uses ./tiny)' in notes


def test_nodes_off_the_path_are_not_read(tmp_path):
    graph = default_graph()
    graph["20"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    graph["21"] = {"class_type": "Note", "inputs": {"text": "hello"}}  # not on the sampler's path
    graph["22"] = {"class_type": "VAELoader", "inputs": {"vae_name": "unused.safetensors"}}
    assert read(tmp_path, graph)["prompt"] == "a photo of a cat"
    assert not_applied(tmp_path, graph) == ""


def test_a_vae_loader_on_the_path_is_named(tmp_path):
    graph = default_graph()
    graph["13"] = {"class_type": "VAELoader", "inputs": {"vae_name": "vae-ft-mse-840000-ema-pruned.safetensors"}}
    graph["8"]["inputs"]["vae"] = ["13", 0]
    assert 'VAELoader "vae-ft-mse-840000-ema-pruned.safetensors" (pass it with --vae)' in not_applied(tmp_path, graph)


# -- what is refused, each by node

def test_a_custom_node_on_the_path_is_refused_by_name(tmp_path):
    graph = default_graph()
    graph["6"] = {"class_type": "BNK_CLIPTextEncodeAdvanced", "inputs": {
        "text": "a cat", "token_normalization": "none", "weight_interpretation": "A1111", "clip": ["4", 1]}}
    message = refusal(tmp_path, graph)
    assert "BNK_CLIPTextEncodeAdvanced node 6, a custom node" in message and "Traceback" not in message
    assert "\n" not in message.split("\n\n")[0]  # one paragraph
    graph = default_graph()
    graph["6"]["inputs"]["text"] = ["40", 0]
    graph["40"] = {"class_type": "Text Multiline", "inputs": {"text": "a cat"}}
    assert "the input text as a link to Text Multiline node 40" in refusal(tmp_path, graph)


def test_an_unknown_input_of_a_known_node_is_refused_by_name(tmp_path):
    graph = default_graph()
    graph["5"]["inputs"]["tiling"] = True
    assert "EmptyLatentImage node 5 the input tiling" in refusal(tmp_path, graph)


def test_several_samplers_that_are_not_a_hires_fix_are_refused(tmp_path):
    graph = default_graph()
    graph["13"] = copy.deepcopy(graph["3"])
    graph["14"] = {"class_type": "VAEDecode", "inputs": {"samples": ["13", 0], "vae": ["4", 2]}}
    message = refusal(tmp_path, graph)
    assert "2 samplers (KSampler node 3, KSampler node 13)" in message
    graph = hires_graph()
    graph["11"]["inputs"]["latent_image"] = ["3", 0]  # a second pass straight on the first's latent
    del graph["10"]
    assert "KSampler node 3, KSampler node 11" in refusal(tmp_path, graph)
    assert "KSampler node 11 at denoise 1;" in refusal(tmp_path, hires_graph(denoise=1.0))


def test_damaged_or_partial_comfy_chunks_are_one_paragraph(tmp_path):
    assert "is not valid JSON" in refusal(tmp_path, None, prompt_text='{"3": {"class_type": ')
    assert "is not a ComfyUI graph" in refusal(tmp_path, None, prompt_text='[1, 2]')
    with pytest.raises(UserError, match="only ComfyUI's `workflow`"):
        settings_from_png(comfy_png(tmp_path / "workflow.png", None))
    graph = default_graph()
    graph["6"]["inputs"]["clip"] = ["99", 0]
    assert "links to node 99, which it does not hold" in refusal(tmp_path, graph)
    graph = default_graph()
    del graph["3"]
    graph["3"] = {"class_type": "SamplerCustomAdvanced", "inputs": {}}
    assert "no KSampler or KSamplerAdvanced node" in refusal(tmp_path, graph)


def test_the_cli_refuses_a_custom_node_without_a_traceback(tmp_path, capsys):
    from personae.cli.main import main

    graph = default_graph()
    graph["3"]["inputs"]["model"] = ["30", 0]
    graph["30"] = {"class_type": "PerturbedAttentionGuidance", "inputs": {"model": ["4", 0], "scale": 3.0}}
    code = main(["generate", "--from-png", str(comfy_png(tmp_path / "pag.png", graph)), "--model", "x",
                 "--out", str(tmp_path / "out")])
    err = " ".join(capsys.readouterr().err.split())  # the paragraph is wrapped to the terminal, around the path
    assert code != 0 and "PerturbedAttentionGuidance node 30" in err and "Traceback" not in err


# -- the pixels

def test_from_png_of_a_comfy_picture_draws_what_the_same_settings_draw(tiny_model, tiny_session, tmp_path, capsys):
    import numpy as np
    from test_generate import _kohya_lora

    from personae.cli.main import main

    _kohya_lora(tiny_session.pipe, tmp_path / "loras" / "watercolor.safetensors", seed=1)
    graph = default_graph(steps=3, cfg=6.0, sampler_name="dpmpp_2m", scheduler="karras", seed=2**40 + 7)
    graph["5"]["inputs"].update(width=64, height=64)
    graph["10"] = {"class_type": "LoraLoader", "inputs": {
        "lora_name": "watercolor.safetensors", "strength_model": 0.7, "strength_clip": 0.7, "model": ["4", 0],
        "clip": ["4", 1]}}
    graph["12"] = {"class_type": "CLIPSetLastLayer", "inputs": {"stop_at_clip_layer": -2, "clip": ["10", 1]}}
    graph["3"]["inputs"]["model"] = ["10", 0]
    graph["6"]["inputs"]["clip"] = graph["7"]["inputs"]["clip"] = ["12", 0]
    png = comfy_png(tmp_path / "comfy.png", graph)
    assert main(["generate", "--from-png", str(png), "--model", str(tiny_model[0]), "--lora-dir",
                 str(tmp_path / "loras"), "--out", str(tmp_path / "a")]) == 0
    assert 'CheckpointLoaderSimple "v1-5-pruned-emaonly.safetensors"' in capsys.readouterr().err
    assert main(["generate", "--model", str(tiny_model[0]), "--prompt", "a photo of a cat", "--negative",
                 "lowres, blurry", "--seed", str(2**40 + 7), "--steps", "3", "--cfg", "6", "--sampler",
                 "DPM++ 2M Karras", "--quantize", "--clip-skip", "2", "--width", "64", "--height", "64", "--lora",
                 f"{tmp_path / 'loras' / 'watercolor.safetensors'}:0.7", "--out", str(tmp_path / "b")]) == 0
    [a], [b] = sorted((tmp_path / "a").glob("*.png")), sorted((tmp_path / "b").glob("*.png"))
    assert a.name == b.name == f"00000-{2**40 + 7}.png"
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    _, _, params = parse_parameters(read_png_text(a)["parameters"])
    assert params["Seed"] == str(2**40 + 7) and params["Clip skip"] == "2"
    assert json.loads(read_png_text(a)["personae"])["seed"] == 2**40 + 7


def test_comfyuis_batch_of_one_starting_noise_is_personaes_for_a_seed_above_2_32(tiny_model, tiny_session):
    """ComfyUI (comfy/sample.py prepare_noise): torch.randn of the latent's shape from torch.manual_seed(seed) on the
    CPU. personae's first UNet input for that seed, at a sampler whose first input is the noise times sigma_max."""
    from personae.inference.txt2img import txt2img

    seed = 2**63 + 12345
    seen = []
    hook = tiny_session.pipe.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        txt2img(GenerateSettings(model=str(tiny_model[0]), prompt="a cat", seed=seed, steps=1, cfg=1.0,
                                 sampler="DDIM", width=64, height=64), tiny_session)
    finally:
        hook.remove()
    comfy = torch.randn([1, 4, 8, 8], generator=torch.Generator("cpu").manual_seed(seed))
    assert torch.equal(seen[0], comfy)  # DDIM's init_noise_sigma is 1 and it does not scale the model input


def test_a_comfy_hires_graph_runs_as_personaes_hires_fix(tiny_model, tiny_session, tmp_path):
    import numpy as np

    from personae.cli.main import main

    graph = hires_graph(steps=2, cfg=5.0)
    graph["3"]["inputs"].update(steps=2, seed=9)
    graph["5"]["inputs"].update(width=64, height=64)
    png = comfy_png(tmp_path / "hires.png", graph)
    assert main(["generate", "--from-png", str(png), "--model", str(tiny_model[0]), "--out", str(tmp_path / "a")]) == 0
    assert main(["generate", "--model", str(tiny_model[0]), "--prompt", "a photo of a cat", "--negative",
                 "lowres, blurry", "--seed", "9", "--steps", "2", "--cfg", "7", "--sampler", "DPM++ 2M Karras",
                 "--width", "64", "--height", "64", "--hires-scale", "1.5", "--hires-denoise", "0.5", "--hires-steps",
                 "2", "--hires-upscaler", "latent", "--hires-cfg", "5", "--quantize", "--out", str(tmp_path / "b")]) == 0
    [a], [b] = sorted((tmp_path / "a").glob("*.png")), sorted((tmp_path / "b").glob("*.png"))
    assert Image.open(a).size == (96, 96)
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


# -- ControlNet nodes

def controlnet_graph(graph: dict | None = None, canny: bool = False, start: float = 0.0, end: float = 1.0,
                     strength: float = 0.8, name: str = "control_v11p_sd15_canny.pth") -> dict:
    """The sampler's conditioning through ControlNetApplyAdvanced (a ControlNetLoader's model, a LoadImage's
    picture, or ComfyUI's Canny of it), as ComfyUI's ControlNet examples wire it."""
    graph = copy.deepcopy(graph or default_graph())
    graph["20"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": name}}
    graph["21"] = {"class_type": "LoadImage", "inputs": {"image": "pose.png", "upload": "image"}}
    graph["22"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": ["6", 0], "negative": ["7", 0], "control_net": ["20", 0], "image": ["21", 0],
        "strength": strength, "start_percent": start, "end_percent": end}}
    if canny:
        graph["23"] = {"class_type": "Canny", "inputs": {"image": ["21", 0], "low_threshold": 0.4,
                                                         "high_threshold": 0.8}}
        graph["22"]["inputs"]["image"] = ["23", 0]
    graph["3"]["inputs"]["positive"], graph["3"]["inputs"]["negative"] = ["22", 0], ["22", 1]
    return graph


def test_controlnet_nodes_read_as_units_whose_pictures_are_asked_for(tmp_path):
    """A ControlNetApplyAdvanced on the sampler's conditioning is a unit: its ControlNetLoader's file (lllyasviel's
    by its hub id), strength as the weight, the window; a LoadImage is a ready map (raw), ComfyUI's Canny node canny
    with its thresholds on 255. The picture is not in the PNG: said by the name ComfyUI read."""
    from personae.jobs.png_controls import png_control_units

    png = comfy_png(tmp_path / "raw.png", controlnet_graph())
    assert settings_from_png(png)["prompt"] == "a photo of a cat"  # the walk reaches the text encoders through it
    [unit] = png_control_units(png)
    assert unit == {"_module": "none", "_model": "control_v11p_sd15_canny.pth", "_picture": "pose.png", "type": "raw",
                    "model": "lllyasviel/control_v11p_sd15_canny", "weight": 0.8, "guidance_start": 0.0,
                    "guidance_end": 1.0, "guidance_by": "steps", "hr_option": "Both"}
    notes = not_applied(tmp_path, controlnet_graph())
    assert ('ControlNet 0 (Module none, Model control_v11p_sd15_canny.pth) (no picture: pass it with --control '
            'TYPE:IMAGE, in the units\' order (ComfyUI read "pose.png"))') in notes
    [unit] = png_control_units(comfy_png(tmp_path / "canny.png", controlnet_graph(canny=True, start=0.1, end=0.6)))
    # a window is ComfyUI's, by noise level (test_control_units.py: the calls it controls)
    assert (unit["type"], unit["options"], unit["guidance_start"], unit["guidance_end"], unit["guidance_by"]) == \
        ("canny", {"low": 102.0, "high": 204.0}, 0.1, 0.6, "noise")
    notes = not_applied(tmp_path, controlnet_graph(canny=True, start=0.1, end=0.6))
    assert "Canny node 23 makes its map with kornia's canny" in notes and "0.6" not in notes


def test_chained_and_old_controlnet_nodes_and_hires_passes(tmp_path):
    """Two ControlNetApplyAdvanced in a row are units 0 and 1 (the one nearest the text encoders first); the old
    ControlNetApply (the prompt alone) is a unit and said; in a hires graph a unit conditioning only one pass gets
    that pass as its Hires-Fix Option."""
    from personae.jobs.png_controls import png_control_units

    graph = controlnet_graph()
    graph["24"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": ["22", 0], "negative": ["22", 1], "control_net": ["20", 0], "image": ["21", 0], "strength": 0.5,
        "start_percent": 0.0, "end_percent": 1.0}}
    graph["3"]["inputs"]["positive"], graph["3"]["inputs"]["negative"] = ["24", 0], ["24", 1]
    assert [u["weight"] for u in png_control_units(comfy_png(tmp_path / "two.png", graph))] == [0.8, 0.5]
    old = controlnet_graph()
    old["22"] = {"class_type": "ControlNetApply", "inputs": {"conditioning": ["6", 0], "control_net": ["20", 0],
                                                             "image": ["21", 0], "strength": 0.7}}
    old["3"]["inputs"]["negative"] = ["7", 0]
    [unit] = png_control_units(comfy_png(tmp_path / "old.png", old))
    assert unit["weight"] == 0.7 and "ControlNetApply node 22 controls the prompt alone" in not_applied(tmp_path, old)
    both = controlnet_graph(hires_graph(), canny=True, start=0.2)  # both passes read node 22's conditioning
    both["11"]["inputs"]["positive"], both["11"]["inputs"]["negative"] = ["22", 0], ["22", 1]
    assert [u["hr_option"] for u in png_control_units(comfy_png(tmp_path / "both.png", both))] == ["Both"]
    assert not_applied(tmp_path, both).count("Canny node 23 makes its map") == 1  # said once
    low = controlnet_graph(hires_graph())  # the redraw reads the text encoders directly
    assert [u["hr_option"] for u in png_control_units(comfy_png(tmp_path / "low.png", low))] == ["Low res only"]
    high = controlnet_graph(hires_graph())
    high["3"]["inputs"]["positive"], high["3"]["inputs"]["negative"] = ["6", 0], ["7", 0]
    high["11"]["inputs"]["positive"], high["11"]["inputs"]["negative"] = ["22", 0], ["22", 1]
    assert [u["hr_option"] for u in png_control_units(comfy_png(tmp_path / "high.png", high))] == ["High res only"]


def test_controlnet_wiring_personae_cannot_place_is_refused(tmp_path):
    crossed = controlnet_graph()
    crossed["3"]["inputs"]["negative"] = ["7", 0]  # the prompt controlled by an Advanced node, the negative not
    assert "through different ControlNetApplyAdvanced nodes" in refusal(tmp_path, crossed)
    strong = controlnet_graph(strength=3.0)
    assert "the strength 3; personae's Control Weight goes from 0 to 2" in refusal(tmp_path, strong)
    preprocessed = controlnet_graph()
    preprocessed["23"] = {"class_type": "DWPreprocessor", "inputs": {"image": ["21", 0]}}
    preprocessed["22"]["inputs"]["image"] = ["23", 0]
    assert "DWPreprocessor node 23, a custom node" in refusal(tmp_path, preprocessed)


# -- inpainting

def inpaint_graph(node: str = "SetLatentNoiseMask", mask_node: str = "LoadImage", denoise: float = 0.6) -> dict:
    """img2img whose latent carries a mask: LoadImage -> VAEEncode -> SetLatentNoiseMask (the mask the LoadImage's
    own, drawn in ComfyUI's mask editor), or LoadImage -> VAEEncodeForInpaint with a LoadImageMask's red channel."""
    graph = default_graph(denoise=denoise)
    graph["10"] = {"class_type": "LoadImage", "inputs": {"image": "photo.png", "upload": "image"}}
    mask = ["10", 1]
    if mask_node == "LoadImageMask":
        graph["13"] = {"class_type": "LoadImageMask", "inputs": {"image": "mask.png", "channel": "red",
                                                                 "upload": "image"}}
        mask = ["13", 0]
    if node == "SetLatentNoiseMask":
        graph["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
        graph["12"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["11", 0], "mask": mask}}
    else:
        graph["12"] = {"class_type": "VAEEncodeForInpaint", "inputs": {"pixels": ["10", 0], "vae": ["4", 2],
                                                                       "mask": mask, "grow_mask_by": 6}}
    graph["3"]["inputs"]["latent_image"] = ["12", 0]
    del graph["5"]
    return graph


def test_inpainting_graphs_read_as_personaes_inpainting(tmp_path):
    """SetLatentNoiseMask over a VAEEncode is A1111's inpainting of the original (no blur); ComfyUI's mask of a
    picture is 1 - alpha, so its transparent part is what is redrawn ("Inpaint not masked" on personae's reading of
    alpha); VAEEncodeForInpaint starts the masked part afresh (fill). The mask's file is the user's to pass."""
    data = read(tmp_path, inpaint_graph())
    assert (data["strength"], data["mask_invert"], data["mask_blur"], data["masked_content"]) == \
        (0.6, True, 0, "original")
    notes = not_applied(tmp_path, inpaint_graph())
    assert 'inpainting with the mask in "photo.png" (pass that picture with --mask' in notes
    assert "SetLatentNoiseMask node 12: ComfyUI keeps the unmasked part by blending the latents" in notes
    data = read(tmp_path, inpaint_graph("VAEEncodeForInpaint", "LoadImageMask", denoise=1.0), "fresh.png")
    assert (data["strength"], data["mask_invert"], data["masked_content"]) == (1.0, False, "fill")
    notes = not_applied(tmp_path, inpaint_graph("VAEEncodeForInpaint", "LoadImageMask", denoise=1.0))
    assert "grows the mask by 6 pixels" in notes and "ComfyUI its red channel, personae its grey levels" in notes
    wrong = inpaint_graph()
    wrong["12"]["inputs"]["mask"] = ["10", 0]
    assert "a mask from output 0 of LoadImage node 10, which is not its mask" in refusal(tmp_path, wrong)
    odd = inpaint_graph(mask_node="LoadImageMask")
    odd["13"]["inputs"]["channel"] = "purple"
    assert "the channel purple" in refusal(tmp_path, odd)


def test_a_comfy_inpainting_redraws_the_transparent_part(tiny_model, tiny_session, tmp_path, capsys):
    """End to end: the picture ComfyUI's mask editor saves (transparent where painted) given as --init-image and
    --mask: the opaque half is kept exactly, the transparent half redrawn, as in ComfyUI."""
    import numpy as np

    from personae.cli.main import main

    graph = inpaint_graph(denoise=1.0)
    graph["3"]["inputs"].update(steps=3, seed=9)
    png = comfy_png(tmp_path / "comfy.png", graph)
    photo = Image.new("RGBA", (64, 64), (200, 60, 40, 255))
    photo.paste((200, 60, 40, 0), (0, 0, 32, 64))  # the left half painted out in the mask editor
    photo.save(tmp_path / "photo.png")
    assert main(["generate", "--from-png", str(png), "--model", str(tiny_model[0]), "--init-image",
                 str(tmp_path / "photo.png"), "--mask", str(tmp_path / "photo.png"), "--quiet",
                 "--out", str(tmp_path / "out")]) == 0
    assert "pass that picture with --mask" not in capsys.readouterr().err
    [made] = (tmp_path / "out").glob("*.png")
    got = np.asarray(Image.open(made).convert("RGB"), dtype=np.int16)
    assert (np.abs(got[:, 40:] - (200, 60, 40)).max(), np.abs(got[:, :24] - (200, 60, 40)).mean() > 10) == (0, True)
    assert "Mask mode: Inpaint not masked" in read_png_text(made)["parameters"]


def test_an_inpainting_models_conditioning_reads_as_inpainting(tmp_path):
    """InpaintModelConditioning (an inpainting checkpoint's picture and mask on the conditioning, the latent from
    the same node) is inpainting the original with that mask; conditioning and latent from different nodes are
    refused, a ControlNet after it is still a unit."""
    from personae.jobs.png_controls import png_control_units

    graph = default_graph(denoise=1.0)
    graph["10"] = {"class_type": "LoadImage", "inputs": {"image": "photo.png", "upload": "image"}}
    graph["12"] = {"class_type": "InpaintModelConditioning", "inputs": {
        "positive": ["6", 0], "negative": ["7", 0], "vae": ["4", 2], "pixels": ["10", 0], "mask": ["10", 1],
        "noise_mask": True}}
    graph["3"]["inputs"].update(positive=["12", 0], negative=["12", 1], latent_image=["12", 2])
    del graph["5"]
    data = read(tmp_path, graph)
    assert (data["prompt"], data["strength"], data["mask_invert"], data["masked_content"]) == \
        ("a photo of a cat", 1.0, True, "original")
    notes = not_applied(tmp_path, graph)
    assert "InpaintModelConditioning node 12 with noise_mask" in notes
    assert '"photo.png" (pass that picture with --mask' in notes
    controlled = controlnet_graph(graph)  # the ControlNet on the text encoders' conditioning, before the inpainting
    controlled["3"]["inputs"].update(positive=["12", 0], negative=["12", 1])
    controlled["12"]["inputs"].update(positive=["22", 0], negative=["22", 1])
    assert [u["weight"] for u in png_control_units(comfy_png(tmp_path / "both.png", controlled))] == [0.8]
    split = copy.deepcopy(graph)
    split["3"]["inputs"].update(positive=["6", 0], negative=["7", 0])
    assert "an inpainting model's conditioning and latent from different nodes" in refusal(tmp_path, split)
    odd = copy.deepcopy(graph)
    odd["12"]["inputs"]["noise_mask"] = "yes"
    assert "the input noise_mask as 'yes'" in refusal(tmp_path, odd)


def test_a_comfy_controlnet_window_runs_by_noise_level(tiny_model, tmp_path, capsys):
    """End to end: a ComfyUI PNG whose ControlNet node controls up to end_percent 0.5, its map given with --control:
    the run keeps ComfyUI's window by noise level (test_control_units.py checks the calls it controls), its PNG
    redraws the same picture, and the same window counted by steps (--control-guidance-by) draws another."""
    import numpy as np

    from personae.cli.main import main
    from personae.inference.txt2img import txt2img
    from personae.models.controlnet import write_tiny_controlnet

    net = write_tiny_controlnet(tmp_path / "controlnet", base=tiny_model[0], seed=0)
    graph = controlnet_graph(end=0.5)
    graph["3"]["inputs"].update(steps=6, seed=9)
    graph["5"]["inputs"].update(width=64, height=64)  # the tiny model's size (the graph's 512x768 took 90 s)
    png = comfy_png(tmp_path / "comfy.png", graph)
    control = Image.new("RGB", (64, 64))
    control.paste((255, 255, 255), (16, 16, 48, 48))
    control.save(tmp_path / "pose.png")
    assert main(["generate", "--from-png", str(png), "--model", str(tiny_model[0]), "--control",
                 f"raw:{tmp_path / 'pose.png'}", "--controlnet", f"raw={net}", "--quiet",
                 "--out", str(tmp_path / "out")]) == 0
    assert "ControlNet 0" not in capsys.readouterr().err  # the unit is run as the graph has it
    [made] = (tmp_path / "out").glob("*.png")
    data = settings_from_png(made)
    unit = data["controls"][0]
    assert (unit["guidance_start"], unit["guidance_end"], unit["guidance_by"], unit["weight"]) == (0.0, 0.5, "noise",
                                                                                                   0.8)
    again = txt2img(GenerateSettings(**data))[0].image
    assert np.array_equal(np.asarray(Image.open(made).convert("RGB")), np.asarray(again))
    # --control-guidance-by steps counts the same window A1111's way, and draws another picture
    assert main(["generate", "--from-png", str(png), "--model", str(tiny_model[0]), "--control",
                 f"raw:{tmp_path / 'pose.png'}", "--controlnet", f"raw={net}", "--control-guidance-by", "steps",
                 "--quiet", "--out", str(tmp_path / "steps")]) == 0
    [steps] = (tmp_path / "steps").glob("*.png")
    assert settings_from_png(steps)["controls"][0]["guidance_by"] == "steps"
    assert not np.array_equal(np.asarray(Image.open(steps).convert("RGB")), np.asarray(again))
