"""Model upscalers, as A1111's hires fix and Extras tab use them: ESRGAN, Real-ESRGAN and Real-ESRGAN Compact files.

    net = read_upscaler(Path("4x-UltraSharp.pth"), allow_pickle=True)     # an UpscalerNet, scale 4
    picture = upscale_picture(net, picture, scale=2)                       # A1111's Upscaler.upscale

These are the upscalers of most A1111 workflows ("Hires upscaler: 4x-UltraSharp", "R-ESRGAN 4x+"): one network
family (RRDBNet, ESRGAN's generator) in the three key layouts that circulate, plus Real-ESRGAN's small "Compact"
VGG-style network (realesr-general-x4v3, realesr-animevideov3):

- ESRGAN's original layout (`model.0.weight`, `model.1.sub.0.RDB1.conv1.0.weight`, ...): ESRGAN_4x, 4x-UltraSharp,
  4x_foolhardy_Remacri, 4x-AnimeSharp and most community models;
- BasicSR's (`conv_first`, `body.0.rdb1.conv1`, `conv_body`, `conv_up1`, ...), usually inside `params_ema`:
  RealESRGAN_x4plus, RealESRGAN_x4plus_anime_6B, and RealESRGAN_x2plus, whose input is pixel-unshuffled
  (12 = 3 x 2 x 2 input channels) so that a 4x network upscales 2x;
- BSRGAN / RealSR's (`RRDB_trunk`, `trunk_conv`, `upconv1`, `HRconv`);
- Compact (`body.0.weight`, `body.1.weight` a PReLU, ... the last conv pixel-shuffled, plus the nearest-upscaled input).

Sizes (features, blocks, growth, scale, unshuffle) are read from the tensors' shapes, every tensor must find its
place (strict loading), and a file of another architecture (SwinIR, DAT, HAT, ESRGAN+, ...) is refused by name.
A pickle is read only with --allow-pickle and then through PyTorch's weights-only unpickler (models/tensor_files).

Pictures go through the network as A1111 1.10 sends them (modules/upscaler_utils.py): channels in BGR order,
0..1, in tiles of 192 pixels overlapping by 8 (its ESRGAN_tile / ESRGAN_tile_overlap defaults) blended linearly
across the overlap, the output clamped and rounded to 8 bits; A1111's Upscaler.upscale then repeats the network
(up to 3 times) until the picture reaches the asked size and resizes it there with Lanczos.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from personae.errors import UserError
from personae.models.named_files import files_by_name, search_roots
from personae.models.tensor_files import flat_tensors, read_tensors

UPSCALER_SUFFIXES = (".pth", ".pt", ".safetensors")
# A1111's built-in Real-ESRGAN upscalers: the name it writes in "Hires upscaler" <-> the file it downloads
A1111_BUILT_IN = {"R-ESRGAN 4x+": "RealESRGAN_x4plus", "R-ESRGAN 4x+ Anime6B": "RealESRGAN_x4plus_anime_6B",
                  "R-ESRGAN 2x+": "RealESRGAN_x2plus", "R-ESRGAN General 4xV3": "realesr-general-x4v3",
                  "R-ESRGAN General WDN 4xV3": "realesr-general-wdn-x4v3",
                  "R-ESRGAN AnimeVideo": "realesr-animevideov3"}
A1111_TILE, A1111_TILE_OVERLAP = 192, 8  # A1111's ESRGAN_tile / ESRGAN_tile_overlap defaults


class _DenseBlock(nn.Module):
    """ESRGAN's residual dense block: five 3x3 convs, each seeing the input and every earlier output."""

    def __init__(self, features: int, growth: int):
        super().__init__()
        for j in range(1, 6):
            setattr(self, f"conv{j}", nn.Conv2d(features + (j - 1) * growth, features if j == 5 else growth, 3, 1, 1))

    def forward(self, x):
        seen = [x]
        for j in range(1, 5):
            seen.append(F.leaky_relu(getattr(self, f"conv{j}")(torch.cat(seen, 1)), 0.2))
        return self.conv5(torch.cat(seen, 1)) * 0.2 + x


