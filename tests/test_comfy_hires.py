"""ComfyUI's hires fix in pixels (media/comfy_hires.py): the first pass decoded, made larger by an image resize and
/ or an upscale model, encoded again and redrawn, read as personae's hires fix with the image or a model upscaler.

The graphs are wired as ComfyUI's "2 pass txt2img" examples wire them (the non-latent and the ESRGAN variants).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from test_comfy_png import BIG_SEED, comfy_png, default_graph, hires_graph, not_applied, read, refusal


def pixel_graph(resize: dict | None = None, model: str | None = None, **second) -> dict:
    """KSampler -> VAEDecode -> [ImageUpscaleWithModel] -> [ImageScaleBy / ImageScale] -> VAEEncode -> KSampler."""
    graph = hires_graph(**second)
    del graph["10"]  # the latent upscale
    graph["12"] = {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}}
    image = ["12", 0]
    if model:
        graph["13"] = {"class_type": "UpscaleModelLoader", "inputs": {"model_name": model}}
        graph["14"] = {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["13", 0], "image": image}}
        image = ["14", 0]
    if resize:
        graph["15"] = {"class_type": resize.pop("kind", "ImageScaleBy"), "inputs": {
            "upscale_method": "lanczos", "image": image, **resize}}
        image = ["15", 0]
    graph["16"] = {"class_type": "VAEEncode", "inputs": {"pixels": image, "vae": ["4", 2]}}
    graph["17"] = {"class_type": "SaveImage", "inputs": {"images": ["12", 0], "filename_prefix": "low"}}  # off path
    graph["11"]["inputs"]["latent_image"] = ["16", 0]
    return graph


def test_an_image_resize_reads_as_the_image_upscaler(tmp_path):
    data = read(tmp_path, pixel_graph({"scale_by": 1.5}))
    assert {k: data[k] for k in ("hires_upscaler", "hires_scale", "hires_denoise", "hires_steps")} == \
        {"hires_upscaler": "image", "hires_scale": 1.5, "hires_denoise": 0.5, "hires_steps": 10}
    assert data["steps"] == 12 and data["width"] == 512 and "hires_resize" not in data
    assert not_applied(tmp_path, pixel_graph({"scale_by": 1.5})) == ""  # Lanczos, as A1111's: nothing to say
    data = read(tmp_path, pixel_graph({"kind": "ImageScale", "width": 768, "height": 1152, "crop": "center",
                                       "upscale_method": "bicubic"}))
    assert (data["hires_upscaler"], data["hires_resize"], data["hires_scale"]) == ("image", "768x1152", 1.0)
    notes = not_applied(tmp_path, pixel_graph({"kind": "ImageScale", "width": 768, "height": 1152, "crop": "center",
                                               "upscale_method": "bicubic"}))
    assert notes == "ImageScale node 15 resizes with bicubic; personae resizes the picture with Lanczos (A1111's)"


def test_an_upscale_model_reads_as_a_model_upscaler_by_its_name(tmp_path):
    data = read(tmp_path, pixel_graph({"scale_by": 0.5}, model="4x-UltraSharp.pth"))
    assert (data["hires_upscaler"], data["hires_scale"]) == ("4x-UltraSharp", 2.0)  # 4x, then half of that
    notes = not_applied(tmp_path, pixel_graph({"scale_by": 0.5}, model="4x-UltraSharp.pth"),
                        upscaler_dir=str(tmp_path))
    assert "ImageUpscaleWithModel node 14 runs 4x-UltraSharp.pth on 512-pixel tiles overlapping by 32" in notes
    assert "4x-UltraSharp.pth is taken to enlarge 4x (by its name)" in notes
    assert "UpscaleModelLoader" not in notes  # the run has it (hires_upscaler stays the name)
    missing = not_applied(tmp_path, pixel_graph({"scale_by": 0.5}, model="4x-UltraSharp.pth"),
                          hires_upscaler="image")  # what png_upscaler leaves when --upscaler-dir lacks the file
    assert 'UpscaleModelLoader "4x-UltraSharp" (the hires fix resizes with Lanczos here; --upscaler-dir' in missing
    # the model alone enlarges by its own scale; RealESRGAN_x2plus is 2x; a size given is taken as it is
    assert read(tmp_path, pixel_graph(model="upscalers\\RealESRGAN_x2plus.pth"))["hires_scale"] == 2.0
    sized = pixel_graph({"kind": "ImageScale", "width": 1024, "height": 1536, "crop": "disabled"}, model="Remacri.pth")
    data = read(tmp_path, sized)
    assert (data["hires_upscaler"], data["hires_resize"]) == ("Remacri", "1024x1536")
    assert "is taken to enlarge" not in not_applied(tmp_path, sized)
    unnamed = not_applied(tmp_path, pixel_graph({"scale_by": 0.5}, model="Remacri.pth"))
    assert "Remacri.pth is taken to enlarge 4x (as most do)" in unnamed


def test_pixel_chains_personae_cannot_place_are_refused(tmp_path):
    graph = pixel_graph({"scale_by": 1.5}, denoise=1.0)
    assert "redraws the upscaled picture in KSampler node 11 at denoise 1;" in refusal(tmp_path, graph)
    graph = pixel_graph({"scale_by": 1.5})
    graph["12"] = {"class_type": "LoadImage", "inputs": {"image": "other.png", "upload": "image"}}
    graph["17"]["inputs"]["images"] = ["12", 0]
    assert "2 samplers (KSampler node 3, KSampler node 11)" in refusal(tmp_path, graph)  # not a redraw of node 3
    graph = pixel_graph({"scale_by": 1.5})
    graph["15"]["class_type"] = "ImageSharpen"
    assert "ImageSharpen node 15, a custom node" in refusal(tmp_path, graph)
    img2img = default_graph(denoise=0.6)  # one sampler: a resized LoadImage stays img2img's refusal
    img2img["20"] = {"class_type": "LoadImage", "inputs": {"image": "in.png", "upload": "image"}}
    img2img["21"] = {"class_type": "ImageScaleBy", "inputs": {"image": ["20", 0], "upscale_method": "lanczos",
                                                              "scale_by": 2.0}}
    img2img["22"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["21", 0], "vae": ["4", 2]}}
    img2img["3"]["inputs"]["latent_image"] = ["22", 0]
    assert "(it reads LoadImage there)" in refusal(tmp_path, img2img)


def _upscaler(path, scale: int) -> None:
    """A small Real-ESRGAN Compact network with random weights (it does change the picture)."""
    from personae.models.upscalers import CompactNet

    net = CompactNet(3, 3, 8, 2, scale)
    torch.manual_seed(0)
    save_file({k: torch.randn_like(v) * 0.1 for k, v in net.state_dict().items()}, str(path))


def test_a_pixel_hires_graph_runs_as_personaes_hires_fix(tiny_model, tmp_path, capsys):
    """Through an upscale model found in --upscaler-dir, then ImageScaleBy 0.75: the picture of `--hires-upscaler
    FILE --hires-scale 1.5`, pixel for pixel; and without the folder, the Lanczos resize, said."""
    from personae.cli.main import main

    (tmp_path / "upscalers").mkdir()
    _upscaler(tmp_path / "upscalers" / "2x-Tiny.safetensors", 2)
    graph = pixel_graph({"scale_by": 0.75}, model="2x-Tiny.safetensors", steps=3, seed=BIG_SEED)
    graph["3"]["inputs"].update(steps=3, seed=BIG_SEED)
    graph["5"]["inputs"].update(width=64, height=64)
    png = comfy_png(tmp_path / "comfy.png", graph)
    model = str(tiny_model[0])
    assert main(["generate", "--from-png", str(png), "--model", model, "--upscaler-dir", str(tmp_path / "upscalers"),
                 "--out", str(tmp_path / "a")]) == 0
    assert "UpscaleModelLoader" not in capsys.readouterr().err
    assert main(["generate", "--model", model, "--prompt", "a photo of a cat", "--negative", "lowres, blurry",
                 "--seed", str(BIG_SEED), "--steps", "3", "--cfg", "7", "--sampler", "DPM++ 2M Karras", "--quantize",
                 "--rng", "CPU", "--pad-conds", "off", "--width", "64", "--height", "64", "--hires-scale", "1.5",
                 "--hires-denoise", "0.5", "--hires-steps", "3", "--hires-upscaler",
                 str(tmp_path / "upscalers" / "2x-Tiny.safetensors"), "--out", str(tmp_path / "b")]) == 0
    assert main(["generate", "--from-png", str(png), "--model", model, "--out", str(tmp_path / "c")]) == 0
    assert 'UpscaleModelLoader "2x-Tiny" (the hires fix resizes with Lanczos here' in capsys.readouterr().err
    [a], [b], [c] = (sorted((tmp_path / d).glob("*.png")) for d in "abc")
    a, b, c = (np.asarray(Image.open(p), dtype=np.int16) for p in (a, b, c))
    assert a.shape == (96, 96, 3) and np.array_equal(a, b)
    assert c.shape == (96, 96, 3) and np.abs(a - c).max() > 5  # the model's picture is not the resize's
