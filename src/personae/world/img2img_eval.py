"""img2img on the world, measured exactly: the strength curve, and the face-to-animal recipe in miniature.

    result = measure_img2img(str(WORLD_DIR), str(WORLD_CONTROLNET_DIR), Path("img2img"))
    point_at(result["curves"][0], 0.2)  # CFG 1, strength 0.2: {"kept": {"background": .., "all": ..}, "followed": ..}
    result["recipe"]["rows"]            # per control and strength: target shape, centre, size, background

Every picture is drawn through `personae generate`'s own code (`txt2img` with `--init-image FILE --strength S`,
and for the recipe a `--control raw:SILHOUETTE --controlnet raw=DIR` unit as well), generate's defaults (sampler,
20 steps, CFG 7), case i at seed `seed + i` at every strength; the checker reads each one back.

**The curve**: an init picture (`curve_cases`: every trained shape, each size class, any colour on any background,
centres anywhere, from a seed of its own) and a prompt naming the same shape and size in another colour on another
background; per strength 0, 0.1, ..., 1 the share that **keeps** the init's background, colour, shape and position
(centre within `TOLERANCE` px of the init's) and the share that **follows** the prompt's colour and background.

**The recipe** (J3, "my face as a dog"): the init picture shows one shape (`recipe_cases`: a circle, square, ...),
the control is the silhouette of another shape drawn at the init's place and box (what a user draws over the photo;
or, once, canny edges of a picture of it), the prompt names that other shape in the init's colour, background and
size; the same without any control, for comparison. Right when the shape read back is the
target, its centre within `TOLERANCE` px of the init's, its size class and background the init's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from personae.config.generate import ControlRef, GenerateSettings
from personae.inference.txt2img import txt2img
from personae.outputs import Kind
from personae.world.check import check
from personae.world.control_eval import TOLERANCE, sheet
from personae.world.placed import EVAL_COMBOS, EVAL_SEED, GENERATE_TYPE, Placed, centre_range, silhouette
from personae.world.scene import BACKGROUNDS, COLOURS, SIDE, SIZES, TRAINED

IMG2IMG_EVAL = Kind("world-img2img-eval", "a world img2img measurement", "personae world img2img-eval",
                    signature=("results.json",), layout=("table.md", "results.json", "inits/*", "sheets/*"))
STRENGTHS = tuple(round(0.1 * i, 1) for i in range(11))  # the curve: 0, 0.1, ..., 1
RECIPE_STRENGTHS = (0.3, 0.5, 0.75, 1.0)  # the recipe: 0.75 is generate's default; at 1 the init no longer counts
CFGS = (1.0, 2.0, 4.0, 7.0)  # the curve's guidance scales: 7 is generate's default
RECIPE_PAIRS = (("circle", "square"), ("circle", "diamond"), ("square", "circle"), ("diamond", "cross"))
KEPT = ("background", "colour", "shape", "position", "all")  # the init's attributes; "all": the four at once
FOLLOWED = ("colour", "background", "both")  # the prompt's
PAIRS = tuple((c, b) for b in BACKGROUNDS for c in COLOURS if c != b)  # every shape colour on every background


def _centre(rng: np.random.Generator, box: float) -> tuple[float, float]:
    lo, hi = centre_range(box)
    return float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))


def curve_cases(count: int = 64, seed: int = EVAL_SEED + 2) -> list[tuple[Placed, Placed]]:
    """(init, asked) pairs: init i shows shape i mod 6 at size class (i // 6) mod 3, a colour pair and a centre
    drawn from `seed`; `asked` is the same shape, size and place in another colour on another background (never
    the init's colour, never its background)."""
    rng = np.random.default_rng(seed)
    sizes = list(SIZES)
    out = []
    for i in range(count):
        box = SIZES[sizes[(i // len(TRAINED)) % len(sizes)]]
        colour, background = PAIRS[rng.integers(len(PAIRS))]
        others = [(c, b) for c, b in PAIRS if c != colour and b != background]
        new_colour, new_background = others[rng.integers(len(others))]
        init = Placed(TRAINED[i % len(TRAINED)], colour, background, box, _centre(rng, box))
        out.append((init, Placed(init.shape, new_colour, new_background, box, init.centre)))
    return out


def recipe_cases(count: int = 64, seed: int = EVAL_SEED + 3) -> list[tuple[Placed, Placed]]:
    """(init, target) pairs: pair i mod 4 of `RECIPE_PAIRS` (source shape -> target shape), size class
    (i // 4) mod 3, colour pair i mod 6 of the ControlNet's held-out pairs, a centre from `seed`; the target
    is the other shape at the init's place, box, colour and background."""
    rng = np.random.default_rng(seed)
    sizes = list(SIZES)
    out = []
    for i in range(count):
        source, target = RECIPE_PAIRS[i % len(RECIPE_PAIRS)]
        box = SIZES[sizes[(i // len(RECIPE_PAIRS)) % len(sizes)]]
        colour, background = EVAL_COMBOS[i % len(EVAL_COMBOS)]
        init = Placed(source, colour, background, box, _centre(rng, box))
        out.append((init, Placed(target, colour, background, box, init.centre)))
    return out


def read_back(image: Image.Image, init: Placed, asked: Placed, tolerance: float = TOLERANCE) -> dict:
    """One output against the init it started from and the picture its prompt (and control) asked for."""
    found = check(image)
    distance = math.hypot(found.position[0] * SIDE - init.centre[0], found.position[1] * SIDE - init.centre[1])
    row = {"init": [init.shape, init.colour, init.background, init.size, [round(v, 2) for v in init.centre]],
           "asked": [asked.shape, asked.colour, asked.background],
           "read": [found.shape, found.colour, found.background, found.size,
                    [round(v * SIDE, 2) for v in found.position]],
           "distance": round(distance, 2), "position": distance <= tolerance,
           "size": found.size == init.size, "shape": found.shape == init.shape,
           "colour": found.colour == init.colour, "background": found.background == init.background,
           "target": found.shape == asked.shape, "asked_colour": found.colour == asked.colour,
           "asked_background": found.background == asked.background}
    row["all"] = row["background"] and row["colour"] and row["shape"] and row["position"]
    row["both"] = row["asked_colour"] and row["asked_background"]
    row["recipe"] = row["target"] and row["position"] and row["size"] and row["background"]
    return row


def write_inits(cases: list[tuple[Placed, Placed]], folder: Path, control: bool = False) -> list[dict[str, Path]]:
    """The files generate reads: init-NN.png (the picture); with `control` also silhouette-NN.png (the target's
    silhouette, a `raw` map) and target-NN.png (a picture of the target, whose canny edges generate draws)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (init, asked) in enumerate(cases):
        files = {"init": folder / f"init-{i:02d}.png"}
        init.image().save(files["init"])
        if control:
            files.update(silhouette=folder / f"silhouette-{i:02d}.png", canny=folder / f"target-{i:02d}.png")
            silhouette(asked).save(files["silhouette"])
            asked.image().save(files["canny"])
        paths.append(files)
    return paths


def draw(session, files: list[dict[str, Path]], prompts: list[str], strength: float, controlnet: str | None = None,
         kind: str = "silhouette", steps: int = 20, cfg: float = 7.0, seed: int = 0) -> list[Image.Image]:
    """One image per init, as `personae generate --init-image FILE --strength S` makes it; with `controlnet` plus
    `--control raw:SILHOUETTE --controlnet raw=DIR` (kind "silhouette") or `--control canny:TARGET --controlnet
    canny=DIR` (kind "canny")."""
    images = []
    for i, (paths, prompt) in enumerate(zip(files, prompts)):
        unit = ControlRef(type=GENERATE_TYPE[kind], image=str(paths[kind]), model=controlnet,
                          pixel_perfect=True) if controlnet else None
        controls = [unit] if unit else []
        settings = GenerateSettings(model=session.source.location, prompt=prompt, seed=seed + i, steps=steps, cfg=cfg,
                                    init_image=str(paths["init"]), strength=strength, controls=controls, device="cpu")
        images.append(txt2img(settings, session)[0].image)
    return images


def shares(rows: list[dict], keys: tuple[str, ...]) -> dict[str, float]:
    n = max(len(rows), 1)
    return {key: round(sum(r[key] for r in rows) / n, 4) for key in keys}


def measure_curve(session, cases, folder: Path, strengths=STRENGTHS, **options) -> tuple[list[dict], list]:
    """Per strength: the shares keeping the init and following the prompt, and the images (for the sheet)."""
    files = write_inits(cases, folder)
    prompts = [asked.caption() for _, asked in cases]
    points, images = [], []
    for strength in strengths:
        drawn = draw(session, files, prompts, strength, **options)
        rows = [read_back(image, init, asked) for image, (init, asked) in zip(drawn, cases)]
        kept = shares(rows, KEPT)
        followed = {k: v for k, v in zip(FOLLOWED, shares(rows, ("asked_colour", "asked_background", "both")).values())}
        points.append({"strength": strength, "kept": kept, "followed": followed,
                       "mean_distance": round(float(np.mean([r["distance"] for r in rows])), 2), "images": rows})
        images.append(drawn)
    return points, images


RECIPE_KEYS = ("recipe", "target", "position", "size", "background", "colour")
# (control, strength) of the recipe's rows: the silhouette at each strength, canny edges of a picture of the target
# at generate's default strength, and the prompt alone (no control) at each strength
RECIPE_RUNS = (*(("silhouette", s) for s in RECIPE_STRENGTHS), ("canny", 0.75),
               *(("none", s) for s in RECIPE_STRENGTHS))


def measure_recipe(session, controlnet: str, cases, folder: Path, runs=RECIPE_RUNS,
                   **options) -> tuple[list[dict], dict]:
    """Per (control, strength) of `runs`: the shares of `RECIPE_KEYS`, and the images."""
    files = write_inits(cases, folder, control=True)
    prompts = [target.caption() for _, target in cases]
    rows, images = [], {}
    for kind, strength in runs:
        drawn = draw(session, files, prompts, strength, None if kind == "none" else controlnet,
                     kind if kind != "none" else "silhouette", **options)
        read = [read_back(image, init, target) for image, (init, target) in zip(drawn, cases)]
        rows.append({"control": kind, "strength": strength, **shares(read, RECIPE_KEYS), "by_pair": _by_pair(read),
                     "mean_distance": round(float(np.mean([r["distance"] for r in read])), 2), "images": read})
        images[(kind, strength)] = drawn
    return rows, images


def _by_pair(read: list[dict]) -> dict[str, float]:
    """The recipe's share per source -> target pair."""
    groups: dict[str, list[bool]] = {}
    for r in read:
        groups.setdefault(f"{r['init'][0]} -> {r['asked'][0]}", []).append(r["recipe"])
    return {k: round(sum(v) / len(v), 4) for k, v in groups.items()}


def measure_img2img(model: str, controlnet: str, out: Path, cases: int = 64, cfgs: tuple[float, ...] = CFGS,
                    steps: int = 20, recipe_cfg: float = 7.0, on_event=None) -> dict:
    """The curve at each of `cfgs`, then the recipe at `recipe_cfg`, into OUT: table.md, results.json, inits/ (what
    generate read) and sheets/."""
    from personae.events import Message, ignore
    from personae.inference.session import open_session

    on_event = on_event or ignore
    out = Path(out)
    (out / "sheets").mkdir(parents=True, exist_ok=True)
    session = open_session(model, device="cpu")
    curve_set = curve_cases(cases)
    curves = []
    for cfg in cfgs:
        points, images = measure_curve(session, curve_set, out / "inits" / "curve", steps=steps, cfg=cfg)
        curves.append({"cfg": cfg, "points": points})
        for point in points:
            on_event(Message(f"CFG {cfg:g}, strength {point['strength']:.1f}: keeps all four "
                             f"{point['kept']['all']:.0%}, follows the prompt {point['followed']['both']:.0%}"))
        curve_sheet(curve_set, images).save(out / "sheets" / f"curve-cfg{cfg:g}.png")
    recipe_set = recipe_cases(cases)
    recipe, images = measure_recipe(session, controlnet, recipe_set, out / "inits" / "recipe", steps=steps,
                                    cfg=recipe_cfg)
    for row in recipe:
        on_event(Message(f"recipe, control {row['control']}, strength {row['strength']:g}: right {row['recipe']:.0%}"))
    recipe_sheet(recipe_set, images).save(out / "sheets" / "recipe.png")
    result = {"model": model, "controlnet": controlnet, "cases": cases, "steps": steps,
              "sampler": GenerateSettings.model_fields["sampler"].default, "tolerance_px": TOLERANCE,
              "curves": curves, "recipe": {"cfg": recipe_cfg, "pairs": [list(p) for p in RECIPE_PAIRS],
                                           "rows": recipe}}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "table.md").write_text(table_markdown(result))
    return result


def point_at(curve: dict, strength: float) -> dict:
    """The curve's point at `strength`."""
    return next(p for p in curve["points"] if math.isclose(p["strength"], strength))


def curve_sheet(cases, images: list[list[Image.Image]], rows: int = 12) -> Image.Image:
    """A row per case: the init, then the output at each strength (0 ... 1)."""
    return sheet([[init.image()] + [drawn[i] for drawn in images] for i, (init, _) in enumerate(cases[:rows])])


def recipe_sheet(cases, images: dict, rows: int = 12) -> Image.Image:
    """A row per case: the init, the silhouette, then each run of the recipe (`RECIPE_RUNS`' order)."""
    return sheet([[init.image(), silhouette(target)] + [drawn[i] for drawn in images.values()]
                  for i, (init, target) in enumerate(cases[:rows])])


def table_markdown(result: dict) -> str:
    n = result["cases"]
    head = ("| strength | keeps background | keeps colour | keeps shape | keeps position (2 px) | keeps all four | "
            "prompt's colour | prompt's background | prompt's both |\n|---|---|---|---|---|---|---|---|---|\n")
    parts = []
    for curve in result["curves"]:
        lines = [f"| {p['strength']:.1f} | {p['kept']['background']:.0%} | {p['kept']['colour']:.0%} | "
                 f"{p['kept']['shape']:.0%} | {p['kept']['position']:.0%} | {p['kept']['all']:.0%} | "
                 f"{p['followed']['colour']:.0%} | {p['followed']['background']:.0%} | {p['followed']['both']:.0%} |"
                 for p in curve["points"]]
        parts.append(f"img2img strength curve at CFG {curve['cfg']:g}: {n} init pictures per strength "
                     f"({result['sampler']}, {result['steps']} steps), the prompt another colour on another "
                     "background.\n\n" + head + "\n".join(lines) + "\n")
    recipe_head = ("| control | strength | right (target shape, centre within 2 px, size, background) | target shape | "
                   "centre | size | background | colour |\n|---|---|---|---|---|---|---|---|\n")
    rows = [f"| {r['control']} | {r['strength']:g} | {r['recipe']:.0%} | {r['target']:.0%} | {r['position']:.0%} | "
            f"{r['size']:.0%} | {r['background']:.0%} | {r['colour']:.0%} |" for r in result["recipe"]["rows"]]
    parts.append(f"The recipe in miniature at CFG {result['recipe']['cfg']:g}: {n} init pictures turned into another "
                 "shape (silhouette control at the init's place + prompt).\n\n" + recipe_head + "\n".join(rows) + "\n")
    return "\n".join(parts)