class _RRDB(nn.Module):
    def __init__(self, features: int, growth: int):
        super().__init__()
        self.rdb1, self.rdb2, self.rdb3 = (_DenseBlock(features, growth) for _ in range(3))

    def forward(self, x):
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN's generator under BasicSR's names; `unshuffle` > 1 for Real-ESRGAN's x2 / x1 models."""

    def __init__(self, in_ch: int, out_ch: int, features: int, blocks: int, growth: int, ups: int, unshuffle: int):
        super().__init__()
        self.unshuffle = unshuffle
        self.conv_first = nn.Conv2d(in_ch * unshuffle ** 2, features, 3, 1, 1)
        self.body = nn.Sequential(*(_RRDB(features, growth) for _ in range(blocks)))
        self.conv_body = nn.Conv2d(features, features, 3, 1, 1)
        self.ups = ups
        for i in range(1, ups + 1):
            setattr(self, f"conv_up{i}", nn.Conv2d(features, features, 3, 1, 1))
        self.conv_hr = nn.Conv2d(features, features, 3, 1, 1)
        self.conv_last = nn.Conv2d(features, out_ch, 3, 1, 1)

    def forward(self, x):
        height, width = x.shape[-2:]
        if self.unshuffle > 1:  # reflect-pad to a multiple, fold pixels into channels, crop the output back
            f = self.unshuffle
            x = F.pad(x, (0, -width % f, 0, -height % f), mode="reflect")
            x = F.pixel_unshuffle(x, f)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for i in range(1, self.ups + 1):
            feat = F.leaky_relu(getattr(self, f"conv_up{i}")(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        out = self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))
        scale = 2 ** self.ups // self.unshuffle
        return out[..., :height * scale, :width * scale]


class CompactNet(nn.Module):
    """Real-ESRGAN's SRVGGNetCompact: conv + PReLU pairs, a pixel-shuffled last conv, plus the nearest upscale."""

    def __init__(self, in_ch: int, out_ch: int, features: int, convs: int, scale: int):
        super().__init__()
        layers = [nn.Conv2d(in_ch, features, 3, 1, 1), nn.PReLU(features)]
        for _ in range(convs):
            layers += [nn.Conv2d(features, features, 3, 1, 1), nn.PReLU(features)]
        layers.append(nn.Conv2d(features, out_ch * scale ** 2, 3, 1, 1))
        self.body = nn.Sequential(*layers)
        self.scale = scale

    def forward(self, x):
        return F.pixel_shuffle(self.body(x), self.scale) + F.interpolate(x, scale_factor=self.scale, mode="nearest")


@dataclass
class UpscalerNet:
    name: str  # A1111's name for it: its built-in Real-ESRGAN name, else the file's stem (friendly_name)
    net: nn.Module
    scale: int
    architecture: str  # "ESRGAN" or "Compact", with its sizes, for messages


