"""ControlNet for clips: a control map per frame, as A1111's AnimateDiff with its ControlNet extension takes them (a
unit's batch of frames, or a video); and the frames a clip starts from (`--init-image`), read the same way.

    personae animate ... --control pose:dance-frames/ --control canny:walk.mp4:0.6 --controlnet pose=./pose-net

- A unit's `image` is a folder (its pictures in name order, numbers read as numbers: frame-2 before frame-10), a
  GIF / animated WebP / MP4 / WebM / MOV (its frames), or one picture (the same map for every frame). A folder or a
  video holds exactly the clip's frames; anything else is said before a model loads.
- Each frame's map is made as `personae generate` makes a unit's map (the preprocessor at its Processor Res or Pixel
  Perfect, fitted by its Resize Mode).
- diffusers' AnimateDiffControlNetPipeline draws the clip on the animate session's own modules, with our prompt
  embeddings, sampler and FreeNoise windows; A1111's guidance windows and Control Modes act through the same hooks
  as for pictures (inference/control_steps.py), the negative prompt's rows being the clip's frames.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from PIL import Image

from personae.config.addons import ControlRef
from personae.data.control import get_control_type
from personae.errors import UserError
from personae.events import EventHandler, ignore
from personae.inference.control_steps import UnitSteps, unit_steps
from personae.inference.controlnet import (
    PreparedControl,
    make_map,
    model_for,
    pools,
    unit_controlnets,
    unit_window,
)
from personae.inference.img2img import open_image
from personae.models.controlnet import check_available, resolve_controlnet

VIDEO_SUFFIXES = (".gif", ".mp4", ".webm", ".mov", ".mkv")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _natural(path: Path) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _animated_webp(path: Path) -> bool:
    """A WebP of several frames (a clip, as A1111's AnimateDiff saves one); a still WebP is one picture."""
    if path.suffix.lower() != ".webp":
        return False
    try:
        with Image.open(path) as image:
            return getattr(image, "n_frames", 1) > 1
    except (OSError, ValueError):
        return False  # not a WebP that opens: read as a picture, whose error says so


def is_one_picture(text: str) -> bool:
    """`text` names one picture (not a folder of frames, a video or an animated WebP): a clip from a picture."""
    path = Path(text).expanduser()
    return path.is_file() and path.suffix.lower() not in VIDEO_SUFFIXES and not _animated_webp(path)


def control_frames(ref: ControlRef, frames: int, unit: int) -> list[Image.Image]:
    """The pictures a unit's maps are made from, one per frame of the clip."""
    return clip_frames(ref.image, frames, f"control {unit} ({ref.type})")


def clip_frames(text: str, frames: int, what: str) -> list[Image.Image]:
    """One picture per frame of the clip from a folder of frames, a video, or one picture (repeated)."""
    path = Path(text).expanduser()
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()), key=_natural)
        if not files:
            raise UserError(f"The folder {path} of {what} holds no pictures ({', '.join(IMAGE_SUFFIXES)}).",
                            "Put the frames there, one picture per frame of the clip.")
        pictures = [open_image(str(p), what) for p in files]
    elif path.is_file() and (path.suffix.lower() in VIDEO_SUFFIXES or _animated_webp(path)):
        from personae.media.video import read_clip_frames

        try:
            pictures = [Image.fromarray(frame) for frame in read_clip_frames(path)]
        except Exception as exc:  # a damaged or unknown video: ffmpeg's or Pillow's words
            raise UserError(f"The video {path} of {what} could not be read ({str(exc).splitlines()[0]}).",
                            "Pass a GIF, WebP, MP4 or WebM that plays, or a folder of its frames.") from None
    else:
        return [open_image(str(path), what)] * frames  # one picture: the same map for every frame
    if len(pictures) != frames:
        raise UserError(f"{path}, {what}, holds {len(pictures)} frame{'s' * (len(pictures) != 1)}; the clip has "
                        f"{frames}.",
                        f"Ask for --frames {len(pictures)}, or give it {frames} frames.")
    return pictures


def prepare_clip_controls(controls: list[ControlRef], frames: int, allow_pickle: bool = False, seed: int = 0
                          ) -> list[list[PreparedControl]]:
    """Every unit's maps, frame by frame (a picture given once is mapped once; `seed`: the numpy seed of random
    maps, the same for every frame, as the extension seeds numpy before each of a unit's pictures): bad input fails
    here, before any model loads."""
    prepared = []
    for i, ref in enumerate(controls):
        control_type = get_control_type(ref.type)
        if control_type.masked:
            raise UserError(f"control {i} ({ref.type}) marks the part a picture's --mask redraws; a clip has no mask.",
                            "Use another control type for a clip.")
        if ref.hr_option != "Both":
            raise UserError(f'control {i} ({ref.type}) has the Hires-Fix Option "{ref.hr_option}"; a clip has no '
                            "hires fix.", "Leave the option out for a clip.")
        check_available(resolve_controlnet(model_for(ref), allow_pickle))
        made: dict[int, PreparedControl] = {}
        units = []
        for picture in control_frames(ref, frames, i):
            if id(picture) not in made:
                made[id(picture)] = PreparedControl(ref, control_type, model_for(ref),
                                                    make_map(ref, picture, ref.processor_res, seed), picture,
                                                    seed=seed)
            units.append(made[id(picture)])
        prepared.append(units)
    return prepared


def clip_control_call(animate_session, settings, prepared: list[list[PreparedControl]], size: tuple[int, int],
                      scheduler, pipeline_class, on_event: EventHandler = ignore):
    """(the ControlNet pipeline on the animate session's modules with `scheduler`, its control arguments, a maker of
    the hooks of A1111's guidance windows and Control Modes to enter around each call, the ControlNets it calls)."""
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    session, base = animate_session.session, animate_session.pipe
    nets = unit_controlnets(session, prepared, settings.allow_pickle, on_event)
    controlnet = nets[0] if len(nets) == 1 else MultiControlNetModel(nets)
    pipe = pipeline_class(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=base.unet,
                          motion_adapter=base.motion_adapter, controlnet=controlnet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    maps = [[unit.map_at(size) for unit in units] for units in prepared]
    weights = [float(units[0].ref.weight) for units in prepared]
    single = len(prepared) == 1
    arguments = {"conditioning_frames": maps[0] if single else maps,
                 "controlnet_conditioning_scale": weights[0] if single else weights,
                 "control_guidance_start": 0.0 if single else [0.0] * len(nets),
                 "control_guidance_end": 1.0 if single else [1.0] * len(nets)}
    steps = [UnitSteps(units[0].ref.control_mode, *unit_window(settings, units[0].ref),
                       by_noise=units[0].ref.guidance_by == "noise", pooled=pools(net))
             for units, net in zip(prepared, nets)]
    return pipe, arguments, functools.partial(unit_steps, nets, steps, settings.frames, scheduler), [controlnet]
