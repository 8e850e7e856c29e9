"""Animated clips on disk, the formats A1111's AnimateDiff saves: looping GIF and animated WebP (Pillow), H.264
MP4 and VP9 WebM (the ffmpeg that imageio-ffmpeg ships).

Each carries the clip's settings as A1111-style infotext, as PNGs do, where that extension puts it:

- GIF: the comment extension (`Image.open(gif).info["comment"]`);
- WebP: EXIF's UserComment (UTF-16, as A1111 saves WebP pictures: its PNG Info tab reads it);
- MP4 and WebM: the container's `comment` tag (`ffprobe -show_format`, VLC's media info).

Files are written under a temporary name and renamed when complete, so a failed or
interrupted write never leaves a half-written clip behind. No torch here.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

from personae.errors import UserError
from personae.media.png import read_image_text
from personae.staging import atomic_file

FORMATS = {".gif": "looping GIF", ".mp4": "H.264 video", ".webp": "animated WebP",
           ".webm": "VP9 video"}  # suffix -> what `write_clip` writes


def check_clip_path(path: str | Path) -> Path:
    """The output path, checked before any generation: a known suffix and a usable folder."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in FORMATS:
        raise UserError(f'Cannot write "{path}": the file name must end in {", ".join(FORMATS)} (got '
                        f'"{path.suffix or "no suffix"}").',
                        "Name the output " + ", ".join(f"clip{s} ({what})" for s, what in FORMATS.items()) + ".")
    if path.is_dir():
        raise UserError(f"{path} is a folder.", "Pass a file name such as clip.gif or clip.mp4.")
    if path.parent.exists() and not path.parent.is_dir():
        raise UserError(f"Cannot write {path}: {path.parent} is a file, not a folder.")
    return path


def _frame_duration_ms(fps: float) -> int:
    return max(10, round(1000 / fps))  # GIF counts in hundredths of a second; browsers treat < 2 as 10


def write_gif(frames: list[Image.Image], path: str | Path, fps: float, comment: str = "", loop: int = 0) -> Path:
    """A GIF that plays `loop` times (0: forever, as A1111's AnimateDiff "Display loop number"); one adaptive
    palette per frame.

    Pillow stores a frame identical to the one before it as a longer display of that frame,
    so a clip with still stretches decodes to fewer frames but plays the same.
    """
    path = Path(path)
    with atomic_file(path) as tmp:
        first, *rest = [f.convert("RGB") for f in frames]
        first.save(tmp, format="GIF", save_all=True, append_images=rest, loop=loop,
                   duration=_frame_duration_ms(fps), comment=comment.encode("utf-8"))
    return path


def exif_user_comment(text: str) -> bytes:
    """EXIF holding only `text` as its UserComment, as A1111 writes it (piexif's "unicode": UTF-16 big-endian).

    Laid out by hand: Pillow's Exif does not know UserComment's type and would store it as BYTE, which piexif, and
    so A1111's PNG Info, cannot read. A big-endian TIFF: IFD0 with one entry pointing at the Exif IFD, whose one
    entry is UserComment (UNDEFINED, type 7), then the comment's bytes.
    """
    data = b"UNICODE\0" + text.encode("utf-16-be")
    ifd0 = struct.pack(">HHHII I", 1, 0x8769, 4, 1, 26, 0)  # 8 + 18 bytes: the Exif IFD starts at 26
    exif_ifd = struct.pack(">HHHII I", 1, 0x9286, 7, len(data), 44, 0)  # 26 + 18: the comment starts at 44
    return b"Exif\0\0" + b"MM\0*" + struct.pack(">I", 8) + ifd0 + exif_ifd + data


def write_webp(frames: list[Image.Image], path: str | Path, fps: float, comment: str = "", loop: int = 0,
               quality: int = 80, lossless: bool = False) -> Path:
    """An animated WebP (A1111's AnimateDiff: lossy at quality 80 unless told lossless), played `loop` times (0:
    forever), the settings in its EXIF UserComment. WebP counts in milliseconds."""
    path = Path(path)
    with atomic_file(path) as tmp:
        first, *rest = [f.convert("RGB") for f in frames]
        first.save(tmp, format="WEBP", save_all=True, append_images=rest, loop=loop, duration=max(1, round(1000 / fps)),
                   quality=quality, lossless=lossless, exif=exif_user_comment(comment) if comment else b"")
    return path


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


