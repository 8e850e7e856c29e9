"""`personae animate`: settings in, a clip out as GIF, WebP, MP4 and/or WebM (plus the frames as PNGs on request).

Every output carries the clip's settings: A1111-style infotext in the GIF comment, the
WebP's EXIF comment, the videos' `comment` tag and each frame PNG's `parameters` chunk
(with the full personae settings as JSON in the PNG's `personae` chunk). Outputs are
checked before the model loads and written only after every frame exists, each under a
temporary name first. An existing clip file is replaced only with `overwrite`; the frames
folder follows outputs.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from personae.config.animate import AnimateSettings
from personae.errors import UserError
from personae.events import EventHandler, Message, ignore
from personae.media.png import save_png
from personae.media.video import check_clip_path, write_clip
from personae.outputs import Kind, check_file_output, check_output, staged_output
from personae.staging import explain_disk_full

if TYPE_CHECKING:  # the pipeline's modules are imported when a clip is drawn, after the options are checked
    from personae.inference.animate import Clip

FRAMES = Kind("frames", "the frames of a clip", "personae animate --frames-dir", layout=("frame-*.png",))


def check_outputs(outputs: list[str | Path], frames_dir: str | Path | None, overwrite: bool = False) -> list[Path]:
    paths = [check_file_output(check_clip_path(p), overwrite) for p in outputs]
    if len(set(map(str, paths))) != len(paths):
        raise UserError("The same --out file is given twice.", "Name each output once.")
    if not paths and frames_dir is None:
        raise UserError("No output given.", "Pass --out clip.gif and/or --out clip.mp4, clip.webp, clip.webm (or "
                                            "--frames-dir DIR).")
    if frames_dir is not None:
        check_output(frames_dir, FRAMES, replace=overwrite)
    return paths


def save_frames(clip: Clip, folder: str | Path, overwrite: bool = False) -> list[Path]:
    with staged_output(folder, FRAMES, replace=overwrite) as work:
        extra = {"personae": clip.settings_json()}
        for i, frame in enumerate(clip.frames):
            save_png(frame, work / f"frame-{i:04d}.png", clip.parameters, extra)
    return [Path(folder) / f"frame-{i:04d}.png" for i in range(len(clip.frames))]


def save_clip(clip: Clip, outputs: list[str | Path], frames_dir: str | Path | None = None,
              overwrite: bool = False, webp_quality: int = 80, webp_lossless: bool = False) -> list[Path]:
    written = []
    for p in outputs:
        with explain_disk_full(p):
            written.append(write_clip(clip.frames, check_file_output(p, overwrite), clip.settings.fps, clip.parameters,
                                      clip.settings.loop_number, webp_quality, webp_lossless))
    if frames_dir is not None:
        written += save_frames(clip, frames_dir, overwrite)
    return written


def run_animate(settings: AnimateSettings, outputs: list[str | Path], frames_dir: str | Path | None = None,
                on_event: EventHandler = ignore, overwrite: bool = False, webp_quality: int = 80,
                webp_lossless: bool = False) -> Clip:
    """Generate one clip and write it to every output (.gif / .webp / .mp4 / .webm) and, if given, frame PNGs to
    `frames_dir`; a WebP is lossy at `webp_quality` (0-100) unless `webp_lossless`."""
    paths = check_outputs(outputs, frames_dir, overwrite)
    from personae.inference.animate import animate

    clip = animate(settings, on_event=on_event)
    save_clip(clip, paths, frames_dir, overwrite, webp_quality, webp_lossless)
    where = ", ".join(str(p) for p in paths) + (f" and frames in {frames_dir}" if frames_dir is not None else "")
    on_event(Message(f"wrote a {len(clip.frames)}-frame clip (seed {clip.seed}) to {where}"))
    return clip

