"""Model upscalers (models/upscalers.py) read as spandrel reads them, run as A1111 runs them, in the hires fix.

The reference is spandrel 0.4.2, the loader A1111 (1.8 onwards) and ComfyUI use for these files, installed without
its declared torchvision (which does not import beside our torch): spandrel imports every architecture it knows
when it loads, and two of them (LaMa, RestoreFormer) import names from torchvision at import time that none of the
networks here use, so those names are given as empty stand-ins before spandrel is imported. The networks compared
are spandrel's own, built by spandrel from the same tensors.
"""

from __future__ import annotations

import re
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from personae.errors import UserError
from personae.models.upscalers import (
    a1111_name,
    read_upscaler,
    resolve_upscaler,
    upscale_once,
    upscale_picture,
    upscaler_files,
)


@pytest.fixture(scope="module")
def spandrel():
    """spandrel, imported with stand-ins for the torchvision names two of its other architectures import; the
    stand-ins leave sys.modules at once, so nothing else in this process (diffusers, transformers) ever sees them."""
    stand_ins = {} if "torchvision" in sys.modules else {n: types.ModuleType(n) for n in (
        "torchvision", "torchvision.transforms", "torchvision.transforms.functional")}
    if stand_ins:
        functional = stand_ins["torchvision.transforms.functional"]
        functional.InterpolationMode, functional.rotate, functional.normalize = object, None, None
        stand_ins["torchvision"].transforms = stand_ins["torchvision.transforms"]
        stand_ins["torchvision.transforms"].functional = functional
    sys.modules.update(stand_ins)
    try:
        import spandrel
    finally:
        for name in stand_ins:
            del sys.modules[name]
    return spandrel


def _random(net: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.08)
    return {k: v.clone() for k, v in net.state_dict().items()}


def _basicsr(old: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ESRGAN's original names -> BasicSR's (Real-ESRGAN's RRDBNet), written out by hand from BasicSR's module
    names: conv_first, body.N.rdbK.convJ, conv_body, conv_up1/2, conv_hr, conv_last."""
    tops = sorted({int(k.split(".")[1]) for k in old if re.fullmatch(r"model\.\d+\.(weight|bias)", k)})
    last, hr, ups = tops[-1], tops[-2], tops[1:-2]
    names = {0: "conv_first", hr: "conv_hr", last: "conv_last", **{n: f"conv_up{i + 1}" for i, n in enumerate(ups)}}
    blocks = max(int(k.split(".")[3]) for k in old if ".RDB" in k) + 1
    out = {}
    for key, value in old.items():
        if m := re.fullmatch(r"model\.(\d+)\.(weight|bias)", key):
            out[f"{names[int(m[1])]}.{m[2]}"] = value
        elif m := re.fullmatch(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)", key):
            out[f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"] = value
        elif key.startswith(f"model.1.sub.{blocks}."):
            out["conv_body." + key.rsplit(".", 1)[1]] = value
        else:
            raise AssertionError(key)
    return out


def _bsrgan(new: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BasicSR's names -> BSRGAN / RealSR's (RRDB_trunk, trunk_conv, upconv1, HRconv)."""
    out = {}
    for key, value in new.items():
        key = re.sub(r"^body\.(\d+)\.rdb(\d)", r"RRDB_trunk.\1.RDB\2", key)
        key = key.replace("conv_body.", "trunk_conv.").replace("conv_up", "upconv").replace("conv_hr.", "HRconv.")
        out[key] = value
    return out


def _esrgan_layouts(spandrel):
    from spandrel.architectures.ESRGAN import ESRGAN

    x4 = _random(ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=2, scale=4), seed=1)
    x2 = _random(ESRGAN(in_nc=12, out_nc=3, num_filters=8, num_blocks=1, scale=4, shuffle_factor=2), seed=2)
    x1 = _random(ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=1), seed=3)
    return {"esrgan-4x": (x4, 4), "esrgan-1x": (x1, 1), "basicsr-4x": ({"params_ema": _basicsr(x4)}, 4),
            "basicsr-2x-unshuffled": ({"params": _basicsr(x2)}, 2), "bsrgan-4x": (_bsrgan(_basicsr(x4)), 4)}


@pytest.mark.parametrize("layout", ["esrgan-4x", "esrgan-1x", "basicsr-4x", "basicsr-2x-unshuffled", "bsrgan-4x",
                                    "compact-4x", "compact-2x"])