# ffmpeg's encoder and container options per video suffix: H.264 at CRF 18 (visually lossless) with the index up
# front so that browsers start playing at once; VP9 in constant-quality mode (CRF 30, no bitrate cap), at libvpx's
# faster speed 4 on every row thread
_VIDEO = {".mp4": ("libx264", ["-crf", "18", "-movflags", "+faststart", "-f", "mp4"]),
          ".webm": ("libvpx-vp9", ["-crf", "30", "-b:v", "0", "-deadline", "good", "-cpu-used", "4", "-row-mt", "1",
                                   "-f", "webm"])}


def write_video(frames: list[Image.Image], path: str | Path, fps: float, comment: str = "") -> Path:
    """H.264 MP4 or VP9 WebM (by the suffix) in yuv420p, what browsers, phones and editors all play; the settings in
    the `comment` tag."""
    import imageio_ffmpeg

    path = Path(path)
    codec, options = _VIDEO[path.suffix.lower()]
    width, height = frames[0].size
    if width % 2 or height % 2:
        raise UserError(f"{path.suffix[1:].upper()} (yuv420p) needs an even width and height, got {width}x{height}.",
                        "Use sizes that are multiples of 8, as generation does.")
    with atomic_file(path) as tmp:
        # macro_block_size=2: keep the exact size (imageio-ffmpeg would otherwise pad to multiples of 16)
        writer = imageio_ffmpeg.write_frames(
            str(tmp), (width, height), fps=fps, codec=codec, pix_fmt_out="yuv420p", macro_block_size=2,
            quality=None, output_params=["-metadata", f"comment={comment}", *options])
        try:
            writer.send(None)
            for frame in frames:
                writer.send(np.ascontiguousarray(np.asarray(frame.convert("RGB"))))
        finally:
            writer.close()
    return path


def write_clip(frames: list[Image.Image], path: str | Path, fps: float, comment: str = "", loop: int = 0,
               webp_quality: int = 80, webp_lossless: bool = False) -> Path:
    """GIF, WebP, MP4 or WebM by the file's suffix; `loop`: how many times a GIF or WebP plays (0: forever)."""
    path = check_clip_path(path)
    if not frames:
        raise ValueError("a clip needs at least one frame")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        return write_gif(frames, path, fps, comment, loop)
    if suffix == ".webp":
        return write_webp(frames, path, fps, comment, loop, webp_quality, webp_lossless)
    return write_video(frames, path, fps, comment)


def parse_ffmetadata(text: str) -> dict[str, str]:
    """ffmpeg's metadata dump: key=value lines, with '=', ';', '#', '\\' and newlines escaped by a backslash."""
    tags: dict[str, str] = {}
    field: list[str] = []
    split_at, escaped = None, False
    for ch in text + "\n":
        if escaped:
            field.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "=" and split_at is None:
            split_at = len(field)
        elif ch == "\n":
            line = "".join(field)
            if split_at is not None and not line.startswith((";", "[")):
                tags[line[:split_at]] = line[split_at:]
            field, split_at = [], None
        else:
            field.append(ch)
    return tags


def read_clip_comment(path: str | Path) -> str:
    """The settings text stored in a clip written by `write_clip` or A1111's AnimateDiff ("" when there is none)."""
    path = Path(path)
    if path.suffix.lower() == ".gif":
        with Image.open(path) as im:
            comment = im.info.get("comment", b"")
        return comment.decode("utf-8") if isinstance(comment, bytes) else str(comment)
    if path.suffix.lower() == ".webp":
        return read_image_text(path).get("parameters", "")
    result = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "ffmetadata", "-"],
                            capture_output=True, text=True, encoding="utf-8", check=True)
    tags = {key.lower(): value for key, value in parse_ffmetadata(result.stdout).items()}  # WebM's are upper case
    return tags.get("comment", "")


def read_clip_frames(path: str | Path) -> list[np.ndarray]:
    """Decode a clip (GIF, animated WebP, or any video ffmpeg reads) back to RGB frames."""
    path = Path(path)
    if path.suffix.lower() in (".gif", ".webp"):
        frames = []
        with Image.open(path) as im:
            for index in range(getattr(im, "n_frames", 1)):
                im.seek(index)
                frames.append(np.asarray(im.convert("RGB")))
        return frames
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = next(reader)
    width, height = meta["size"]
    return [np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3) for raw in reader]
