"""Is a drawing style learnt, and only where it is asked for? 8 shape / colour / background combinations x 2 shots
x 4 seeds = 64 world generations with the style's trigger phrase and the same 64 without it, each read back by the
exact checker (world/check.py: `read_style`).

    scores = score_style(pipe)                  # a pipeline with the style's LoRA loaded
    scores["present"], scores["leak"], scores["content"]

Two sets of combinations, none in the style's training set (examples/style-world): "held-out" (the default, issue
#20's "unseen combinations"), circles, squares, triangles and crosses in red, green, blue and black, in 8 of the
combinations its pictures could show and `personae world render --exclude` leaves out; and "new", rings and
diamonds (shapes the world model knows, never drawn in the style) and the trained shapes in yellow and white.
Close-up and medium shot only: at full shot (10 px) a shape is one or two bands, too little to read its shape back
(docs/world.md, "A drawing style").
"""

from __future__ import annotations

import json
from pathlib import Path

from personae.events import EventHandler, ignore
from personae.outputs import Kind, staged_output
from personae.staging import atomic_file, write_text
from personae.world.check import read_style

TRIGGER = ", drawn by KSH style"  # what `personae prepare --append` wrote after each caption
STYLE = "banded"  # the style the trigger should call (vocab.STYLES)
# Two sets of 8 (shape, colour, background), every shape, colour and background twice in each:
HELD_OUT = (  # the "unseen combinations": trained shapes, colours and backgrounds, in combinations the
    # example's training set leaves out (`personae world render --exclude`, examples/style-world)
    ("circle", "red", "green"), ("circle", "blue", "yellow"), ("square", "green", "red"), ("square", "black", "blue"),
    ("triangle", "green", "yellow"), ("triangle", "blue", "red"), ("cross", "red", "blue"), ("cross", "black", "green"),
)
NEW = (  # harder: rings and diamonds (shapes the world model knows, never drawn in the style) and the trained shapes
    # in yellow and white (colours never drawn in the style)
    ("ring", "red", "blue"), ("diamond", "black", "yellow"), ("ring", "yellow", "green"), ("diamond", "white", "red"),
    ("circle", "yellow", "blue"), ("square", "white", "green"), ("triangle", "yellow", "red"),
    ("cross", "white", "yellow"),
)
COMBINATION_SETS = {"held-out": HELD_OUT, "new": NEW}
SHOTS = ("close-up", "medium shot")
SEEDS = 4
RECORD = "style.json"
STYLE_CHECK = Kind("world-style", "a world style measurement", "personae world style", signature=(RECORD,),
                   layout=(RECORD, "sheet.png", "with-trigger/*.png", "without/*.png"))


def style_prompts(trigger: str = TRIGGER, seeds: int = SEEDS, combinations: str = "held-out"
                  ) -> list[tuple[str, bool, tuple[str, str, str, str], int]]:
    """(prompt, with the trigger?, (shape, colour, background, shot) asked, seed): every combination of the set
    (COMBINATION_SETS), shot and seed once with the trigger and once without, the same seed for both."""
    plan = []
    for triggered in (True, False):
        for shot in SHOTS:
            for shape, colour, background in COMBINATION_SETS[combinations]:
                prompt = f"a {colour} {shape} on a {background} background, {shot}" + (trigger if triggered else "")
                plan += [(prompt, triggered, (shape, colour, background, shot), seed) for seed in range(seeds)]
    return plan


def score_style(pipe, trigger: str = TRIGGER, seeds: int = SEEDS, style: str = STYLE, combinations: str = "held-out",
                on_event: EventHandler = ignore) -> dict:
    """Share of the triggered generations drawn in `style` ("present"), of the untriggered ones drawn in it ("leak"),
    and of each whose shape, colour, background and size are the ones asked ("content" with the trigger,
    "content_plain" without), at DDIM 25, CFG 4 (the world's evaluation settings). Also the images and readings."""
    from personae.world.evaluate import generate_world  # torch: not for the command line's help, which reads TRIGGER

    plan = style_prompts(trigger, seeds, combinations)
    images = generate_world(pipe, [p for p, _, _, _ in plan], [s for _, _, _, s in plan], on_event=on_event)
    rows = []
    for image, (prompt, triggered, wanted, seed) in zip(images, plan):
        found_style, found = read_style(image)
        rows.append({"prompt": prompt, "seed": seed, "trigger": triggered, "style": found_style,
                     "content": (found.shape, found.colour, found.background, found.size) == wanted,
                     "read": [found.shape, found.colour, found.background, found.size]})
    on = [r for r in rows if r["trigger"]]
    off = [r for r in rows if not r["trigger"]]

    def share(items, key):
        return sum(bool(key(r)) for r in items) / len(items)

    return {"present": share(on, lambda r: r["style"] == style), "leak": share(off, lambda r: r["style"] == style),
            "content": share(on, lambda r: r["content"]), "content_plain": share(off, lambda r: r["content"]),
            "per_arm": len(on), "combinations": combinations, "rows": rows, "images": images}


def style_sheet(scores: dict):
    """One row per combination and shot: its seeds with the trigger, then without (a white column between)."""
    from PIL import Image

    rows = [r for r in scores["rows"]]
    per_arm, seeds = scores["per_arm"], max(r["seed"] for r in rows) + 1
    side = scores["images"][0].width
    lines = per_arm // seeds
    sheet = Image.new("RGB", ((2 * seeds + 1) * (side + 1), lines * (side + 1)), "white")
    for i, image in enumerate(scores["images"]):
        arm, k = divmod(i, per_arm)
        line, seed = divmod(k, seeds)
        sheet.paste(image, ((arm * (seeds + 1) + seed) * (side + 1), line * (side + 1)))
    return sheet


def write_style_record(scores: dict, out: str | Path, settings: dict) -> Path:
    """OUT/with-trigger/NNN.png, OUT/without/NNN.png, OUT/sheet.png and OUT/style.json (the shares, the settings
    and every picture's prompt, seed and reading), into a new folder or one this command wrote."""
    per_arm = scores["per_arm"]
    with staged_output(out, STYLE_CHECK) as work:
        for i, (image, row) in enumerate(zip(scores["images"], scores["rows"])):
            row["file"] = f"{'with-trigger' if row['trigger'] else 'without'}/{i % per_arm:03d}.png"
            (work / row["file"]).parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(work / row["file"]) as tmp:
                image.save(tmp, format="PNG")
        with atomic_file(work / "sheet.png") as tmp:
            style_sheet(scores).save(tmp, format="PNG")
        record = {"version": 1, "made_by": "personae world style", "settings": settings,
                  **{k: scores[k] for k in ("present", "leak", "content", "content_plain", "per_arm", "combinations")},
                  "pictures": scores["rows"]}
        write_text(work / RECORD, json.dumps(record, indent=1) + "\n")
    return Path(out)
