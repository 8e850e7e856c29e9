"""`personae animate --from-png FILE`: the settings a clip or one of its frames carries, read back.

- A frame PNG written by `personae animate --frames-dir` holds every setting as JSON (its `personae` chunk): the
  clip comes back frame for frame.
- Any other clip or frame holds A1111 infotext: personae's GIF comment, WebP EXIF comment or MP4 / WebM comment tag,
  or what A1111's AnimateDiff extension writes (its frames' `parameters`, its GIF / WebP / MP4 / WebM comments, with
  the extension's own settings under one key, `AnimateDiff: "model: mm_sd_v15_v2.ckpt, video_length: 16, ..."` or
  the same as a dict). The picture settings are read as `personae generate --from-png` reads them, the clip's own
  (frames, fps, loop number, motion scale, context windows, FreeInit) by their names. Model and motion module are
  only names there: `--model` and `--motion-adapter` say where they are.

What such a file asks for and this run does not do is returned as notes (the CLI says them), never dropped silently:
ControlNet units and a clip started from frames (their frames are not in the file), the extension's closed loop,
frame interpolation and context stride where they would matter, keys personae does not know.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

from personae.config.animate import NOT_FOR_CLIPS, AnimateSettings
from personae.config.base import parse_settings
from personae.errors import UserError
from personae.media.png import InfotextValueError, PngTextError, infotext_settings, parse_parameters, read_image_text

CLIP_SUFFIXES = (".gif", ".mp4", ".webm", ".mov", ".mkv")
_CLIP_FIELDS = ("frames", "fps", "loop_number", "motion_scale", "freeinit", "freeinit_iters", "freeinit_filter",
                "freeinit_ds", "freeinit_dt")
# keys a clip's infotext carries besides the settings' own names: what describes the file, and what is read with
# another (as generate reads them: jobs/generate.py)
_DESCRIBING = {"Size", "Schedule type", "Eta", "Eta DDIM", "Sigma churn", "Sigma tmin", "Sigma tmax", "Sigma noise",
               "Emphasis", "Template", "Negative Template", "Model", "Model hash", "VAE", "VAE hash", "Lora hashes",
               "TI hashes", "Motion module", "Motion module hash", "Context", "AnimateDiff", "Version"}


@dataclass
class ClipReading:
    settings: dict
    notes: list[str] = field(default_factory=list)
    model: str | None = None  # the model's and motion module's names in an infotext (for the messages)
    motion: str | None = None


def _text(path: Path) -> dict[str, str]:
    if path.suffix.lower() in CLIP_SUFFIXES:
        from personae.media.video import read_clip_comment

        try:
            comment = read_clip_comment(path)
        except Exception as exc:  # ffmpeg's or Pillow's words for a damaged or unknown file
            said = (getattr(exc, "stderr", None) or str(exc)).strip().splitlines() or [type(exc).__name__]
            raise UserError(f"--from-png: the settings of {path} could not be read ({said[-1]}).",
                            "Pass a clip or frame written by personae or A1111's AnimateDiff.") from None
        return {"parameters": comment} if comment.strip() else {}
    try:
        return read_image_text(path)
    except (OSError, PngTextError) as exc:
        raise UserError(f"--from-png: {path} is not a clip or picture whose settings can be read ({exc}).",
                        "Pass a GIF, WebP, MP4 or WebM clip, or a frame PNG, written by personae or A1111's "
                        "AnimateDiff.") from None


def read_clip_settings(path: str | Path) -> ClipReading:
    """The settings `path` (a clip or a frame) carries, with notes on what they ask for that is not applied."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"--from-png: {path} does not exist.")
    text = _text(path)
    if "personae" in text:
        from personae.jobs.generate import personae_chunk

        data = personae_chunk(text["personae"], path)
        if "motion_adapter" not in data:
            raise UserError(f"--from-png: {path} holds a picture's settings, not a clip's.",
                            f"Draw it again with `personae generate --from-png {path}`.")
        parse_settings(AnimateSettings, data, f"the settings stored in {path}")  # validate early
        return ClipReading(data)
    if not text.get("parameters", "").strip():
        raise UserError(f"{path} carries no clip settings (no `parameters` text, EXIF comment or comment tag).",
                        "Pass a clip or frame written by personae or A1111's AnimateDiff.")
    return _clip_from_infotext(text["parameters"], path)


