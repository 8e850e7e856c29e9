"""The mask of a ComfyUI inpainting graph (SetLatentNoiseMask, VAEEncodeForInpaint): where it is read from and how,
as personae's inpainting settings (media/comfy_graph.py walks the graph)."""

from __future__ import annotations


def mask_settings(graph, node_id: str, inputs: dict, reading) -> dict:
    """The inpainting settings of a mask input: the file it is read from (the user's to pass as --mask), read as
    ComfyUI reads it. ComfyUI's mask of a picture is 1 - its alpha (the transparent part redrawn); personae reads a
    picture's alpha the other way (a mask painted over the photo), so that is "Inpaint not masked"."""
    mask_id, output = graph.link(node_id, inputs, "mask")
    kind, load = graph.node(mask_id, ("LoadImage", "LoadImageMask"))
    if kind == "LoadImage" and output != 1:
        raise graph.refuse(f"gives {graph.name(node_id)} a mask from output {output} of {graph.name(mask_id)}, "
                           "which is not its mask.")
    reading.mask = str(graph.value(mask_id, load, "image", str))
    channel = "alpha" if kind == "LoadImage" else graph.value(mask_id, load, "channel", str)
    if channel not in ("alpha", "red", "green", "blue"):
        raise graph.refuse(f"gives {graph.name(mask_id)} the channel {channel}; ComfyUI reads alpha, red, green or "
                           "blue.")
    if channel == "alpha":
        reading.notes.append(f"the mask {graph.name(mask_id)} reads: ComfyUI redraws by 1 - alpha (partly "
                             "transparent pixels partly), personae where the picture is transparent (alpha 128 or "
                             "less)")
    else:
        reading.notes.append(f"the mask {graph.name(mask_id)} reads: ComfyUI its {channel} channel, personae its grey "
                             "levels (the same for a black-and-white mask)")
    return {"mask_invert": channel == "alpha", "mask_blur": 0}
