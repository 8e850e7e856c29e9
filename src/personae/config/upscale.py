"""Settings of `personae upscale` (A1111's Extras tab: pictures through a model upscaler), declared once: the CLI
options and their `--help` are generated from these fields (cli/options.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from personae.config.base import Strict
from personae.config.fields import setting


class UpscaleSettings(Strict):
    version: int = setting(1, "settings file version", cli=False)
    upscaler: str = setting(description='"Upscaler 1": an ESRGAN-family file (4x-UltraSharp.pth, '
                                        "RealESRGAN_x4plus.pth; .pth needs --allow-pickle) or its name in "
                                        "--upscaler-dir (4x-UltraSharp, R-ESRGAN 4x+)",
                            metavar="FILE_OR_NAME", min_length=1)
    upscaler_dir: str | None = setting(None, "the folder where --upscaler names are looked up: A1111's models/ESRGAN; "
                                             "an A1111 webui folder works too", metavar="DIR")
    scale: float = setting(4.0, '"Scale by": the output is this many times the picture\'s size (the network runs '
                                "until it is at least that large, then Lanczos to the size, as A1111 does)",
                           ge=1.0, le=16.0)
    tile: int = setting(192, '"Tile size for ESRGAN upscalers": pictures go through the network in tiles this large '
                             "(0: whole, which needs far more memory)", ge=0, le=4096)
    tile_overlap: int = setting(8, '"Tile overlap for ESRGAN upscalers": pixels where neighbouring tiles are blended',
                                ge=0, le=512)
    device: Literal["auto", "cpu", "cuda", "mps"] = setting("auto", "where to run")
    allow_pickle: bool = setting(False, "read a .pth / .pt upscaler (a pickle: only its tensors are read, never code)")

    @model_validator(mode="after")
    def _overlap_inside_the_tile(self):
        if self.tile and self.tile_overlap >= self.tile:
            raise ValueError(f"tile_overlap ({self.tile_overlap}) must be smaller than tile ({self.tile})")
        return self
