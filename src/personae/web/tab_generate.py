"""The Generate tab: txt2img / img2img / ControlNet as `personae generate` runs them (jobs/generate.py)."""

from __future__ import annotations

import re
from pathlib import Path

from personae.errors import UserError
from personae.web.uploads import painted_area, painted_mask, painted_text, upload

HUB_ID = re.compile(r"^[\w.\-]+/[\w.\-]+(/[\w.\-]+)?$")
LORA_SUFFIXES = (".safetensors",)
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")


def embedding_files(ws) -> list[str]:
    """The embeddings to offer: tensor files under runs/ and models/, and pictures under models/ (A1111's embedding
    cards; as A1111 does, `*.preview.png` is a preview, not a card)."""
    cards = [p for p in ws.files((".png", ".webp"), under=("models",))
             if not p.lower().endswith((".preview.png", ".preview.webp"))]
    return sorted(ws.files(EMBEDDING_SUFFIXES) + cards)
CONTROL_TYPES_NONE = "none"
UPSCALER_FOLDERS = ("models/ESRGAN", "models/RealESRGAN")  # A1111's folders, inside the workspace


def upscalers(ws) -> list[str]:
    """--hires-upscaler's choices: latent, image, and the model upscalers under models/ESRGAN and models/RealESRGAN."""
    from personae.models.upscalers import UPSCALER_SUFFIXES

    return ["latent", "image", *ws.files(UPSCALER_SUFFIXES, under=UPSCALER_FOLDERS)]


def upscaler_path(ws, value: str) -> str:
    """The form's hires upscaler: latent, image, a workspace file, or an A1111 name (from a dropped PNG) of a file
    in the workspace's upscaler folders."""
    from personae.models.upscalers import upscaler_files

    if value in ("latent", "image"):
        return value
    path = ws.path(value, what="hires upscaler")
    if path.is_file():
        return str(path)
    named = {}
    for folder in UPSCALER_FOLDERS:
        if (ws.root / folder).is_dir():
            named.update({k: v for k, v in upscaler_files(ws.root / folder).items() if ws.contains(v)})
    if value in named:
        return str(named[value])
    raise UserError(f'The hires upscaler "{value}" is not in the workspace.',
                    f"Put its file under {' or '.join(UPSCALER_FOLDERS)} in the workspace ({ws.root}), or pick "
                    "latent or image.")


def png_upscaler(ws, value: str) -> tuple[str, str | None]:
    """A dropped PNG's hires upscaler for the form: kept when the workspace has it, else `image` (Lanczos) with the
    warning to show, as `generate --from-png` falls back when --upscaler-dir lacks it."""
    try:
        upscaler_path(ws, value)
        return value, None
    except UserError:
        return "image", (f'The PNG names the hires upscaler "{value}", which is not in the workspace: the form '
                         f"resizes with Lanczos (image) instead; put its file under {' or '.join(UPSCALER_FOLDERS)} "
                         "to use it.")


def models(ws) -> list[str]:
    """Base models in the workspace: diffusers folders and single-file checkpoints under models/."""
    base = ws.root / "models"
    found = []
    if base.is_dir():
        for p in sorted(base.iterdir()):
            if (p / "model_index.json").is_file() or (p.suffix == ".safetensors" and p.stat().st_size > 50 * 2**20):
                found.append(ws.relative(p))
    return found


def model_path(ws, text: str) -> str:
    """A model the page named: a workspace path, or a hub id (owner/name) when no such path exists."""
    text = (text or "").strip()
    if not text:
        raise UserError("No model is chosen.", "Pick a model (a folder under models/ in the workspace, or a hub id).")
    path = ws.path(text, what="model")
    if path.exists():
        return str(path)
    if HUB_ID.match(text):
        return text
    raise UserError(f"The model {text!r} is neither in the workspace nor a hub id.",
                    "Put the model under models/ in the workspace, or type its hub id (owner/name).")


