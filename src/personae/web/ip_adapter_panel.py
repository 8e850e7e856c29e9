"""The Generate tab's IP-Adapter accordion: one unit (A1111's ControlNet unit with an ip-adapter model), its picture,
weight, adapter file, image encoder and guidance window; a dropped PNG's first IP-Adapter unit fills it but for the
picture, which a PNG does not hold."""

from __future__ import annotations

from pathlib import Path

from personae.errors import UserError
from personae.web.uploads import upload

ADAPTER_SUFFIXES = (".safetensors", ".bin")


def adapter_files(ws) -> list[str]:
    """IP-Adapter files in the workspace: files under models/ whose names start with "ip-adapter"."""
    base = ws.root / "models"
    if not base.is_dir():
        return []
    return sorted(ws.relative(p) for p in base.rglob("ip-adapter*") if p.is_file() and p.suffix in ADAPTER_SUFFIXES)


def encoder_choices(ws) -> list[str]:
    """CLIP image encoders in the workspace: folders under models/ holding a CLIPVision config."""
    base = ws.root / "models"
    if not base.is_dir():
        return []
    return sorted(ws.relative(p.parent) for p in base.rglob("config.json") if "CLIPVision" in p.read_text()[:4000])


def _file_or_hub(ws, text: str, what: str) -> str:
    path = ws.path(text, what=what)
    if path.exists():
        return str(path)
    if "/" in text and not text.startswith((".", "/", "~")) and not Path(text).is_absolute():
        return text  # a hub file or folder (owner/name/...)
    raise UserError(f"The {what} {text!r} is neither in the workspace nor a hub id.",
                    "Put it under models/ in the workspace, or type its hub path (owner/name/...).")


def ip_unit(ctx, picture, weight: float, model: str | None, encoder: str | None, start: float,
            end: float) -> list[dict]:
    """The accordion's unit as the run's `ip_adapters` (none without a picture); the picture copied into the
    workspace, the files workspace paths or hub ids."""
    if not picture:
        return []
    unit = {"image": upload(ctx, picture, "uploads/ip-adapter"), "weight": float(weight),
            "guidance_start": float(start), "guidance_end": float(end)}
    for key, value, what in (("model", model, "IP-Adapter"), ("image_encoder", encoder, "image encoder")):
        if (value or "").strip():
            unit[key] = _file_or_hub(ctx.workspace, value.strip(), what)
    return [unit]


def build(ws):
    """The accordion's components: picture, weight, adapter, encoder, start, end."""
    import gradio as gr

    from personae.config.ip_adapter import DEFAULT_IMAGE_ENCODER, DEFAULT_IP_ADAPTER

    with gr.Accordion("IP-Adapter", open=False):
        picture = gr.Image(type="filepath", label="IP-Adapter picture (a face, a subject or a style to take; none: "
                                                  "off)", elem_id="field-ip-adapter-image")
        weight = gr.Slider(0, 2, value=1.0, step=0.05, label="Weight", info="0.5-0.7 leaves the prompt room",
                           elem_id="field-ip-adapter-weight")
        model = gr.Dropdown(adapter_files(ws), value=None, allow_custom_value=True, label="IP-Adapter",
                            info="an ip-adapter*.safetensors under models/, or a hub file; empty: "
                                 f"{DEFAULT_IP_ADAPTER}",
                            elem_id="field-ip-adapter-model")
        encoder = gr.Dropdown(encoder_choices(ws), value=None, allow_custom_value=True, label="Image encoder",
                              info="the CLIP vision folder (or its model.safetensors) under models/, or a hub folder; "
                                   f"empty: {DEFAULT_IMAGE_ENCODER}", elem_id="field-ip-adapter-encoder")
        start = gr.Slider(0, 1, value=0.0, step=0.01, label="Guidance Start", elem_id="field-ip-adapter-start")
        end = gr.Slider(0, 1, value=1.0, step=0.01, label="Guidance End", elem_id="field-ip-adapter-end")
    return [picture, weight, model, encoder, start, end]


def png_updates(ws, path, data: dict) -> list:
    """The accordion's fields but the picture from a dropped PNG's first IP-Adapter unit (personae's own, or an A1111
    PNG's), as Gradio updates for [weight, model, encoder, start, end]."""
    import gradio as gr

    from personae.jobs.png_controls import png_ip_units

    units = data.get("ip_adapters") or png_ip_units(path)
    unit = units[0] if units and isinstance(units[0], dict) else {}
    shown = {key: unit.get(key) for key in ("weight", "model", "image_encoder", "guidance_start", "guidance_end")}
    for key in ("model", "image_encoder"):
        if shown[key] and Path(shown[key]).is_absolute():
            inside = Path(shown[key]).is_relative_to(ws.root)
            shown[key] = ws.relative(Path(shown[key])) if inside else None  # a path outside is not offered
    return [gr.skip() if value is None else value for value in shown.values()]
