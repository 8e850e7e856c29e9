"""`personae animate`: settings in, a looping GIF and/or an H.264 MP4 out (plus the frames as PNGs on request).

Every output carries the clip's settings: A1111-style infotext in the GIF comment, the
MP4 `comment` tag and each frame PNG's `parameters` chunk (with the full personae
settings as JSON in the PNG's `personae` chunk). Outputs are checked before the model
loads and written only after every frame exists, each under a temporary name first.
"""

from __future__ import annotations

from pathlib import Path

from personae.config.animate import AnimateSettings
from personae.errors import UserError
from personae.events import EventHandler, Message, ignore
from personae.inference.animate import Clip, animate
from personae.media.png import save_png
from personae.media.video import check_clip_path, write_clip


def check_outputs(outputs: list[str | Path], frames_dir: str | Path | None) -> list[Path]:
    paths = [check_clip_path(p) for p in outputs]
    if not paths and frames_dir is None:
        raise UserError("No output given.", "Pass --out clip.gif and/or --out clip.mp4 (or --frames-dir DIR).")
    if frames_dir is not None:
        folder = Path(frames_dir)
        if folder.exists() and not folder.is_dir():
            raise UserError(f"--frames-dir {folder} exists and is not a folder.", "Choose another folder.")
        if folder.is_dir() and any(folder.glob("frame-*.png")):
            raise UserError(f"--frames-dir {folder} already holds frame PNGs from another clip.",
                            "Choose an empty or new folder, so frames of two clips do not mix.")
    return paths


def save_frames(clip: Clip, folder: str | Path) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    extra = {"personae": clip.settings_json()}
    return [save_png(frame, folder / f"frame-{i:04d}.png", clip.parameters, extra) for i, frame in enumerate(clip.frames)]


def save_clip(clip: Clip, outputs: list[str | Path], frames_dir: str | Path | None = None) -> list[Path]:
    written = [write_clip(clip.frames, p, clip.settings.fps, clip.parameters) for p in outputs]
    if frames_dir is not None:
        written += save_frames(clip, frames_dir)
    return written


def run_animate(settings: AnimateSettings, outputs: list[str | Path], frames_dir: str | Path | None = None,
                on_event: EventHandler = ignore) -> Clip:
    """Generate one clip and write it to every output (.gif / .mp4) and, if given, frame PNGs to `frames_dir`."""
    paths = check_outputs(outputs, frames_dir)
    clip = animate(settings, on_event=on_event)
    save_clip(clip, paths, frames_dir)
    where = ", ".join(str(p) for p in paths) + (f" and frames in {frames_dir}" if frames_dir is not None else "")
    on_event(Message(f"wrote a {len(clip.frames)}-frame clip (seed {clip.seed}) to {where}"))
    return clip