def style_names(ws) -> list[str]:
    """The A1111 styles of the workspace's styles.csv (copy A1111's own there), or none."""
    from personae.data.styles import read_styles

    path = ws.root / "styles.csv"
    try:
        return sorted(read_styles(str(path))) if path.is_file() else []
    except UserError:
        return []


MASK_FIELDS = ("mask_blur", "mask_invert", "masked_content", "inpaint_area", "masked_padding", "soft_inpainting",
               "soft_schedule_bias", "soft_preservation", "soft_contrast_boost", "soft_mask_influence",
               "soft_difference_threshold", "soft_difference_contrast")


OPTIONS_INFO = "KEY=VALUE, comma-separated, A1111's Threshold A / B: {options}"


def type_options(types) -> str:
    """Each control type's options and defaults, for the options field's help."""
    return "; ".join(f"{name}: " + ", ".join(f"{k} {v:g}" for k, v in t.options.items())
                     for name, t in types.items() if t.options)


def options_text(options: dict) -> str:
    return ", ".join(f"{k}={float(v):g}" for k, v in options.items())


def in_workspace(ws, path: str | None) -> str | None:
    """A path a PNG names as the form names it: relative to the workspace when it lies in it (personae's own PNGs
    name their models by absolute paths; the form takes workspace paths), else as it is."""
    if path and Path(path).is_absolute() and Path(path).resolve().is_relative_to(ws.root):
        return ws.relative(Path(path))
    return path


def unit_choices(ws, model: str | None, options: str | None) -> dict:
    """The ControlNet and preprocessor options the accordion names, as a unit's fields: a ControlNet in the workspace
    or a hub id; options typed as "low=50, high=150"."""
    unit: dict = {}
    if (model or "").strip():
        unit["model"] = model_path(ws, model)
    from personae.data.control import option_values

    items = [item for item in (options or "").replace(";", ",").split(",") if item.strip()]
    parsed = option_values(items, "Preprocessor options:")
    if parsed:
        unit["options"] = parsed
    return unit


