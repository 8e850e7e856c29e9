"""`personae demo`: every capability that exists, offline.

First the shapes-world model that ships with personae (demo/world.py): it draws what
it is asked and learns a held-out shape, measured exactly, and the DreamBooth model becomes a small LoRA
(`personae extract`) that draws the shape too; then shot tokens and a star
character taught on it and drawn as a storyboard whose panels are read back exactly
(demo/world_board.py), and the base model, the DreamBooth star and the LoRA star compared with
the checker as a metric (demo/world_compare.py), the world ControlNet placing shapes where a
control map says (demo/world_control.py), img2img's strength curve and one shape turned into another in place
(demo/world_img2img.py), a drawing style taught from banded pictures with a
trigger phrase, measured with and without it (demo/world_style.py), and the world motion adapter animating held-out
shapes and the taught star, every frame read back (demo/world_motion.py); then the everyday flow on it (a
folder prepared, text to image with A1111's settings and through A1111's samplers, a long weighted prompt, a LoRA
and its exports reloaded, the LoRA baked into the model, --from-png; demo/world_flow.py), and a kohya config with its
dataset_config trained as it is (demo/world_kohya.py). The random tiny model comes last, only where a file
format is the point: a single file in the original checkpoint layout (which cannot carry the world's own tokenizer);
its pictures are noise and the index does not show them.

Each step appends a section to index.md / index.html in the output folder, so the
user sees what was made and where. On two or more cores the drawing style (its LoRA is the demo's longest
training) runs in a worker process from the start, beside the sections before it, and fills the place kept for it
in the index (demo/beside.py). Later capabilities add steps here. The folder must be
new, empty or an earlier demo's (whose files are replaced; files the user added stay), and
it is locked while the demo runs (outputs.py).
"""

from __future__ import annotations

import html
from pathlib import Path

from personae.config.generate import GenerateSettings
from personae.demo.world_flow import same_pixels, world_flow
from personae.events import EventHandler, Message, ignore
from personae.jobs.generate import run_generate
from personae.models.tiny import write_tiny_model
from personae.outputs import Kind, open_output
from personae.staging import write_text

DEMO = Kind("demo", "a demo", "personae demo",
            layout=("index.md", "index.html", "models/*", "photos/*", "prepared/*", "generate/*", "samplers/*",
                    "single-file/*", "runs/*", "with-lora/*", "merged/*", "from-png/*", "storyboard/*", "controlnet/*", "animate/*", "compare/*",
                    "world/*", "world-bench/*", "world-board/*", "world-compare/*", "world-control/*",
                    "world-img2img/*", "world-style/*", "world-motion/*", "world-kohya/*"))


class Index:
    """index.md and index.html, rewritten after each section so a failed demo still shows progress. A section run
    beside the others (demo/beside.py) fills a place reserved in the order, whenever it is done."""

    def __init__(self, out: Path):
        self.out = out
        self.entries: list[tuple[str, str, list[Path]] | Slot] = []

    @property
    def sections(self) -> list[tuple[str, str, list[Path]]]:
        return [e for entry in self.entries for e in (entry.sections if isinstance(entry, Slot) else [entry])]

    def add(self, title: str, text: str, images: list[Path] = ()) -> None:
        self.entries.append((title, text, list(images)))
        self.write()

    def reserve(self) -> Slot:
        slot = Slot(self)
        self.entries.append(slot)
        return slot

    def write(self) -> None:
        md = ["# personae demo", ""]
        page = ["<!doctype html><meta charset='utf-8'><title>personae demo</title><h1>personae demo</h1>"]
        for t, body, imgs in self.sections:
            md += [f"## {t}", "", body, ""] + [f"![]({p.relative_to(self.out).as_posix()})" for p in imgs] + [""]
            page.append(f"<h2>{html.escape(t)}</h2><p>{html.escape(body)}</p>")
            page += [f"<img src='{p.relative_to(self.out).as_posix()}' style='min-width:128px;image-rendering:pixelated'>"
                     for p in imgs]
        write_text(self.out / "index.md", "\n".join(md))
        write_text(self.out / "index.html", "\n".join(page))


class Slot:
    """A place in the index's order that a later section fills (`add`, as on the index itself)."""

    def __init__(self, index: Index):
        self.index, self.sections = index, []

    def add(self, title: str, text: str, images: list[Path] = ()) -> None:
        self.sections.append((title, text, list(images)))
        self.index.write()


