"""The demo's prompt travel on the world: a still shape whose prompt changes between two keyframes, with the shipped
motion adapter, every frame read back by the exact checker (world/travel_eval.py)."""

from __future__ import annotations

from pathlib import Path

from personae.events import EventHandler, Message


def world_travel(out: Path, model: Path, adapter: Path, index, on_event: EventHandler) -> list[dict]:
    """Section "Prompt travel on the world"; returns its rows without their frames."""
    from personae.jobs.animate import run_animate
    from personae.media.grid import save_image
    from personae.world.control_eval import sheet
    from personae.world.motion_eval import adapter_lora
    from personae.world.travel_eval import FRAMES, QUARTER, TRAVELS, measure_travel, travel_settings

    on_event(Message("world prompt travel: a shape's prompt changing between two keyframes"))
    here = out / "world-travel"
    lora = adapter_lora(str(adapter))
    rows = measure_travel(str(model), str(adapter), seeds=1, lora=lora)
    here.mkdir(parents=True, exist_ok=True)
    save_image(sheet([r["frames"] for r in rows] + [r["control_frames"] for r in rows]), here / "travel.png")
    shape = TRAVELS[0]  # the circle turning into a triangle, as `personae animate` writes it
    run_animate(travel_settings(str(model), str(adapter), shape.prompt, 0, lora), [here / "travel.gif"],
                on_event=on_event)
    said = "; ".join(f"{r['changes']}: {r['starts_first']} of {QUARTER} as the first keyframe at the start, "
                     f"{r['ends_last']} of {QUARTER} as the last at the end (its control: {r['control']['ends_first']} "
                     f"of {QUARTER} still the first at the end)" for r in rows)
    index.add("Prompt travel on the world",
              "`personae animate --prompt` with A1111's AnimateDiff prompt travel: lines \"FRAME: prompt\", every "
              "frame drawn on the slerp of the keyframes around it. On the zero-terminal-SNR world model with the "
              f"shipped motion adapter, {FRAMES} frames, a still shape whose keyframes 0 and {FRAMES - 1} differ in "
              "one word: its shape (" + " to ".join(TRAVELS[0].first[:1] + TRAVELS[0].last[:1]) + "), its colour ("
              + " to ".join(TRAVELS[1].first[1:2] + TRAVELS[1].last[1:2]) + ") or its background ("
              + " to ".join(TRAVELS[2].first[2:] + TRAVELS[2].last[2:]) + f"). The checker reads the first and the "
              f"last {QUARTER} frames of each: {said}. Top rows: the three travels; bottom rows: the same seeds with "
              "the first keyframe's prompt alone. world-travel/travel.gif is the circle turning into a triangle "
              "(tests/test_world_motion.py holds two seeds of each).",
              [here / "travel.png", here / "travel.gif"])
    return [{k: v for k, v in r.items() if not k.endswith("frames")} for r in rows]