def test_every_layout_gives_spandrels_numbers(spandrel, tmp_path, layout):
    if layout.startswith("compact"):
        from spandrel.architectures.Compact import Compact

        scale = int(layout[-2])
        data = _random(Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=3, upscale=scale), seed=4)
    else:
        data, scale = _esrgan_layouts(spandrel)[layout]
    path = tmp_path / f"{layout}.pth"
    torch.save(data, path)  # as the files circulate: a pickle, BasicSR's wrapped in params / params_ema
    ours = read_upscaler(path, allow_pickle=True)
    theirs = spandrel.ModelLoader().load_from_file(path)
    assert ours.scale == theirs.scale == scale and ours.name == layout
    x = torch.rand(1, 3, 13, 10)  # odd sizes: the unshuffled model pads and crops
    with torch.no_grad():
        got, want = ours.net(x), theirs.model(x)
    assert got.shape == want.shape == (1, 3, 13 * scale, 10 * scale)
    assert (got - want).abs().max() < 1e-5 and want.std() > 0.05, (got - want).abs().max()
    flat = data.get("params_ema") or data.get("params") or data
    save_file({k: v.contiguous() for k, v in flat.items()}, str(tmp_path / "same.safetensors"))
    again = read_upscaler(tmp_path / "same.safetensors", allow_pickle=False)  # safetensors needs no permission
    with torch.no_grad():
        assert torch.equal(again.net(x), got)


def test_files_of_other_kinds_are_refused_in_one_paragraph(spandrel, tmp_path):
    x4, _ = _esrgan_layouts(spandrel)["esrgan-4x"]
    torch.save(x4, tmp_path / "4x-Thing.pth")
    with pytest.raises(UserError, match="is a pickle file"):
        read_upscaler(tmp_path / "4x-Thing.pth", allow_pickle=False)
    cases = {
        "swinir": ({"layers.0.residual_group.blocks.0.attn.qkv.weight": torch.zeros(3, 3)}, "holds a SwinIR / Swin2SR"),
        "plus": ({**x4, "model.1.sub.0.RDB1.conv1x1.weight": torch.zeros(2, 2, 1, 1)}, "an ESRGAN\\+ model"),
        "lora": ({"lora_unet_down.lora_down.weight": torch.zeros(2, 2)}, "no upscaler it knows"),
        "extra": ({**x4, "model.1.sub.0.RDB1.conv9.0.weight": torch.zeros(1)}, "do not fit one.*conv9"),
        "short": ({k: v for k, v in x4.items() if "RDB2" not in k}, "do not fit one.*missing: body.0.rdb2"),
    }
    for name, (state, message) in cases.items():
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / f"{name}.safetensors"))
        with pytest.raises(UserError, match=message) as caught:
            read_upscaler(tmp_path / f"{name}.safetensors", allow_pickle=False)
        assert "\n" not in str(caught.value) and "personae reads ESRGAN" in str(caught.value)  # what it does read
    with pytest.raises(UserError, match="does not exist"):
        read_upscaler(tmp_path / "nothing.pth", allow_pickle=True)


def _identity(tmp_path, scale=4):
    """A Compact network whose convolutions are all zero: it gives exactly the nearest-neighbour upscale."""
    from personae.models.upscalers import CompactNet

    net = CompactNet(3, 3, 4, 1, scale)
    save_file({k: torch.zeros_like(v) for k, v in net.state_dict().items()}, str(tmp_path / "nearest.safetensors"))
    return read_upscaler(tmp_path / "nearest.safetensors", allow_pickle=False)


def test_tiles_are_placed_and_blended_as_a1111s_grid(tmp_path):
    net = _identity(tmp_path)
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (45, 70, 3), dtype=np.uint8))
    nearest = np.asarray(picture.resize((280, 180), Image.Resampling.NEAREST))
    # 70 x 45 in tiles of 24 overlapping by 6: 4 x 3 tiles, the last flush with the edge; smaller than a tile: padded
    for tile, overlap in ((24, 6), (0, 0), (192, 8), (40, 8)):
        out = upscale_once(net, picture, tile, overlap)
        assert out.size == (280, 180) and np.array_equal(np.asarray(out), nearest), (tile, overlap)


def test_a1111s_colour_order_rounding_and_repeats(spandrel, tmp_path):
    x4, _ = _esrgan_layouts(spandrel)["esrgan-4x"]
    torch.save(x4, tmp_path / "4x-Thing.pth")
    net = read_upscaler(tmp_path / "4x-Thing.pth", allow_pickle=True)
    picture = Image.fromarray(np.random.default_rng(1).integers(0, 256, (12, 9, 3), dtype=np.uint8))
    bgr = torch.from_numpy(np.asarray(picture)[:, :, ::-1].transpose(2, 0, 1).copy()).float()[None] / 255
    with torch.no_grad():
        want = spandrel.ModelLoader().load_from_file(tmp_path / "4x-Thing.pth").model(bgr)[0].clamp(0, 1)
    want = (want.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)[:, :, ::-1]
    assert np.array_equal(np.asarray(upscale_once(net, picture, tile=0)), want)  # BGR in, RGB out, rounded
    rgb = upscale_once(net, picture.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT), tile=0)
    assert not np.array_equal(np.asarray(rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)), want)  # it looks at pixels
    # A1111's Upscaler.upscale: run until large enough (at most 3 times), then Lanczos to the size asked
    double = _identity(tmp_path, scale=2)
    assert upscale_picture(double, picture, (18, 24)).size == (18, 24)  # one pass: 2x exactly
    three = upscale_picture(double, picture, (27, 36))  # 2x is short of 3x: a second pass to 4x, Lanczos to 3x
    four = picture.resize((36, 48), Image.Resampling.NEAREST).resize((27, 36), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(three), np.asarray(four))