def run_demo(out_dir: str | Path, on_event: EventHandler = ignore, overlap: bool | None = None) -> Path:
    """The demo into `out_dir`; `overlap`: the drawing style in a worker process beside the other sections (None:
    when this process has two or more cores; demo/beside.py)."""
    with open_output(out_dir, DEMO, clear=True) as out:  # an earlier demo's files go first
        return _demo(out, on_event, overlap)


def _demo(out: Path, on_event: EventHandler, overlap: bool | None) -> Path:
    index = Index(out)

    # 0. the shapes-world model: 16 prompts read back exactly, then a star taught and measured (demo/world.py)
    from personae.demo.beside import Beside
    from personae.demo.world_style import world_style
    from personae.world.model import write_world_model

    on_event(Message("writing the shapes-world model"))
    world = write_world_model(out / "models/world")
    # the drawing style needs the world model alone: on two or more cores it runs beside the sections before it
    with Beside(world_style, (out, world), on_event, overlap, "world style") as style:
        _world_sections(out, world, index, style, on_event)
    _everyday(out, world, index, on_event)
    return out / "index.html"


def _world_sections(out: Path, world: Path, index: Index, style, on_event: EventHandler) -> None:
    from personae.demo.world import world_demo
    from personae.demo.world_board import world_board
    from personae.demo.world_clip_control import world_clip_control
    from personae.demo.world_compare import world_compare
    from personae.demo.world_control import world_control
    from personae.demo.world_img2img import world_img2img
    from personae.demo.world_motion import world_motion
    from personae.demo.world_travel import world_travel

    world_demo(out, world, index, on_event)
    # then a storyboard on it: shot tokens and a star character taught, every panel read back exactly
    world_board(out, world, index, on_event)
    # and the comparison: base vs the DreamBooth star vs the LoRA star, every image read back by the checker
    world_compare(out, world, index, on_event)
    # and the world ControlNet: held-out shapes put where a control map says, and the DreamBooth star too
    world_control(out, world, out / "world-bench/runs/dreambooth-star-s0/model", index, on_event)
    # and img2img: the strength curve, and one shape turned into another in place (init + silhouette + prompt)
    world_img2img(out, world, out / "models/world-controlnet", index, on_event)
    # and a drawing style: a LoRA on banded pictures whose captions end with a trigger phrase, with and without it
    slot = index.reserve()
    # and motion: the world motion adapter on held-out shapes and on the taught star, every frame read back
    world_motion(out, index, on_event)
    # and prompt travel with that adapter: a shape's prompt changing between two keyframes, every frame read back
    world_travel(out, out / "models/world-zero-snr", out / "models/world-motion", index, on_event)
    # and the world ControlNet steering a clip: a map per frame moves the shape where the prompt says "still"
    world_clip_control(out, out / "models/world-zero-snr", out / "models/world-motion", out / "models/world-controlnet",
                       index, on_event)
    style.place(slot)  # the worker is done by now: about 6.5 minutes on one core, these sections about 9


def _everyday(out: Path, world: Path, index: Index, on_event: EventHandler) -> None:
    # and the everyday flow on it: prepare, text to image, a long prompt, a LoRA and its files, --from-png
    world_flow(out, world, index, on_event)
    # and a kohya user's config and dataset_config, trained as they are
    from personae.demo.world_kohya import world_kohya

    world_kohya(out, world, index, on_event)

    # the random tiny model where the file formats are the point: its pictures are noise, so none are shown
    on_event(Message("writing the tiny model"))
    model = write_tiny_model(out / "models/tiny", seed=0, single_file=out / "models/tiny.safetensors")
    base = GenerateSettings(model=str(model), prompt="a photo of a cat", steps=4, seed=7, width=64, height=64)
    folder = run_generate(base, out / "single-file/from-folder", on_event)
    single = run_generate(base.model_copy(update={"model": str(out / "models/tiny.safetensors")}),
                          out / "single-file/from-file", on_event)
    index.add("Single-file checkpoint", f"A random model of SD-1.5's architecture, as a diffusers folder "
                                        f"({model.relative_to(out)}) and as one file in the original checkpoint layout "
                                        "(models/tiny.safetensors). It is the tiny model here because a single file "
                                        "carries CLIP's tokenizer only, not the world model's own. The same settings "
                                        "from the file give identical pixels to the folder: "
                                        f"{same_pixels(folder[0], single[0])} (a random model draws noise, so the "
                                        "pictures are not shown).")
