"""What every control type provides, and helpers they share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image

from personae.errors import UserError, did_you_mean

# (RGB photo, options, where) -> control map; a seeded type's also takes the numpy seed last
Detect = Callable[..., Image.Image]


@dataclass(frozen=True)
class ControlType:
    name: str  # what users type: --control NAME:IMAGE
    detect: Detect
    description: str  # one line for --help
    a1111_module: str  # A1111's preprocessor name, written to the infotext ("Module: canny")
    default_model: str | None  # the public ControlNet (hub id) trained on these maps; None: the user must name one
    options: dict[str, float] = field(default_factory=dict)  # option -> default (e.g. canny's thresholds)
    seeded: bool = False  # the map is random: drawn from the picture's seed (data/control/shuffle.py)
    padded: bool = True  # A1111 pads the scaled photo to a multiple of 64 before this preprocessor runs
    scaled: bool = True  # A1111 scales the photo to "Processor Res" first (else the preprocessor takes it as it is)
    aliases: tuple[str, ...] = ()  # other "Module" names A1111 PNGs use for it (the extension's older names)
    masked: bool = False  # the map is the picture, its --mask part marked at generation (data/control/inpaint.py)

    def check_options(self, options: dict[str, float]) -> dict[str, float]:
        """The type's defaults updated with `options`; an unknown option names the valid ones."""
        for key in options:
            if key not in self.options:
                valid = ", ".join(self.options) or "none"
                raise UserError(f'Control type "{self.name}" has no option "{key}".{did_you_mean(key, self.options)}',
                                f"Its options: {valid}.")
        return {**self.options, **options}


def line_width(image: Image.Image, per: int = 256) -> int:
    """Line thickness that looks the same at any resolution (1 px per `per` px of the short side)."""
    return max(1, round(min(image.size) / per))
