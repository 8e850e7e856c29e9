"""Settings of `personae world render OUT` (world pictures with captions, for training sets), declared once: the
command's options and their `--help` come from these fields (cli/options.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator, model_validator

from personae.config.base import Strict, check_template
from personae.config.fields import setting
from personae.world.vocab import BACKGROUNDS, COLOURS, SHAPES, SIZES, STYLES, TRAINED

CAPTION_FIELDS = ("colour", "shape", "background", "shot")
# the folder each shot's pictures go to with `by: shot` (the names `personae prepare --folder-tokens` maps), and
# the other names a user may give a shot by
SHOT_FOLDERS = {"close-up": "close_up", "medium shot": "medium", "full shot": "full"}
SHOT_NAMES = {**{s: s for s in SIZES}, **{f: s for s, f in SHOT_FOLDERS.items()},
              "close up": "close-up", "closeup": "close-up", "medium": "medium shot", "full": "full shot",
              "cu": "close-up", "ms": "medium shot", "fs": "full shot"}


def _items(value) -> list[str]:
    """"a,b, c" as written on the command line, or a list."""
    if isinstance(value, str):
        value = value.split(",")
    return [" ".join(str(v).strip().lower().split()) for v in value if str(v).strip()]


def _known(values: list[str], known, what: str) -> list[str]:
    for v in values:
        if v not in known:
            raise ValueError(f'unknown {what} "{v}"; the world has: {", ".join(known)}')
    if not values:
        raise ValueError(f"no {what} given; the world has: {', '.join(known)}")
    return list(dict.fromkeys(values))


class WorldRender(Strict):
    version: int = setting(1, "settings version", cli=False)
    shapes: list[str] = setting(list(TRAINED), "shapes, comma-separated (star and heart are the ones the world "
                                               "model never saw)", text=True, metavar="SHAPE,...")
    colours: list[str] = setting(list(COLOURS), "shape colours, comma-separated", text=True, metavar="COLOUR,...")
    backgrounds: list[str] = setting(list(BACKGROUNDS), "background colours, comma-separated", text=True,
                                     metavar="COLOUR,...")
    shots: list[str] = setting(list(SIZES), "shot sizes, comma-separated: close-up (24 px), medium shot (16 px), "
                                            "full shot (10 px); close_up, medium, full work too", text=True,
                               metavar="SHOT,...")
    count: int = setting(0, "pictures to write: 0 = every combination once (a grid; a shape never on a background "
                            "of its own colour), N = N combinations drawn at random from those (none twice before "
                            "each came once)", ge=0, le=100_000)
    seed: int = setting(0, "the seed of the random draw and the positions; same seed, same files", ge=0, lt=2**32)
    jitter: bool = setting(True, "move each shape by a random offset within the picture (as in pretraining); "
                                 "--no-jitter centres them")
    caption: str = setting("a {colour} {shape} on a {background} background, {shot}",
                           "the caption written beside each picture (.txt); placeholders: {colour} {shape} "
                           "{background} {shot}")
    by: Literal["none", "shot", "shape", "colour", "background"] = setting(
        "none", "one subfolder per value; shot writes close_up/ medium/ full/, which `personae prepare "
                "--folder-tokens` maps to tokens")
    style: Literal[STYLES] = setting("flat", "how the pictures are drawn: flat (the world model's own pictures) or "
                                             "banded (the shape in horizontal bands of its colour, 5 px high with 3 "
                                             "px gaps: a drawing style the world model never saw)")
    exclude: list[str] = setting([], "combinations left out of the grid, comma-separated, each as COLOUR SHAPE on "
                                     "BACKGROUND (\"red circle on green\"), at every shot: held out of a training "
                                     "set so that a measure can ask for them unseen", text=True,
                                 metavar="COMBINATION,...")

    @field_validator("shapes", "colours", "backgrounds", "shots", mode="before")
    @classmethod
    def _split(cls, value):
        return _items(value)

    @field_validator("shapes", "colours", "backgrounds", "shots")
    @classmethod
    def _known_words(cls, value, info):
        if info.field_name == "shots":  # close_up / cu / medium as the shot's full name
            value = [SHOT_NAMES.get(v.replace("_", " "), SHOT_NAMES.get(v, v)) for v in value]
        known, what = {"shapes": (SHAPES, "shape"), "colours": (list(COLOURS), "colour"),
                       "backgrounds": (BACKGROUNDS, "background"), "shots": (list(SIZES), "shot")}[info.field_name]
        return _known(value, known, what)

    @field_validator("exclude", mode="before")
    @classmethod
    def _split_exclude(cls, value):
        return _items(value)

    @field_validator("exclude")
    @classmethod
    def _combinations(cls, value):
        return list(dict.fromkeys(combination_name(*parse_combination(v)) for v in value))

    @field_validator("caption")
    @classmethod
    def _caption(cls, value):
        return check_template(value, CAPTION_FIELDS)

    @model_validator(mode="after")
    def _something_to_draw(self):
        if not any(c != b for c in self.colours for b in self.backgrounds):
            raise ValueError(f"a {self.colours[0]} shape on a {self.colours[0]} background is invisible: give "
                             "another colour or background")
        grid = {(shape, colour, bg) for shape in self.shapes for colour in self.colours for bg in self.backgrounds
                if colour != bg}
        for item in self.exclude:
            if parse_combination(item) not in grid:
                raise ValueError(f'"{item}" is not among the combinations these shapes, colours and backgrounds '
                                 "make, so there is nothing to leave out: check its words")
        if grid <= {parse_combination(item) for item in self.exclude}:
            raise ValueError("--exclude leaves out every combination: nothing would be drawn")
        return self


def combination_name(shape: str, colour: str, background: str) -> str:
    return f"{colour} {shape} on {background}"


def parse_combination(text: str) -> tuple[str, str, str]:
    """"red circle on green" (or "a red circle on a green background") -> ("circle", "red", "green")."""
    words = [w for w in text.lower().split() if w not in ("a", "an", "background")]
    if len(words) != 4 or words[2] != "on":
        raise ValueError(f'"{text}" is not a combination: write it as COLOUR SHAPE on BACKGROUND, e.g. "red circle '
                         'on green"')
    colour, shape, _, background = words
    for word, known, what in ((colour, list(COLOURS), "colour"), (shape, SHAPES, "shape"),
                              (background, BACKGROUNDS, "background")):
        _known([word], known, what)
    return shape, colour, background
