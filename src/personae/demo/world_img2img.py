"""The demo's img2img on the world: `personae world img2img-eval` on 8 cases instead of 64.

The strength curve at CFG 1 (an init picture, a prompt naming other colours, strength 0 to 1) and the face-to-animal
recipe in miniature (a picture of one shape, the silhouette of another at its place, a prompt naming it), every
output read back by the checker. docs/world.md ("img2img on the world") has the 64-case tables and CFG 1 to 7.
"""

from __future__ import annotations

from pathlib import Path

from personae.events import EventHandler, Message

CASES = 8


def world_img2img(out: Path, model: Path, controlnet: Path, index, on_event: EventHandler) -> dict:
    """Section "img2img on the world"; returns the counts it reports."""
    from personae.world.img2img_eval import measure_img2img, point_at

    on_event(Message(f"world img2img: the strength curve and the recipe in miniature on {CASES} cases"))
    here = out / "world-img2img"
    result = measure_img2img(str(model), str(controlnet), here, cases=CASES, cfgs=(1.0,))
    curve = result["curves"][0]
    rows = {(r["control"], r["strength"]): r for r in result["recipe"]["rows"]}
    counts = {"kept_02": round(point_at(curve, 0.2)["kept"]["all"] * CASES),
              "followed_09": round(point_at(curve, 0.9)["followed"]["background"] * CASES),
              "recipe": round(rows[("silhouette", 0.75)]["recipe"] * CASES),
              "prompt_alone": round(rows[("none", 0.75)]["recipe"] * CASES)}
    index.add("img2img on the world",
              f"`personae world img2img-eval --cases {CASES} --cfg 1`: each init picture (top sheet, left column) with "
              "a prompt naming the same shape in another colour on another background, `personae generate "
              "--init-image --strength` at strength 0 to 1 (left to right), CFG 1: at strength 0.2 background, "
              f"colour, shape and position (within 2 px) all kept in {counts['kept_02']} of {CASES}; at 0.9 the "
              f"prompt's background in {counts['followed_09']} of {CASES}. The recipe of \"my face as a dog\" in "
              "miniature (bottom sheet): a picture of one shape, the silhouette of another drawn at its place as a "
              "`raw` control for the world ControlNet, a prompt naming the other shape, strength 0.75, CFG 7: the "
              f"other shape at the init's place, size and background in {counts['recipe']} of {CASES}; the prompt "
              f"alone in {counts['prompt_alone']} of {CASES}. At generate's default CFG 7 the prompt takes the "
              "colours already at 0.2 (docs/world.md has the 64-case tables at CFG 1 to 7).",
              [here / "sheets/curve-cfg1.png", here / "sheets/recipe.png"])
    return counts
