"""`personae upscale`: pictures through a model upscaler, as A1111's Extras tab does (models/upscalers.py).

    run_upscale(["out/00000-7.png", "photos/"], "big/", UpscaleSettings(upscaler="4x-UltraSharp.pth", ...))

Each picture (a file, or every picture directly inside a folder) is written to OUT as `<its name>.png`, or
`<its name>-2.png` and on when that name is taken: nothing in OUT is ever replaced. Its size is the picture's
times --scale, each side rounded down to a multiple of 8 (A1111's Upscaler.upscale). A PNG keeps its text
chunks (A1111's `parameters`, personae's settings), so `--from-png` still reads what drew it, and gains A1111's
`extras` chunk ("Postprocess upscale by: 4, Postprocess upscaler: 4x-UltraSharp"), as A1111 writes it. Pictures
are read as RGB (transparency dropped, as A1111's upscalers do). The upscaler is read, and every picture opened,
before anything is written.
"""

from __future__ import annotations

from pathlib import Path

from PIL.PngImagePlugin import PngInfo

from personae.config.upscale import UpscaleSettings
from personae.data.images import IMAGE_SUFFIXES
from personae.errors import UserError
from personae.events import EventHandler, Message, Progress, ignore
from personae.inference.img2img import open_image
from personae.media.png import read_png_text, save_image
from personae.models.device import pick_device
from personae.models.upscalers import read_upscaler, resolve_upscaler, upscale_picture
from personae.outputs import Kind, check_output, open_output

UPSCALED = Kind("upscale", "upscaled pictures", "personae upscale", layout=("*.png",))


def pictures(sources: list[str]) -> list[Path]:
    """The pictures named: files as given, folders by the pictures directly inside them (sorted)."""
    found: list[Path] = []
    for source in sources:
        path = Path(source).expanduser()
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not inside:
                raise UserError(f"The folder {path} holds no pictures ({', '.join(sorted(IMAGE_SUFFIXES))}).",
                                "Pass picture files or a folder holding them.")
            found += inside
        elif path.is_file():
            found.append(path)
        else:
            raise UserError(f"The picture {path} does not exist.", "Check the path.")
    return found


def _text_chunks(path: Path) -> dict[str, str]:
    if path.suffix.lower() != ".png":
        return {}
    try:
        return read_png_text(path)
    except Exception:  # noqa: BLE001 - damaged text chunks: the picture is still upscaled, its text left behind
        return {}


def _free_name(out: Path, stem: str, taken: set[str]) -> str:
    name, n = f"{stem}.png", 1
    while name in taken or (out / name).exists():
        n += 1
        name = f"{stem}-{n}.png"
    taken.add(name)
    return name


def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """A1111's Upscaler.upscale target: each side times the scale, rounded down to a multiple of 8."""
    return tuple(max(8, int(side * scale // 8 * 8)) for side in size)


def run_upscale(sources: list[str], out_dir: str | Path, settings: UpscaleSettings,
                on_event: EventHandler = ignore) -> list[Path]:
    check_output(out_dir, UPSCALED)  # a folder of the user's is refused before anything is read
    files = pictures(sources)
    net = read_upscaler(resolve_upscaler(settings.upscaler, settings.upscaler_dir), settings.allow_pickle)
    opened = [(path, open_image(str(path), "picture")) for path in files]  # a damaged one stops us before writing
    net.net.to(pick_device(settings.device))
    on_event(Message(f"{net.name}: {net.architecture}; {len(opened)} picture{'s' * (len(opened) != 1)} at "
                     f"{settings.scale:g}x"))
    written: list[Path] = []
    with open_output(out_dir, UPSCALED) as out:
        taken: set[str] = set()
        for i, (path, picture) in enumerate(opened):
            size = scaled_size(picture.size, settings.scale)
            tiles = {"picture": i + 1, "pictures": len(opened)}
            big = upscale_picture(net, picture, size, settings.tile, settings.tile_overlap,
                                  lambda done, total, _t=tiles: on_event(Progress("upscale", done, total, _t)))
            info = PngInfo()
            for key, value in _text_chunks(path).items():
                if key != "extras":
                    info.add_text(key, value)
            info.add_text("extras", f"Postprocess upscale by: {settings.scale:g}, Postprocess upscaler: {net.name}")
            written.append(save_image(big, out / _free_name(out, path.stem, taken), pnginfo=info))
            on_event(Message(f"{path.name} {picture.width}x{picture.height} -> {written[-1].name} {size[0]}x{size[1]}"))
    return written