def settings_data(ctx, data: dict, model, loras, lora_weight, embeddings, init_image, control_type, control_image,
                  control_weight, styles=(), control_unit: dict | None = None, mask=None, paint=None,
                  control_mask=None, control_paint=None) -> dict:
    """The form's values completed with the pickers and uploads, every path checked to be in the workspace; the
    workspace's styles.csv for the chosen styles and its wildcards/ folder for Dynamic Prompts' __names__; `paint`:
    the "Paint the mask" editor's value (its picture and mask, in place of init_image and mask); `control_mask`: an
    inpaint unit's own mask; `control_paint`: the "Paint the control mask" editor's value (the unit's picture and
    its mask, in place of control_image and control_mask)."""
    ws = ctx.workspace
    if styles:
        data["styles"], data["styles_file"] = list(styles), str(ws.root / "styles.csv")
    if (ws.root / "wildcards").is_dir():
        data["wildcards_dir"] = str(ws.root / "wildcards")
    data["model"] = model_path(ws, model)
    data["loras"] = [{"path": str(ws.path(p, what="LoRA", must_exist=True)), "weight": float(lora_weight)}
                     for p in loras or []]
    data["embeddings"] = [{"path": str(ws.path(p, what="embedding", must_exist=True))} for p in embeddings or []]
    if data.get("hires_upscaler"):
        data["hires_upscaler"] = upscaler_path(ws, data["hires_upscaler"])
    if paint and paint.get("background") and (init_image or mask):
        raise UserError('"Paint the mask" holds a picture, and so does "' + ("Init image" if init_image else
                        "Inpainting mask") + '".', 'Use one: paint on the picture in "Paint the mask", or give the '
                        "init image and a mask file, and clear the other.")
    painted = painted_mask(ctx, paint)
    init = painted[0] if painted else upload(ctx, init_image, "uploads/init")
    if init:
        data["init_image"] = init
    # an uploaded mask is kept as the file is: a painted-over picture's transparency is the mask
    mask = painted[1] if painted else upload(ctx, mask, "uploads/mask")
    if mask:
        data["mask"] = mask
    else:  # the inpainting fields (always sent by the form, or filled from a dropped PNG) wait for a mask, as in A1111
        for name in MASK_FIELDS:
            data.pop(name, None)
    unit_painted = painted_area(control_paint) is not None
    if unit_painted and (control_image or control_mask):
        raise UserError('"Paint the control mask" holds a picture, and so does "' + ("Control image" if control_image
                        else "Control mask") + '".', 'Use one: paint on the unit\'s picture in "Paint the control '
                        'mask", or give its picture and mask file, and clear the other.')
    if unit_painted and (not control_type or control_type == CONTROL_TYPES_NONE):
        raise UserError('"Paint the control mask" holds a picture, and no control type is chosen.',
                        "Choose inpaint or inpaint_only as the control type, or clear the picture.")
    if control_type and control_type != CONTROL_TYPES_NONE:
        from personae.data.control import get_control_type

        field = "Paint the control mask" if unit_painted else "Control mask"
        if (control_mask or unit_painted) and not get_control_type(control_type).masked:  # said before any upload
            raise UserError(f'"{field}" is the mask of an inpaint unit; a {control_type} unit has none.',
                            f'Clear "{field}", or choose inpaint or inpaint_only.')
        painted_unit = painted_mask(ctx, control_paint, "Paint the control mask",
                                    ("uploads/control", "uploads/control"),
                                    'give the unit\'s picture as "Control image"') if unit_painted else None
        image = painted_unit[0] if painted_unit else upload(ctx, control_image, "uploads/control")
        if not image:
            raise UserError(f"ControlNet {control_type} needs a control image.", "Drop an image on \"Control image\".")
        data["controls"] = [{"type": control_type, "image": image, "weight": float(control_weight),
                             **(control_unit or {})}]  # A1111's unit settings: resize and control modes, resolution
        if painted_unit or control_mask:
            data["controls"][0]["mask"] = painted_unit[1] if painted_unit else upload(ctx, control_mask,
                                                                                     "uploads/control")
    return data


