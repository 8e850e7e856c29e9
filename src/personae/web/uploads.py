"""The Generate form's uploads: files copied into the workspace, and the mask painters (A1111's inpaint tab, "Paint
the mask", and a ControlNet unit's "Paint the control mask").

A Gradio ImageMask holds the picture and the painted layers; what was painted (any alpha: a soft brush's edge too)
becomes a mask beside the picture, white where painted, as --mask and a unit's mask read white.
"""

from __future__ import annotations

from pathlib import Path

from personae.errors import UserError


def upload(ctx, file, under: str) -> str | None:
    """An uploaded file (a Gradio temp path) copied into a new workspace folder; its absolute path."""
    if not file:
        return None
    src = Path(file if isinstance(file, str) else file.name)
    return str(ctx.workspace.take_upload(src, src.name, ctx.workspace.new_folder(under)))


def painted_area(value):
    """The "Paint the mask" editor's value (a Gradio ImageMask's: its picture and layers) as a boolean array at the
    picture's size, True wherever any layer is painted (any alpha: a soft brush's edge too); None without a
    picture."""
    import numpy as np
    from PIL import Image

    if not value or not value.get("background"):
        return None
    size = Image.open(value["background"]).size
    painted = np.zeros(size[::-1], dtype=bool)
    for layer in value.get("layers") or []:
        alpha = Image.open(layer).convert("RGBA").getchannel("A")
        painted |= np.asarray(alpha if alpha.size == size else alpha.resize(size, Image.NEAREST)) > 0
    return painted


def painted_text(value) -> str:
    """What the editor holds, as a run will read it (shown under the editor)."""
    painted = painted_area(value)
    if painted is None:
        return ""
    height, width = painted.shape
    if not painted.any():
        return f"Nothing painted yet on the picture ({width}x{height})."
    return f"Painted: {painted.mean():.0%} of the picture ({width}x{height}) is redrawn."


def painted_mask(ctx, value, editor: str = "Paint the mask",
                 folders: tuple[str, str] = ("uploads/init", "uploads/mask"),
                 otherwise: str = 'drop the picture on "Init image" for img2img without a mask'
                 ) -> tuple[str, str] | None:
    """A1111's inpaint tab (and a ControlNet unit's painted mask): the picture in the editor copied into the
    workspace (img2img's init image, or the unit's picture), and what was painted on it as the mask beside it: white
    where painted (the part redrawn, as --mask reads white), black elsewhere. None when no picture is there."""
    import numpy as np
    from PIL import Image

    painted = painted_area(value)
    if painted is None:
        return None
    if not painted.any():
        raise UserError(f'The picture in "{editor}" has nothing painted on it.',
                        f"Paint over what should be redrawn, or {otherwise}.")
    init = upload(ctx, value["background"], folders[0])
    mask = ctx.workspace.new_folder(folders[1]) / "painted-mask.png"
    Image.fromarray(painted.astype(np.uint8) * 255, "L").save(mask)
    return init, str(mask)