def test_names_are_found_as_a1111_finds_them(tmp_path):
    webui = tmp_path / "webui"
    for folder, stem in (("models/ESRGAN", "4x-UltraSharp"), ("models/RealESRGAN", "RealESRGAN_x4plus")):
        (webui / folder).mkdir(parents=True)
        (webui / folder / f"{stem}.pth").write_bytes(b"x")
    files = upscaler_files(webui)
    assert files["4x-UltraSharp"].name == "4x-UltraSharp.pth"
    assert files["R-ESRGAN 4x+"] == files["RealESRGAN_x4plus"]  # A1111's built-in name for the file it downloads
    assert a1111_name(files["RealESRGAN_x4plus"]) == "R-ESRGAN 4x+" and a1111_name("a/4x-UltraSharp.pth") == \
        "4x-UltraSharp"
    assert resolve_upscaler("4x-UltraSharp", webui) == files["4x-UltraSharp"]
    assert resolve_upscaler("b/c.pth", None).name == "c.pth"  # a path is taken as given (checked when read)
    with pytest.raises(UserError, match=r'holds no upscaler named "4x-Remacri" \(it holds: 4x-UltraSharp, Real'):
        resolve_upscaler("4x-Remacri", webui)
    with pytest.raises(UserError, match="no --upscaler-dir is given"):
        resolve_upscaler("4x-Remacri", None)
    with pytest.raises(UserError, match="is not a folder"):
        resolve_upscaler("4x-Remacri", tmp_path / "nowhere")


def test_upscale_command_writes_new_pngs_beside_nothing_it_did_not_make(tmp_path, capsys):
    """`personae upscale`: A1111's Extras. Each picture once, sizes as A1111's (multiples of 8), a PNG's settings
    kept and A1111's `extras` text added, names never reused, user folders and damaged inputs refused first."""
    from PIL.PngImagePlugin import PngInfo

    from personae.cli.main import main
    from personae.media.png import read_png_text

    _identity(tmp_path, scale=2)  # nearest.safetensors: exactly the nearest-neighbour 2x upscale
    rng = np.random.default_rng(2)
    photos = tmp_path / "photos"
    photos.mkdir()
    info = PngInfo()
    info.add_text("parameters", "a cat\nSteps: 4, Seed: 7, Size: 36x20")
    drawn = Image.fromarray(rng.integers(0, 256, (20, 36, 3), dtype=np.uint8))
    drawn.save(photos / "00000-7.png", pnginfo=info)
    Image.fromarray(rng.integers(0, 256, (24, 16, 4), dtype=np.uint8), "RGBA").save(photos / "clip.png")
    (photos / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    argv = ["upscale", photos, "--upscaler", tmp_path / "nearest.safetensors", "--scale", 2, "--quiet"]
    assert main([str(a) for a in [*argv, "--out", tmp_path / "big"]]) == 0, capsys.readouterr().err
    big = tmp_path / "big"
    assert sorted(p.name for p in big.glob("*.png")) == ["00000-7.png", "clip.png"]
    out = Image.open(big / "00000-7.png")
    assert out.size == (72, 40) and np.array_equal(np.asarray(out), np.asarray(drawn.resize((72, 40), Image.NEAREST)))
    text = read_png_text(big / "00000-7.png")
    assert text["parameters"].startswith("a cat") and text["extras"] == ("Postprocess upscale by: 2, Postprocess "
                                                                          "upscaler: nearest")
    assert Image.open(big / "clip.png").mode == "RGB" and Image.open(big / "clip.png").size == (32, 48)
    first = (big / "00000-7.png").read_bytes()
    # again into the same folder, at 1.5x: new names; 36 x 1.5 = 54 -> 48 and 20 x 1.5 = 30 -> 24 (multiples of 8)
    assert main([str(a) for a in [*argv[:-3], "--scale", 1.5, "--quiet", "--out", big]]) == 0
    assert Image.open(big / "00000-7-2.png").size == (48, 24) and (big / "00000-7.png").read_bytes() == first
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == before  # the pictures are only read
    capsys.readouterr()
    # refused before anything is written: a folder of the user's, a damaged picture, an upscaler that is not one
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    for extra, message in ((["--out", photos], "personae did not write"),
                           (["--out", tmp_path / "new"], "broken.jpg is not a readable image"),):
        assert main([str(a) for a in [*argv, *extra]]) == 2
        assert message in " ".join(capsys.readouterr().err.split())
    (photos / "broken.jpg").unlink()
    for extra, message in ((["--upscaler", "4x-UltraSharp"], "no --upscaler-dir is given"),
                           (["--upscaler", tmp_path / "photos" / "00000-7.png"], "neither a safetensors file nor"),
                           (["--tile", 8, "--tile-overlap", 8], "tile_overlap (8) must be smaller than tile (8)")):
        assert main([str(a) for a in [*argv, *extra, "--out", tmp_path / "new"]]) == 2
        assert message in " ".join(capsys.readouterr().err.split()), message
    assert not (tmp_path / "new").exists() and {p.name: p.read_bytes() for p in photos.iterdir()} == before
