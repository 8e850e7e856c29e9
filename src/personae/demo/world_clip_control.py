"""The demo's ControlNet for clips on the world: the world ControlNet moves a shape along a map per frame, with the
shipped motion adapter, while the prompt says "still"; a clip redrawn from rendered frames; a clip from one picture;
every frame read back by the exact checker (world/clip_control_eval.py)."""

from __future__ import annotations

from pathlib import Path

from personae.events import EventHandler, Message

INIT_STRENGTH = 0.5  # tests/test_world_motion.py holds this strength
PICTURE_STRENGTH, PICTURE_SCALE = 0.6, 4.0  # and these (a clip from one picture)


def world_clip_control(out: Path, model: Path, adapter: Path, controlnet: Path, index, on_event: EventHandler
                       ) -> list[dict]:
    """Section "ControlNet for a clip on the world"; returns its rows without their frames."""
    from personae.jobs.animate import run_animate
    from personae.media.grid import save_image
    from personae.world.clip_control_eval import (
        FRAMES,
        case_settings,
        measure_clip_control,
        measure_clip_init,
        measure_clip_picture,
    )
    from personae.world.control_eval import sheet
    from personae.world.motion_eval import adapter_lora

    on_event(Message("world ControlNet for a clip: a shape moved along a map per frame"))
    here = out / "world-clip-control"
    lora = adapter_lora(str(adapter))
    rows = measure_clip_control(str(model), str(adapter), str(controlnet), here / "maps", lora=lora)
    save_image(sheet([r["frames"] for r in rows] + [r["uncontrolled_frames"] for r in rows]), here / "clips.png")
    first = rows[0]  # as `personae animate --control canny:FOLDER` writes it
    unit = {"type": "canny", "image": first["maps"], "model": str(controlnet), "pixel_perfect": True}
    run_animate(case_settings(str(model), str(adapter), first["scene"], 0, lora, [unit]), [here / "steered.gif"],
                on_event=on_event)
    said = "; ".join(f"{r['case']}, maps moving {r['maps_move']}: the shape right in {r['identity_frames']} of "
                     f"{FRAMES} frames, {r['centre_error']:.1f} px from each map's centre on average, moving as the "
                     f"maps {'do' if r['follows_maps'] else 'do not'} (without the unit: "
                     f"{r['uncontrolled']['centre_error']:.1f} px)" for r in rows)
    index.add("ControlNet for a clip on the world",
              "`personae animate --control canny:FOLDER --controlnet canny=models/world-controlnet`: a control map "
              "per frame (a folder of frames, a GIF / MP4, or one picture for every frame), drawn with diffusers' "
              "AnimateDiff ControlNet pipeline on the clip's own modules, A1111's unit settings included. The world "
              f"ControlNet with the shipped motion adapter, {FRAMES} frames of four rendered clips whose shape moves "
              "right, down, left and up given as the frames, the prompt asking for a still shape: " + said + ". Top "
              "rows: steered; bottom rows: the same seeds without the unit. world-clip-control/steered.gif is the "
              "first (tests/test_world_motion.py holds the four).",
              [here / "clips.png", here / "steered.gif"])
    # and a clip started from the rendered frames, redrawn in the colour its prompt names
    started = measure_clip_init(str(model), str(adapter), here / "init", INIT_STRENGTH, lora=lora)
    save_image(sheet([r["frames"] for r in started] + [r["from_noise_frames"] for r in started]), here / "init.png")
    said = "; ".join(f"{r['case']}: {r['identity_frames']} of {FRAMES} frames in the new colour, "
                     f"{r['centre_error']:.1f} px from the rendered track (from noise: "
                     f"{r['from_noise']['centre_error']:.1f} px)" for r in started)
    index.add("A clip started from another on the world",
              f"`personae animate --init-image FOLDER --strength {INIT_STRENGTH}` (A1111's AnimateDiff img2img / "
              "video source: a folder of frames or a GIF / MP4, through diffusers' "
              "AnimateDiff video-to-video pipeline with A1111's img2img steps). The same four rendered clips as "
              "above, each redrawn in another colour its prompt names, with its own motion word: " + said + ". Top "
              "rows: started from the frames; bottom rows: the same seeds from noise.", [here / "init.png"])
    # and a clip from one picture (A1111's img2gif): each clip's first frame, the prompt naming its motion
    pictured = measure_clip_picture(str(model), str(adapter), here / "pictures", PICTURE_STRENGTH, PICTURE_SCALE,
                                    lora=lora)
    save_image(sheet([r["frames"] for r in pictured] + [r["kept_frames"] for r in pictured]), here / "picture.png")
    said = "; ".join(f"{r['case']}: starts {r['start_error']:.1f} px from the picture's shape, the shape right in "
                     f"{r['identity_frames']} of {FRAMES} frames, {'moves' if r['moves'] else 'does not move'} as "
                     f"asked (the picture kept in every frame: {'moves' if r['kept']['moves'] else 'does not move'})"
                     for r in pictured)
    index.add("A clip from one picture on the world",
              f"`personae animate --init-image PICTURE --strength {PICTURE_STRENGTH} --latent-scale "
              f"{PICTURE_SCALE:g}`, as A1111's AnimateDiff img2img animates one picture: frame i starts from "
              f"1 - i / {PICTURE_SCALE:g} of the picture, the rest noise, before the strength's noise. The first "
              "frames of the same four rendered clips, each prompt naming its clip's motion: " + said + ". Top rows: "
              "faded; bottom rows: the same seeds with the picture kept in every frame (latent scale 1e9).",
              [here / "picture.png"])
    return [{k: v for k, v in r.items() if k not in ("frames", "uncontrolled_frames")} for r in rows]
