"""A clip steered by ControlNet on the world: the world ControlNet, given a map per frame of a shape moving one way,
with the shipped motion adapter, while the prompt asks the shape to stay still; every frame read back by the exact
checker. And a clip started from another (`--init-image FRAMES --strength S`): the rendered clip's track kept, its
colour redrawn as the prompt says (`measure_clip_init`); and a clip from one picture (`--init-image PICTURE`, A1111's
img2gif): it starts where the picture's shape is and moves as the prompt says (`measure_clip_picture`).

    rows = measure_clip_control(str(zero_snr_model), str(motion_adapter), str(world_controlnet), folder)

Case i is a rendered clip (world/clips.py) moving as MOTIONS_SHOWN[i]; its frames are written to FOLDER and passed
as `personae animate --control canny:FOLDER --controlnet canny=NET` (animate draws their edges), with the prompt
"<caption>, still" (the motion adapter's words for no motion) at the world's motion settings. Its control is the
same seed without the unit. Each row: the frames whose shape, colour and background read as the caption says; the
mean distance (px) of the shape's centre from the control's, frame by frame; whether the track moves as the maps
move (world/clips.py's rule), for the clip and for its control.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from personae.config.animate import AnimateSettings
from personae.inference.animate import animate, open_for
from personae.world.check import check_box
from personae.world.clips import MOTION_WORDS, direction_right, make_clip
from personae.world.motion_eval import CONTEXT, STRIDE
from personae.world.scene import caption

FRAMES, STEPS, CFG = 16, 25, 4.0
SIZE = "medium shot"
CASES = (("triangle", "red", "blue", "right"), ("square", "white", "green", "down"),
         ("circle", "yellow", "red", "left"), ("ring", "black", "yellow", "up"))


def case_settings(model: str, adapter: str, case: tuple, seed: int, lora: str | None,
                  controls: list, motion: str = "still") -> AnimateSettings:
    shape, colour, background, _ = case
    return AnimateSettings(model=model, motion_adapter=adapter, seed=seed, steps=STEPS, cfg=CFG, sampler="DDIM",
                           prompt=f"{caption(shape, colour, background, SIZE)}, {MOTION_WORDS[motion]}",
                           clip_skip=1, frames=FRAMES, context=CONTEXT, context_stride=STRIDE, device="cpu",
                           loras=[{"path": lora, "weight": 1.0}] if lora else [], controls=controls)


def score(frames, clip) -> dict:
    reads = [check_box(frame) for frame in frames]
    side = frames[0].width
    centres = [(a.position[0] * side, a.position[1] * side) for a, _ in reads]
    boxes = [max(box, 1e-6) for _, box in reads]
    identity = sum((a.shape, a.colour, a.background) == (clip.shape, clip.colour, clip.background) for a, _ in reads)
    off = float(np.mean([np.hypot(x - cx, y - cy) for (x, y), (cx, cy) in zip(centres, clip.centres)]))
    return {"identity_frames": identity, "centre_error": off,
            "follows_maps": direction_right(clip.motion, centres, boxes)}


def measure_clip_control(model: str, adapter: str, controlnet: str, folder: Path, lora: str | None = None,
                         cases: int = len(CASES)) -> list[dict]:
    """A row per case: the controlled clip's score, its control's (`uncontrolled`), and both clips' frames."""
    folder = Path(folder)
    session, rows = None, []
    for seed, case in enumerate(CASES[:cases]):
        clip = make_clip(np.random.default_rng(seed), *case, frames=FRAMES, size=SIZE)
        maps = folder / f"{seed:02d}-{case[3]}"
        maps.mkdir(parents=True, exist_ok=True)
        for i, picture in enumerate(clip.frames()):
            picture.save(maps / f"{i:02d}.png")
        unit = {"type": "canny", "image": str(maps), "model": controlnet, "pixel_perfect": True}
        steered = case_settings(model, adapter, case, seed, lora, [unit])
        session = session or open_for(steered)
        frames = animate(steered, session).frames
        free = animate(steered.model_copy(update={"controls": []}), session).frames
        rows.append({"case": f"a {case[1]} {case[0]} on {case[2]}", "scene": case, "maps_move": case[3],
                     "maps": str(maps), **score(frames, clip),
                     "uncontrolled": score(free, clip), "frames": frames, "uncontrolled_frames": free})
    return rows