def _old_to_basicsr(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ESRGAN's original `model.N` layout under BasicSR's names."""
    out = {}
    tops = sorted({int(k.split(".")[1]) for k in state if re.match(r"model\.\d+\.(weight|bias)$", k)})
    if len(tops) < 3 or tops[0] != 0:
        return state
    hr, last, ups = tops[-2], tops[-1], tops[1:-2]
    names = {0: "conv_first", hr: "conv_hr", last: "conv_last", **{n: f"conv_up{i}" for i, n in enumerate(ups, 1)}}
    for key, value in state.items():
        if m := re.fullmatch(r"model\.(\d+)\.(weight|bias)", key):
            out[f"{names[int(m[1])]}.{m[2]}"] = value
        elif m := re.fullmatch(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)", key):
            out[f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"] = value
        elif m := re.fullmatch(r"model\.1\.sub\.(\d+)\.(weight|bias)", key):
            out[f"conv_body.{m[2]}"] = value  # the trunk's closing conv, after the last block
        else:
            out[key] = value  # left for strict loading to name
    return out


def _bsrgan_to_basicsr(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renames = (("RRDB_trunk.", "body."), ("trunk_conv.", "conv_body."), ("HRconv.", "conv_hr."), ("upconv", "conv_up"))
    out = {}
    for key, value in state.items():
        for old, new in renames:
            if key.startswith(old):
                key = new + key[len(old):]
        out[re.sub(r"\.RDB(\d)\.", r".rdb\1.", key)] = value
    return out


def _unwrapped(data) -> dict[str, torch.Tensor]:
    """The state dict inside BasicSR's {"params_ema": ...} / {"params": ...} or a "state_dict", "module." gone."""
    if isinstance(data, dict):
        for wrapper in ("params_ema", "params", "state_dict"):
            if isinstance(data.get(wrapper), dict):
                data = data[wrapper]
                break
    state = flat_tensors(data)
    return {k.removeprefix("module."): v for k, v in state.items()}


def _esrgan(state: dict[str, torch.Tensor]) -> tuple[nn.Module, int, str]:
    first = state["conv_first.weight"]
    features, in_total = first.shape[:2]
    out_ch = state["conv_last.weight"].shape[0]
    blocks = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("body."))
    growth = state["body.0.rdb1.conv1.weight"].shape[0]
    ups = sum(1 for k in state if re.fullmatch(r"conv_up\d+\.weight", k))
    unshuffle = math.isqrt(in_total // out_ch) if in_total in (out_ch * 4, out_ch * 16) else 1
    in_ch = in_total // unshuffle ** 2
    scale = 2 ** ups // unshuffle
    net = RRDBNet(in_ch, out_ch, features, blocks, growth, ups, unshuffle)
    return net, scale, f"ESRGAN ({features} features, {blocks} blocks, {scale}x{', unshuffled' * (unshuffle > 1)})"


def _compact(state: dict[str, torch.Tensor]) -> tuple[nn.Module, int, str]:
    last = max(int(k.split(".")[1]) for k in state if k.startswith("body."))
    features, in_ch = state["body.0.weight"].shape[:2]
    shuffled = state[f"body.{last}.weight"].shape[0]
    scale = next((s for s in (1, 2, 3, 4, 8) if shuffled == in_ch * s * s), None)
    if scale is None or last % 2:
        raise ValueError(f"its last layer has {shuffled} outputs for {in_ch} input channels")
    net = CompactNet(in_ch, in_ch, features, (last - 2) // 2, scale)
    return net, scale, f"Real-ESRGAN Compact ({features} features, {(last - 2) // 2} convs, {scale}x)"


def _which(state: dict[str, torch.Tensor]) -> str | None:
    keys = set(state)
    if any(".conv1x1." in k for k in keys):
        return "ESRGAN+"
    if "conv_first.weight" in keys and "body.0.rdb1.conv1.weight" in keys:
        return "basicsr"
    if "model.0.weight" in keys and "model.1.sub.0.RDB1.conv1.0.weight" in keys:
        return "esrgan"
    if "conv_first.weight" in keys and "RRDB_trunk.0.RDB1.conv1.weight" in keys:
        return "bsrgan"
    if {"body.0.weight", "body.1.weight"} <= keys and state["body.1.weight"].ndim == 1:
        return "compact"
    return None


# what the keys of other architectures start with (spandrel's detection keys), so that a refusal can name the file
_OTHERS = (("layers.0.residual_group.", "a SwinIR / Swin2SR / HAT / ATD model"), ("before_RG.", "a DAT model"),
           ("layers.0.swin1.", "a DRCT model"), ("model.0.weight", "an ESRGAN-like model of a layout it does not read"))


def read_upscaler(path: Path, allow_pickle: bool) -> UpscalerNet:
    """The network a model-upscaler file holds, weights loaded strictly; a UserError for anything else."""
    path = Path(path).expanduser()
    data, _ = read_tensors(path, allow_pickle, "an upscaler model")
    state = _unwrapped(data)
    kind = _which(state)
    supported = ("personae reads ESRGAN (4x-UltraSharp, Remacri, ...), Real-ESRGAN (RealESRGAN_x4plus, x2plus, "
                 "anime_6B) and Real-ESRGAN Compact (realesr-general-x4v3) files")
    if kind in (None, "ESRGAN+"):
        what = "an ESRGAN+ model" if kind else next((name for key, name in _OTHERS
                                                     if any(k.startswith(key) for k in state)), "no upscaler it knows")
        raise UserError(f"{path} holds {what} ({len(state)} tensors, e.g. {', '.join(sorted(state)[:3])}).",
                        f"{supported}; for the others use A1111 or ComfyUI, or --hires-upscaler image (Lanczos).")
    state = {"esrgan": _old_to_basicsr, "bsrgan": _bsrgan_to_basicsr}.get(kind, dict)(state)
    problem = ""
    try:
        net, scale, architecture = (_compact if kind == "compact" else _esrgan)(state)
        expected = net.state_dict()
        unplaced, missing = sorted(set(state) - set(expected)), sorted(set(expected) - set(state))
        wrong = [k for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape]
        if unplaced or missing or wrong:
            problem = "; ".join(f"{what}: {', '.join(keys[:4])}{' ...' * (len(keys) > 4)}" for what, keys in (
                ("tensors it cannot place", unplaced), ("missing", missing), ("of another shape", wrong)) if keys)
        else:
            net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except (KeyError, ValueError, IndexError) as exc:
        problem = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    if problem:
        raise UserError(f"{path} looks like an ESRGAN-family upscaler but its tensors do not fit one ({problem}).",
                        f"The file may be damaged or of a variant personae does not read: {supported}.")
    return UpscalerNet(a1111_name(path), net.eval().requires_grad_(False), scale, architecture)


def _tile_through(net: UpscalerNet, tile: Image.Image) -> Image.Image:
    """One tile through the network as A1111 sends it: BGR, 0..1 float; out clamped, rounded, back to RGB."""
    bgr = np.ascontiguousarray(np.asarray(tile.convert("RGB"))[:, :, ::-1].transpose(2, 0, 1)) / 255
    param = next(net.net.parameters())
    device = torch.device("cpu") if param.is_meta else param.device  # streamed (--lowvram): its hooks move the tile
    with torch.no_grad():
        out = net.net(torch.from_numpy(bgr).unsqueeze(0).to(device, param.dtype))
    arr = (255.0 * np.moveaxis(out[0].float().cpu().clamp_(0, 1).numpy(), 0, 2)).round().astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(arr[:, :, ::-1]), "RGB")


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    """A1111's images.split_grid along one side: evenly spread tiles, the last flush with the edge."""
    count = math.ceil((size - overlap) / (tile - overlap))
    step = (size - tile) / (count - 1) if count > 1 else 0
    return [size - tile if int(i * step) + tile >= size else int(i * step) for i in range(count)]


def upscale_once(net: UpscalerNet, picture: Image.Image, tile: int = A1111_TILE,
                 overlap: int = A1111_TILE_OVERLAP, on_tile: Callable[[int, int], None] | None = None) -> Image.Image:
    """One pass of the network over the picture, tiled and blended as A1111's split_grid / combine_grid do;
    `on_tile(done, total)` after each tile (a full-size ESRGAN takes seconds per tile on a CPU)."""
    if tile <= 0:
        return _tile_through(net, picture)
    width, height = picture.size
    xs, ys, s = _starts(width, tile, overlap), _starts(height, tile, overlap), net.scale
    done = 0
    wide, over = tile * s, overlap * s
    ramp = np.arange(over, dtype=np.float32) * 255 / over  # 0 -> 255 across the overlap, truncated as A1111's
    mask_w = Image.fromarray(np.repeat(ramp.reshape(1, over), wide, 0).astype(np.uint8), "L")
    mask_h = Image.fromarray(np.repeat(ramp.reshape(over, 1), width * s, 1).astype(np.uint8), "L")
    combined = Image.new("RGB", (width * s, height * s))
    for y in ys:
        row = Image.new("RGB", (width * s, wide))
        for x in xs:
            out = _tile_through(net, picture.crop((x, y, x + tile, y + tile)))
            done += 1
            if on_tile:
                on_tile(done, len(xs) * len(ys))
            if x == 0:
                row.paste(out, (0, 0))
                continue
            row.paste(out.crop((0, 0, over, wide)), (x * s, 0), mask=mask_w)
            row.paste(out.crop((over, 0, wide, wide)), (x * s + over, 0))
        if y == 0:
            combined.paste(row, (0, 0))
            continue
        combined.paste(row.crop((0, 0, row.width, over)), (0, y * s), mask=mask_h)
        combined.paste(row.crop((0, over, row.width, wide)), (0, y * s + over))
    return combined


def upscale_picture(net: UpscalerNet, picture: Image.Image, size: tuple[int, int], tile: int = A1111_TILE,
                    overlap: int = A1111_TILE_OVERLAP, on_tile: Callable[[int, int], None] | None = None
                    ) -> Image.Image:
    """The picture at `size` as A1111's Upscaler.upscale makes it: the network run (at most 3 times) until the
    picture is at least that large, then Lanczos to the exact size."""
    for _ in range(3):
        if picture.width >= size[0] and picture.height >= size[1]:
            break
        before = picture.size
        picture = upscale_once(net, picture, tile, overlap, on_tile)
        if picture.size == before:  # a 1x model: once is all it does
            break
    return picture if picture.size == tuple(size) else picture.resize(size, Image.Resampling.LANCZOS)


def a1111_name(path: str | Path) -> str:
    """What A1111 calls the upscaler in a file: its built-in Real-ESRGAN names, else the file's stem."""
    stem = Path(path).stem
    return next((name for name, file in A1111_BUILT_IN.items() if file == stem), stem)


def is_path(value: str) -> bool:
    """A --hires-upscaler value naming a file (a folder separator or an upscaler suffix), not a name to look up."""
    return "/" in value or "\\" in value or value.lower().endswith(UPSCALER_SUFFIXES)


def upscaler_files(upscaler_dir: str | Path) -> dict[str, Path]:
    """{A1111 name: file} of the upscaler files in the folder, or in an A1111 webui folder's models/ESRGAN and
    models/RealESRGAN; by stem and by A1111's built-in names."""
    roots = search_roots(upscaler_dir, ("models/ESRGAN", "models/RealESRGAN"), "--upscaler-dir",
                         "Pass the folder holding your upscaler files (A1111's models/ESRGAN) or your A1111 webui "
                         "folder.")
    return files_by_name(roots, UPSCALER_SUFFIXES, lambda path, root: (path.stem, a1111_name(path)))


def find_upscaler(value: str, upscaler_dir: str | Path | None) -> Path | None:
    """The file a --hires-upscaler value means: a path as given, a name as found in `upscaler_dir` (or None)."""
    if is_path(value):
        return Path(value).expanduser()
    return upscaler_files(upscaler_dir).get(value.strip()) if upscaler_dir else None


def resolve_upscaler(value: str, upscaler_dir: str | Path | None) -> Path:
    """find_upscaler, or a UserError saying where names are looked up and what is there."""
    found = find_upscaler(value, upscaler_dir)
    if found is not None:
        return found
    if not upscaler_dir:
        raise UserError(f'--hires-upscaler "{value}" is not latent, image or a file, and no --upscaler-dir is given to '
                        "look the name up in.", "Pass the upscaler file itself (e.g. 4x-UltraSharp.pth), or "
                        "--upscaler-dir with the folder holding it (A1111's models/ESRGAN, or your webui folder).")
    names = sorted({p.stem for p in upscaler_files(upscaler_dir).values()})
    raise UserError(f'--upscaler-dir {upscaler_dir} holds no upscaler named "{value}" (it holds: '
                    f"{', '.join(names[:12]) or 'no .pth / .safetensors files'}).",
                    "Put the file there, or pass --hires-upscaler with the file's path.")
