"""`inpaint`: ControlNet 1.1's inpaint model (control_v11p_sd15_inpaint) as A1111's extension feeds it with its
"inpaint_global_harmonious" preprocessor: the picture itself, with the part to redraw marked -1 in every channel
(the hint is colour / 255 outside the mask and -1 inside, the mask taken at 0.5, as the extension's hook makes it).

Its mask is the unit's own (the one painted on the unit's picture in A1111, a unit's `mask`, `--control-mask
inpaint=FILE`), else the generation's inpainting mask (`--mask`, inverted with `--mask-invert`), read at the unit
picture's size and fitted to the picture as the unit's map is; with "Resize and Fill" the filled margin is redrawn
too (so a unit without a mask outpaints). A PNG cannot hold -1, so the map exists only inside a generation:
`personae detect inpaint` says so.

`inpaint_only`: the same hint, and the extension's two restorations besides (inference/inpaint_only.py): at every
model call the prediction keeps the unit picture's latents outside the mask, and the finished picture keeps its
pixels there. In img2img inpainting (`--mask`) A1111 does both itself, so the extension, and personae, run it as
inpaint_global_harmonious. "inpaint_only+lama" (LaMa fills the mask first; no package ships its model) is not here.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from personae.data.control.base import ControlType
from personae.errors import UserError


def _no_map(name: str):
    """The detect of a type whose map exists only inside a generation: a refusal that names the type."""
    def refuse(image: Image.Image, options: dict[str, float], where: str) -> Image.Image:
        raise UserError(f"The {name} map is the picture with its masked part at -1, which a PNG cannot hold; it is "
                        "made inside a generation, from the unit's mask or --mask.",
                        f"Use it with personae generate --control {name}:PICTURE --control-mask {name}=MASK (or "
                        "--init-image PICTURE --mask MASK).")
    return refuse


def inpaint_hint(picture: Image.Image, mask: Image.Image) -> np.ndarray:
    """The hint (height, width, 3) in -1..1 of a fitted picture and its fitted mask (white: redrawn)."""
    colour = np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0
    masked = (np.asarray(mask.convert("L"), dtype=np.float32) / 255.0 > 0.5)[:, :, None]
    return np.where(masked, -1.0, colour).astype(np.float32)


INPAINT = ControlType("inpaint", _no_map("inpaint"), "the picture with its mask's part to redraw at -1 (ControlNet "
                      "1.1 inpaint; the mask: --control-mask inpaint=FILE, or --mask)",
                      a1111_module="inpaint_global_harmonious",
                      default_model="lllyasviel/control_v11p_sd15_inpaint", scaled=False, masked=True,
                      aliases=("inpaint",))
INPAINT_ONLY = ControlType("inpaint_only", _no_map("inpaint_only"), "inpaint's hint, and the picture kept outside "
                           "the mask at every step and in the result (A1111's inpaint_only)",
                           a1111_module="inpaint_only",
                           default_model="lllyasviel/control_v11p_sd15_inpaint", scaled=False, masked=True)
