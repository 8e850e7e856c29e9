"""`inpaint`: ControlNet 1.1's inpaint model (control_v11p_sd15_inpaint) as A1111's extension feeds it with its
"inpaint_global_harmonious" preprocessor: the picture itself, with the part to redraw marked -1 in every channel
(the hint is colour / 255 outside the mask and -1 inside, the mask taken at 0.5, as the extension's hook makes it).

Its mask is the generation's inpainting mask (`--mask`, inverted with `--mask-invert`), read at the unit picture's
size and fitted to the picture as the unit's map is; with "Resize and Fill" the filled margin is redrawn too. A PNG
cannot hold -1, so the map exists only inside a generation: `personae detect inpaint` says so. The extension's
"inpaint_only" (which also keeps the unmasked latents) and "inpaint_only+lama" are not this one.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from personae.data.control.base import ControlType
from personae.errors import UserError


def _no_map(image: Image.Image, options: dict[str, float], where: str) -> Image.Image:
    raise UserError("The inpaint map is the picture with its masked part at -1, which a PNG cannot hold; it is made "
                    "inside a generation, from --mask.",
                    "Use it with personae generate --init-image PICTURE --mask MASK --control inpaint:PICTURE.")


def inpaint_hint(picture: Image.Image, mask: Image.Image) -> np.ndarray:
    """The hint (height, width, 3) in -1..1 of a fitted picture and its fitted mask (white: redrawn)."""
    colour = np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0
    masked = (np.asarray(mask.convert("L"), dtype=np.float32) / 255.0 > 0.5)[:, :, None]
    return np.where(masked, -1.0, colour).astype(np.float32)


INPAINT = ControlType("inpaint", _no_map, "the picture with --mask's part to redraw at -1 (ControlNet 1.1 inpaint; "
                      "needs --init-image and --mask)", a1111_module="inpaint_global_harmonious",
                      default_model="lllyasviel/control_v11p_sd15_inpaint", scaled=False, masked=True,
                      aliases=("inpaint",))