def build(ctx) -> None:
    from typing import get_args

    import gradio as gr

    from personae.config.addons import ControlRef
    from personae.config.base import parse_settings
    from personae.config.generate import GenerateSettings
    from personae.data.control import CONTROL_TYPES
    from personae.inference.detailer import MODELS as FACE_MODELS
    from personae.inference.samplers import SAMPLERS
    from personae.jobs.generate import png_not_applied, run_generate, settings_from_png
    from personae.jobs.png_controls import png_control_units
    from personae.web import ip_adapter_panel
    from personae.web.forms import SettingsForm

    ws, jobs = ctx.workspace, ctx.jobs
    with gr.Row():
        with gr.Column(scale=3):
            model = gr.Dropdown(models(ws), value=(models(ws) or [None])[0], allow_custom_value=True, label="Model",
                                info="a folder or .safetensors under models/ in the workspace, or a hub id",
                                elem_id="field-model")
            prompt_form = SettingsForm(GenerateSettings, groups=("prompt",), skip=("model", "allow_pickle"))
            styles = gr.Dropdown(style_names(ws), multiselect=True, label="Styles",
                                 info="A1111 styles from styles.csv in the workspace; {a|b} and __name__ (files in "
                                      "wildcards/) draw a prompt per image", elem_id="field-styles")
            form = SettingsForm(GenerateSettings,
                                groups=("sampling", "batch", "variation", "sampler parameters", "prompt encoding",
                                        "A1111 options", "hires fix"),
                                skip=("upscaler_dir",),
                                choices={"sampler": list(SAMPLERS), "hires_upscaler": upscalers(ws),
                                         "hires_sampler": ["", *SAMPLERS]})
            with gr.Accordion("LoRA and embeddings", open=False, elem_id="generate-addons") as addons:
                loras = gr.Dropdown(ws.files(LORA_SUFFIXES), multiselect=True, label="LoRAs",
                                    info="LoRA files in the workspace (runs/ and models/)", elem_id="field-loras")
                lora_weight = gr.Slider(-2, 2, value=1.0, step=0.05, label="LoRA weight")
                embeddings = gr.Dropdown(embedding_files(ws), multiselect=True, label="Embeddings",
                                         elem_id="field-embeddings")
                refresh = gr.Button("Refresh lists", size="sm")
            with gr.Accordion("img2img", open=False):
                init_image = gr.Image(type="filepath", label="Init image (img2img)", elem_id="field-init-image")
                mask_file = gr.File(label="Inpainting mask: white (or a painted-over picture's opaque part) is "
                                          "redrawn; the settings below it apply when one is given",
                                    file_types=["image"], elem_id="field-mask")
                paint = gr.ImageMask(type="filepath", label="Paint the mask (A1111's inpaint tab): drop the picture "
                                     "here and paint over what is redrawn; in place of the two above",
                                     brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"),
                                     elem_id="field-paint")
                paint_info = gr.Markdown(elem_id="paint-info")
                img_form = SettingsForm(GenerateSettings, names=("strength", "resize_mode", *MASK_FIELDS))
            with gr.Accordion("Dynamic Thresholding (CFG Scale Fix)", open=False):
                thresholding_form = SettingsForm(GenerateSettings, groups=("dynamic thresholding (CFG scale fix)",))
            with gr.Accordion("Face fix (ADetailer)", open=False):
                face_form = SettingsForm(GenerateSettings, groups=("face fix (ADetailer)",),
                                         choices={"ad_model": ["", *FACE_MODELS], "ad_sampler": ["", *SAMPLERS]})
            with gr.Accordion("ControlNet", open=False):
                control_type = gr.Dropdown([CONTROL_TYPES_NONE, *CONTROL_TYPES], value=CONTROL_TYPES_NONE,
                                           label="Control type", elem_id="field-control-type")
                control_image = gr.Image(type="filepath", label="Control image", elem_id="field-control-image")
                control_mask = gr.Image(type="filepath", label="Control mask (inpaint, inpaint_only: white is "
                                        "redrawn; without it, the inpainting mask)", elem_id="field-control-mask")
                control_paint = gr.ImageMask(type="filepath", label="Paint the control mask (inpaint, inpaint_only): "
                                             "drop the unit's picture here and paint over what is redrawn; in place "
                                             "of the two above", brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"),
                                             elem_id="field-control-paint")
                control_paint_info = gr.Markdown(elem_id="control-paint-info")
                control_model = gr.Dropdown(ws.folders("models"), value=None, allow_custom_value=True,
                                            label="ControlNet", info="a ControlNet under models/ (folder or file), or "
                                                                     "a hub id; empty: the type's default",
                                            elem_id="field-controlnet")
                control_options = gr.Textbox(label="Preprocessor options", placeholder="low=50, high=150",
                                             info=OPTIONS_INFO.format(options=type_options(CONTROL_TYPES)),
                                             elem_id="field-control-options")
                control_weight = gr.Slider(0, 2, value=1.0, step=0.05, label="Control weight")
                unit_fields = ControlRef.model_fields
                resize_mode = gr.Radio(list(get_args(unit_fields["resize_mode"].annotation)), value="Crop and Resize",
                                       label="Resize Mode", elem_id="field-control-resize")
                control_mode = gr.Radio(list(get_args(unit_fields["control_mode"].annotation)), value="Balanced",
                                        label="Control Mode", elem_id="field-control-mode")
                pixel_perfect = gr.Checkbox(False, label="Pixel Perfect", elem_id="field-pixel-perfect")
                low_vram = gr.Checkbox(False, label="Low VRAM", info="the ControlNet on the GPU only while it runs",
                                       elem_id="field-control-low-vram")
                hr_option = gr.Radio(list(get_args(unit_fields["hr_option"].annotation)), value="Both",
                                     label="Hires-Fix Option", info="with the hires fix: the passes this unit controls",
                                     elem_id="field-control-hr-option")
                processor_res = gr.Slider(64, 2048, value=512, step=8, label="Processor Res",
                                          info="the photo's short side when its map is made (unless Pixel Perfect)",
                                          elem_id="field-control-res")
                control_form = SettingsForm(GenerateSettings, names=("control_start", "control_end"))
                guidance_by = gr.Radio(list(get_args(unit_fields["guidance_by"].annotation)), value="steps",
                                       label="Guidance window counts", info="steps as A1111 does, or noise level as "
                                       "ComfyUI's start / end percent", elem_id="field-control-guidance-by")
            ip_inputs = ip_adapter_panel.build(ws)
            with gr.Accordion("Runtime", open=False):
                runtime_form = SettingsForm(GenerateSettings, groups=("runtime",))
            png = gr.File(label="Drop a PNG made by personae, A1111 or ComfyUI (or an A1111 JPEG / WebP) to fill the form",
                          file_types=[".png", ".jpg", ".jpeg", ".webp"], elem_id="png-drop")
        with gr.Column(scale=2):
            go = gr.Button("Generate", variant="primary", elem_id="generate-button")
            status = gr.Markdown(elem_id="generate-status")
            gallery = gr.Gallery(label="Results", columns=2, height=420, elem_id="generate-gallery")
    forms = [prompt_form, form, img_form, thresholding_form, face_form, control_form, runtime_form]
    raw_inputs = [c for f in forms for c in f.inputs]
    shown = gr.State(0)

    def values(raw):
        out, at = {}, 0
        for f in forms:
            out.update(f.values(*raw[at: at + len(f.inputs)]))
            at += len(f.inputs)
        return out

    def submit(model_v, loras_v, weight_v, emb_v, init_v, ctype_v, cimage_v, cweight_v, styles_v, resize_v, mode_v,
               perfect_v, low_v, res_v, hr_v, by_v, cmodel_v, coptions_v, mask_v, paint_v, cmask_v, cpaint_v, *rest):
        ip_values, raw = rest[:len(ip_inputs)], rest[len(ip_inputs):]
        try:
            unit = {"resize_mode": resize_v, "control_mode": mode_v, "pixel_perfect": bool(perfect_v),
                    "low_vram": bool(low_v), "processor_res": int(res_v), "hr_option": hr_v, "guidance_by": by_v,
                    **unit_choices(ws, cmodel_v, coptions_v)}
            data = settings_data(ctx, values(raw), model_v, loras_v, weight_v, emb_v, init_v, ctype_v, cimage_v,
                                 cweight_v, styles_v, unit, mask_v, paint_v, cmask_v, cpaint_v)
            data["ip_adapters"] = ip_adapter_panel.ip_unit(ctx, *ip_values)
            settings = parse_settings(GenerateSettings, data, "the Generate form")
            out = ws.new_folder("outputs/generate")
        except UserError as exc:
            return f"**Not started:** {exc}"
        task = jobs.submit("generate", settings.prompt[:60], lambda on_event: run_generate(settings, out, on_event))
        waiting = sum(1 for t in jobs.snapshot() if t.status in ("queued", "running") and t.id != task.id)
        where = f", {waiting} job(s) ahead of it" if waiting else ""
        return f"Queued as job {task.id}{where}; images go to `{ws.relative(out)}`."

    go.click(submit, [model, loras, lora_weight, embeddings, init_image, control_type, control_image, control_weight,
                      styles, resize_mode, control_mode, pixel_perfect, low_vram, processor_res, hr_option, guidance_by,
                      control_model, control_options, mask_file, paint, control_mask, control_paint,
                      *ip_inputs, *raw_inputs], status)

    def latest(seen: int):
        done = [t for t in jobs.snapshot() if t.kind == "generate" and t.status in ("done", "failed")]
        if not done or done[-1].id == seen:
            return gr.skip(), gr.skip(), seen
        task = done[-1]
        if task.status == "failed":
            return gr.skip(), f"**Job {task.id} failed:** {task.error}", task.id
        return [str(p) for p in task.result or []], f"Job {task.id} done: {len(task.result or [])} image(s).", task.id

    gr.Timer(1.0).tick(latest, shown, [gallery, status, shown], show_progress="hidden")

    unit_outputs = [control_type, control_weight, resize_mode, control_mode, pixel_perfect, low_vram, processor_res,
                    hr_option, guidance_by, control_model, control_options]

    def unit_updates(path, data: dict) -> list:
        """The ControlNet accordion from the PNG's first unit (personae's own, or A1111's or ComfyUI's without its
        picture); its guidance window is the form's (`data` takes it where the PNG has no other)."""
        units = data.get("controls") or png_control_units(path)
        unit = units[0] if units and isinstance(units[0], dict) else {}
        if unit.get("type") not in CONTROL_TYPES:
            return [gr.skip()] * len(unit_outputs)
        for key, own in (("control_start", "guidance_start"), ("control_end", "guidance_end")):
            if data.get(key) is None and unit.get(own) is not None:
                data[key] = unit[own]
        return [unit["type"], *(gr.skip() if unit.get(k) is None else unit[k] for k in (
            "weight", "resize_mode", "control_mode", "pixel_perfect", "low_vram", "processor_res", "hr_option",
            "guidance_by")), in_workspace(ws, unit.get("model")) or gr.skip(), options_text(unit.get("options") or {})]

    ip_outputs = ip_inputs[1:]  # all but the picture, which a PNG does not hold

    def from_png(file, model_v):
        nothing = [gr.skip()] * (len(raw_inputs) + 1 + len(unit_outputs) + len(ip_outputs))
        if not file:
            return nothing
        path = file if isinstance(file, str) else file.name
        try:
            data = settings_from_png(path)
            units = unit_updates(path, data) + ip_adapter_panel.png_updates(ws, path, data)
        except UserError as exc:
            gr.Warning(str(exc))
            return nothing
        try:  # what the picture asks for that the form does not do, said as the command line says it
            missed = png_not_applied(path, GenerateSettings(**{"model": model_v or "-", **data}))
        except (UserError, ValueError):
            missed = []  # settings the form cannot hold are said when the job is submitted
        if missed:
            gr.Warning("Not applied (personae does not do these, or they need your files): " + "; ".join(missed))
        if data.get("hires_upscaler"):
            data["hires_upscaler"], missing = png_upscaler(ws, data["hires_upscaler"])
            if missing:
                gr.Warning(missing)
        updates = []
        for f in forms:
            for name in f.components:
                value = data.get(name)
                updates.append(gr.skip() if value is None else value)
        shown_model = in_workspace(ws, data.get("model"))
        return [*updates, shown_model if shown_model else gr.skip(), *units]

    png.upload(from_png, [png, model], [*raw_inputs, model, *unit_outputs, *ip_outputs])

    # a dropped picture fires change (still empty) and then upload, whose answers may cross: an empty value says
    # nothing, and clearing the editor clears the text
    for editor, info in ((paint, paint_info), (control_paint, control_paint_info)):
        for event in (editor.upload, editor.change):
            event(lambda value: painted_text(value) or gr.skip(), editor, info, show_progress="hidden")
        editor.clear(lambda: "", None, info, show_progress="hidden")
    refresh.click(lambda: (gr.update(choices=ws.files(LORA_SUFFIXES)), gr.update(choices=embedding_files(ws)),
                           gr.update(choices=models(ws)), gr.update(choices=upscalers(ws)),
                           gr.update(choices=style_names(ws))), None,
                  [loras, embeddings, model, form.components["hires_upscaler"], styles])
    ctx.generate_loras, ctx.generate_addons = loras, addons