RECOLOURED = {"red": "white", "white": "yellow", "yellow": "white", "black": "blue"}  # the prompt's colour per case


def measure_clip_init(model: str, adapter: str, folder: Path, strength: float, lora: str | None = None,
                      cases: int = len(CASES)) -> list[dict]:
    """A row per case: the rendered clip's frames given as `--init-image FOLDER --strength S`, the prompt naming
    another colour for the shape (RECOLOURED) and "still"; scored against the rendered track with the prompt's
    colour, and its control (the same seed from noise)."""
    folder = Path(folder)
    session, rows = None, []
    for seed, (shape, colour, background, motion) in enumerate(CASES[:cases]):
        clip = make_clip(np.random.default_rng(seed), shape, colour, background, motion, frames=FRAMES, size=SIZE)
        frames_dir = folder / f"{seed:02d}-{motion}"
        frames_dir.mkdir(parents=True, exist_ok=True)
        for i, picture in enumerate(clip.frames()):
            picture.save(frames_dir / f"{i:02d}.png")
        wanted = (shape, RECOLOURED[colour], background, motion)
        target = make_clip(np.random.default_rng(seed), *wanted, frames=FRAMES, size=SIZE)  # the same track
        started = case_settings(model, adapter, wanted, seed, lora, [], motion).model_copy(
            update={"init_image": str(frames_dir), "strength": strength})
        session = session or open_for(started)
        frames = animate(started, session).frames
        free = animate(started.model_copy(update={"init_image": None}), session).frames
        rows.append({"case": f"a {colour} {shape} on {background} redrawn {wanted[1]}", "frames_dir": str(frames_dir),
                     **score(frames, target), "from_noise": score(free, target), "frames": frames,
                     "from_noise_frames": free})
    return rows


def measure_clip_picture(model: str, adapter: str, folder: Path, strength: float = 0.6, scale: float = 4.0,
                         lora: str | None = None, cases: int = len(CASES)) -> list[dict]:
    """A row per case: the rendered clip's first frame given as `--init-image PICTURE --strength S --latent-scale
    SCALE` (A1111's img2gif: frame i starts from 1 - i / SCALE of the picture), the prompt naming the clip's motion;
    scored: the shape right in how many frames, the first frame's distance (px) from the picture's shape, whether it
    moves as asked; and the same seed with the picture kept in every frame (`kept`: latent scale 1e9)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    session, rows = None, []
    for seed, case in enumerate(CASES[:cases]):
        clip = make_clip(np.random.default_rng(seed), *case, frames=FRAMES, size=SIZE)
        picture = folder / f"{seed:02d}-{case[3]}.png"
        clip.frames()[0].save(picture)
        faded = case_settings(model, adapter, case, seed, lora, [], case[3]).model_copy(
            update={"init_image": str(picture), "strength": strength, "latent_scale": scale})
        session = session or open_for(faded)
        frames = animate(faded, session).frames
        kept = animate(faded.model_copy(update={"latent_scale": 1e9}), session).frames
        rows.append({"case": f"a {case[1]} {case[0]} on {case[2]} moving {case[3]}", "picture": str(picture),
                     **picture_score(frames, clip), "kept": picture_score(kept, clip), "frames": frames,
                     "kept_frames": kept})
    return rows


def picture_score(frames, clip) -> dict:
    reads = [check_box(frame) for frame in frames]
    side = frames[0].width
    centres = [(a.position[0] * side, a.position[1] * side) for a, _ in reads]
    identity = sum((a.shape, a.colour, a.background) == (clip.shape, clip.colour, clip.background) for a, _ in reads)
    (x, y), (px, py) = centres[0], clip.centres[0]
    return {"identity_frames": identity, "start_error": float(np.hypot(x - px, y - py)),
            "moves": direction_right(clip.motion, centres, [max(box, 1e-6) for _, box in reads])}
