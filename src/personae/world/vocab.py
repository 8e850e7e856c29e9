"""The shapes world's vocabulary: the words and numbers every part of the world shares (generator, checker,
tokenizer, bench settings). Plain constants, no numpy or torch, so settings can import them."""

from __future__ import annotations

from dataclasses import dataclass

SIDE = 32  # image side in pixels

COLOURS = {  # shape colours (RGB)
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
    "yellow": (240, 210, 40), "white": (245, 245, 245), "black": (20, 20, 20),
}
BACKGROUNDS = ("red", "green", "blue", "yellow")  # background colours, same RGB as the shape colour of that name

SIZES = {"close-up": 24.0, "medium shot": 16.0, "full shot": 10.0}  # the side of the shape's square box, pixels
MARGIN = 2.0  # pixels kept free between the shape's box and the image border (the border shows the background)

# How a picture is drawn. "flat": the shape filled with its colour, the world model's own pictures (pretraining never
# shows anything else). "banded": a hand's style for the model to learn (docs/world.md, "A drawing style"): the shape
# filled in horizontal bands of its colour BAND_HEIGHT px high with BAND_PERIOD - BAND_HEIGHT px of background between
# them, the bands fixed to the picture's rows (row y is a band row when (y - BAND_PHASE) % BAND_PERIOD < BAND_HEIGHT).
# 5 px bands with 3 px gaps, the period two latent rows of the world VAE (4x downsampling): the checker reads them back
# after the VAE's round trip (gaps of 2 px close up), and a LoRA learns them faster than 7 / 3 bands, whose period
# (2.5 latent rows) differs from row to row (docs/world.md, "A drawing style").
STYLES = ("flat", "banded")
BAND_PERIOD, BAND_HEIGHT, BAND_PHASE = 8, 5, 0

TRAINED = ("circle", "square", "triangle", "cross", "ring", "diamond")  # shapes seen in pretraining
HELD_OUT = ("star", "heart")  # never in pretraining: the subjects to teach
SHAPES = TRAINED + HELD_OUT

EXTRA_WORDS = ("a", "an", "of", "on", "background", "shape", "photo", "picture", "drawing", "in", "the", "style")

EVAL_PROMPTS = (  # a fixed set: every colour, background, trained shape and size at least twice
    "a green square on a yellow background, close-up",
    "a red circle on a blue background, close-up",
    "a blue triangle on a yellow background, medium shot",
    "a yellow cross on a red background, full shot",
    "a white ring on a green background, close-up",
    "a black diamond on a blue background, medium shot",
    "a red square on a green background, full shot",
    "a green circle on a red background, medium shot",
    "a yellow triangle on a blue background, close-up",
    "a blue ring on a yellow background, full shot",
    "a white cross on a blue background, medium shot",
    "a black circle on a yellow background, full shot",
    "a red diamond on a yellow background, close-up",
    "a blue square on a red background, medium shot",
    "a white triangle on a red background, full shot",
    "a green diamond on a blue background, full shot",
)


@dataclass(frozen=True)
class Attributes:
    """What an image shows. Position is the centre of the shape's box as a fraction of the side (0.5 = middle)."""

    background: str
    colour: str
    shape: str
    size: str
    position: tuple[float, float] = (0.5, 0.5)
