"""Animated clips on disk: looping GIF (Pillow) and H.264 MP4 (the ffmpeg that imageio-ffmpeg ships).

Both carry the clip's settings as A1111-style infotext, as PNGs do:

- GIF: the comment extension (`Image.open(gif).info["comment"]`);
- MP4: the container's `comment` tag (`ffprobe -show_format`, VLC's media info).

Files are written under a temporary name and renamed when complete, so a failed or
interrupted write never leaves a half-written clip behind. No torch here.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

from personae.errors import UserError
from personae.staging import atomic_file

FORMATS = {".gif": "GIF", ".mp4": "MP4"}  # suffix -> what `write_clip` writes


def check_clip_path(path: str | Path) -> Path:
    """The output path, checked before any generation: a known suffix and a usable folder."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in FORMATS:
        raise UserError(f'Cannot write "{path}": the file name must end in .gif or .mp4 (got "{path.suffix or "no suffix"}").',
                        "Name the output clip.gif (looping GIF) or clip.mp4 (H.264 video).")
    if path.is_dir():
        raise UserError(f"{path} is a folder.", "Pass a file name such as clip.gif or clip.mp4.")
    if path.parent.exists() and not path.parent.is_dir():
        raise UserError(f"Cannot write {path}: {path.parent} is a file, not a folder.")
    return path


def _frame_duration_ms(fps: float) -> int:
    return max(10, round(1000 / fps))  # GIF counts in hundredths of a second; browsers treat < 2 as 10


def write_gif(frames: list[Image.Image], path: str | Path, fps: float, comment: str = "") -> Path:
    """A looping GIF (loop=0 is "forever"); one adaptive palette per frame.

    Pillow stores a frame identical to the one before it as a longer display of that frame,
    so a clip with still stretches decodes to fewer frames but plays the same.
    """
    path = Path(path)
    with atomic_file(path) as tmp:
        first, *rest = [f.convert("RGB") for f in frames]
        first.save(tmp, format="GIF", save_all=True, append_images=rest, loop=0,
                   duration=_frame_duration_ms(fps), comment=comment.encode("utf-8"))
    return path


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def write_mp4(frames: list[Image.Image], path: str | Path, fps: float, comment: str = "", crf: int = 18) -> Path:
    """H.264 in yuv420p (what browsers, phones and editors all play); the settings in the `comment` tag."""
    import imageio_ffmpeg

    path = Path(path)
    width, height = frames[0].size
    if width % 2 or height % 2:
        raise UserError(f"MP4 (H.264, yuv420p) needs an even width and height, got {width}x{height}.",
                        "Use sizes that are multiples of 8, as generation does.")
    with atomic_file(path) as tmp:
        # macro_block_size=2: keep the exact size (imageio-ffmpeg would otherwise pad to multiples of 16)
        writer = imageio_ffmpeg.write_frames(
            str(tmp), (width, height), fps=fps, codec="libx264", pix_fmt_out="yuv420p", macro_block_size=2,
            quality=None, output_params=["-crf", str(crf), "-metadata", f"comment={comment}", "-movflags",
                                         "+faststart", "-f", "mp4"])
        try:
            writer.send(None)
            for frame in frames:
                writer.send(np.ascontiguousarray(np.asarray(frame.convert("RGB"))))
        finally:
            writer.close()
    return path


def write_clip(frames: list[Image.Image], path: str | Path, fps: float, comment: str = "") -> Path:
    """GIF or MP4 by the file's suffix."""
    path = check_clip_path(path)
    if not frames:
        raise ValueError("a clip needs at least one frame")
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = write_gif if path.suffix.lower() == ".gif" else write_mp4
    return writer(frames, path, fps, comment)


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
    """The settings text stored in a GIF or MP4 written by `write_clip` ("" when there is none)."""
    path = Path(path)
    if path.suffix.lower() == ".gif":
        with Image.open(path) as im:
            comment = im.info.get("comment", b"")
        return comment.decode("utf-8") if isinstance(comment, bytes) else str(comment)
    result = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "ffmetadata", "-"],
                            capture_output=True, text=True, encoding="utf-8", check=True)
    return parse_ffmetadata(result.stdout).get("comment", "")


def read_clip_frames(path: str | Path) -> list[np.ndarray]:
    """Decode a GIF or MP4 back to RGB frames (for checks and tests)."""
    path = Path(path)
    if path.suffix.lower() == ".gif":
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