def _clip_from_infotext(text: str, path: Path) -> ClipReading:
    from personae.jobs.generate import settings_from_infotext

    _, _, params = parse_parameters(text)
    picture = settings_from_infotext(text, path)  # prompts, sampler and its parameters, seed, size: as generate
    data = {k: v for k, v in picture.items() if k in AnimateSettings.model_fields and k not in NOT_FOR_CLIPS}
    try:
        data.update({k: v for k, v in infotext_settings(AnimateSettings, params).items() if k in _CLIP_FIELDS})
    except InfotextValueError as exc:
        raise UserError(f"--from-png: {path} stores {exc}.", "Pass that setting on the command line instead.") from None
    reading = ClipReading(data, model=params.get("Model"), motion=params.get("Motion module"))
    if "Context" in params:  # personae's "context/stride" of a clip drawn in windows
        context, _, stride = params["Context"].partition("/")
        if not (context.strip().isdigit() and stride.strip().isdigit()):
            raise UserError(f'--from-png: {path} stores "Context: {params["Context"][:20]}", which is not two frame '
                            "counts.", "Pass --context and --context-stride on the command line instead.")
        data.update(context=int(context), context_stride=int(stride))
    if "AnimateDiff" in params:
        _extension(params["AnimateDiff"], path, reading)
    known = _DESCRIBING | _infotext_keys()
    for key in params:
        if re.fullmatch(r"ControlNet \d+", key):
            reading.notes.append(f"{key} (its control frames are not in the file: pass --control TYPE:FRAMES)")
        elif key not in known:
            reading.notes.append(key)
    if "Denoising strength" in params:  # a clip's, or the hires fix's of an A1111 frame (which a clip has not)
        reading.notes.append("the clip started from frames, which are not in the file (pass --init-image FRAMES; "
                             "the stored Denoising strength applies)")
    if not str(params.get("Version", "")).startswith("personae"):
        reading.notes.append("the frames' noise: A1111 draws it its own way, personae from one generator for the "
                             "clip (the same settings, not the same frames)")
    return reading


def _infotext_keys() -> set[str]:
    from personae.config.fields import extra_of, grouped_fields

    return {extra_of(info)["infotext"] for _, _, info in grouped_fields(AnimateSettings)
            if extra_of(info).get("infotext")}


def _extension(value: str, path: Path, reading: ClipReading) -> None:
    """A1111's AnimateDiff settings: a dict (`{'model': ..., 'video_length': 16, ...}`, newer versions) or `key:
    value` pairs joined by ", " (older ones)."""
    text = value.strip()
    try:
        if text.startswith("{"):
            found = ast.literal_eval(text)  # literals only: nothing in the file runs
            if not isinstance(found, dict):
                raise ValueError
            ext = {str(k): str(v) for k, v in found.items()}
        else:
            ext = dict(part.split(": ", 1) for part in text.split(", "))
    except (ValueError, SyntaxError, RecursionError, MemoryError):
        raise UserError(f'--from-png: {path} stores "AnimateDiff: {text[:40]}", which is not A1111\'s AnimateDiff '
                        "settings.", "Pass --frames, --fps and --motion-adapter on the command line instead.") from None
    data = reading.settings
    reading.motion = reading.motion or ext.get("model")
    try:
        if int(ext.get("video_length", 0)) > 0:
            data["frames"] = int(ext["video_length"])
        if "fps" in ext:
            data["fps"] = float(ext["fps"])
        if "loop_number" in ext:
            data["loop_number"] = int(ext["loop_number"])
        if int(ext.get("batch_size", 0)) > 0:  # "Context batch size": the frames the motion module sees at once
            data["context"] = int(ext["batch_size"])
    except ValueError:
        raise UserError(f'--from-png: {path} stores "AnimateDiff: {text[:60]}", whose numbers are not numbers.',
                        "Pass --frames, --fps and --context on the command line instead.") from None
    if ext.get("freeinit_enable") == "True":
        data["freeinit"] = True  # with the extension's defaults, which are personae's
    frames, context = data.get("frames", 16), data.get("context", 16)
    if frames > context:  # the extension's windows: a uniform schedule, closed or not; personae's are FreeNoise's
        if ext.get("closed_loop", "N") != "N":
            reading.notes.append(f"AnimateDiff closed loop {ext['closed_loop']} (personae's windows do not wrap "
                                 "around)")
        if "stride" in ext or "overlap" in ext:
            reading.notes.append("AnimateDiff stride and overlap (personae's windows are FreeNoise's: "
                                 "--context-stride)")
    if ext.get("interp", "Off") not in ("Off", "None"):
        reading.notes.append(f"AnimateDiff frame interpolation {ext['interp']}")
    if "latent_power" in ext or "latent_scale" in ext:
        reading.notes.append("AnimateDiff img2img latent power and scale")
