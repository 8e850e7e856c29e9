"""The Extras and Merge tabs (A1111's Extras and Checkpoint Merger): pictures through a model upscaler as `personae
upscale` does (jobs/upscale.py) into a new outputs/upscale/NNNN, and models merged, LoRAs and a VAE baked in, as
`personae merge` does (jobs/merge.py) into models/ of the workspace, where the Generate tab finds the result; and a
LoRA extracted from a fine-tuned model as `personae extract` does (jobs/extract.py) into models/Lora."""

from __future__ import annotations

from pathlib import Path

from personae.errors import UserError

METHODS = ("weighted-sum", "add-difference", "none")


def plain_name(name: str | None, what: str, fix: str) -> str:
    """A result's name typed in a form: one plain file or folder name, no path."""
    name = (name or "").strip()
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise UserError(f"The {what} name {name!r} is not a plain name.", fix)
    return name


def upscale_request(ctx, uploads, folder: str | None, upscaler: str, values: dict):
    """(pictures, UpscaleSettings) for the Extras form: uploads copied into the workspace, or a picture or folder in
    it; the upscaler a workspace file, or an A1111 name of one under models/ESRGAN or models/RealESRGAN."""
    from personae.config.base import parse_settings
    from personae.config.upscale import UpscaleSettings
    from personae.web.tab_generate import upload, upscaler_path

    ws = ctx.workspace
    sources = [upload(ctx, f, "uploads/extras") for f in uploads or []]
    if folder and folder.strip():
        sources.append(str(ws.path(folder, what="pictures", must_exist=True)))
    if not sources:
        raise UserError("No pictures are given.", "Drop pictures on the page, or name a picture or folder in the "
                                                  "workspace.")
    if not upscaler or upscaler in ("latent", "image"):
        raise UserError("No upscaler is chosen.", "Pick an ESRGAN-family file under models/ESRGAN or "
                                                  "models/RealESRGAN in the workspace.")
    data = {**values, "upscaler": upscaler_path(ws, upscaler)}  # a .pth needs the form's allow-pickle box ticked
    settings = parse_settings(UpscaleSettings, data, "the Extras form")
    return sources, settings


def merge_request(ws, models: list[str | None], loras, lora_weight: float, vae: str | None, name: str,
                  values: dict):
    """(models, output path, MergeSettings) for the Merge form: the models in the workspace (or hub ids), the
    result a new file or folder under models/ (a name ending in .safetensors is one file)."""
    from personae.config.base import parse_settings
    from personae.config.merge import MergeSettings
    from personae.jobs.merge import LABELS, NEEDS
    from personae.web.tab_generate import model_path

    method = values.get("method", MergeSettings.model_fields["method"].default)
    needs = NEEDS.get(method, 1)
    missing = [LABELS[i] for i, m in enumerate(models[:needs]) if not (m and m.strip())]
    if missing:
        raise UserError(f"{method} needs model {' and '.join(missing)}.", "Pick it from the models in the workspace.")
    chosen = [model_path(ws, m) for m in models[:needs]]  # the ones the method uses; the other boxes are ignored
    name = plain_name(name, "merged model's", "Type a name such as mix or mix.safetensors; it goes under models/ in "
                                              "the workspace.")
    out = ws.path(f"models/{name}", what="merged model")
    if out.exists():
        raise UserError(f"models/{name} already exists in the workspace.", "Type another name.")
    data = {**values, "loras": [{"path": str(ws.path(p, what="LoRA", must_exist=True)), "weight": float(lora_weight)}
                                for p in loras or []]}
    if vae and vae.strip():
        data["vae"] = str(ws.path(vae, what="VAE", must_exist=True))
    return chosen, out, parse_settings(MergeSettings, data, "the Merge form")


def extract_request(ws, tuned: str | None, base: str | None, name: str, values: dict):
    """(tuned model, output file, ExtractSettings) for the Merge tab's LoRA extraction: both models in the workspace
    (or hub ids), the LoRA a new file under models/Lora (A1111's LoRA folder)."""
    from personae.config.base import parse_settings
    from personae.config.extract import ExtractSettings
    from personae.web.tab_generate import model_path

    if not (tuned and tuned.strip()) or not (base and base.strip()):
        raise UserError("Extracting a LoRA needs the fine-tuned model and the model it was trained from.",
                        "Pick both from the models in the workspace.")
    name = plain_name(name, "LoRA's", "Type a name such as my-character; it goes to models/Lora/NAME.safetensors in "
                                      "the workspace.").removesuffix(".safetensors")
    out = ws.path(f"models/Lora/{name}.safetensors", what="extracted LoRA")
    if out.exists():
        raise UserError(f"models/Lora/{name}.safetensors already exists in the workspace.", "Type another name.")
    settings = parse_settings(ExtractSettings, {**values, "base": model_path(ws, base)}, "the Extract form")
    return model_path(ws, tuned), out, settings


def build_extras(ctx) -> None:
    import gradio as gr

    from personae.config.upscale import UpscaleSettings
    from personae.jobs.upscale import run_upscale
    from personae.web.forms import SettingsForm
    from personae.web.jobfiles import ended_line, latest
    from personae.web.tab_generate import upscalers

    ws, jobs = ctx.workspace, ctx.jobs
    with gr.Row():
        with gr.Column(scale=2):
            pictures = gr.File(file_count="multiple", file_types=["image"], label="Pictures", elem_id="extras-pictures")
            folder = gr.Textbox(label="Or a picture or folder in the workspace", elem_id="extras-folder",
                                placeholder="outputs/generate/0001")
            upscaler = gr.Dropdown(upscalers(ws)[2:], allow_custom_value=True, label="Upscaler",
                                   info="ESRGAN / Real-ESRGAN files under models/ESRGAN or models/RealESRGAN",
                                   elem_id="extras-upscaler")
            form = SettingsForm(UpscaleSettings, prefix="extras",
                                names=("scale", "tile", "tile_overlap", "device", "allow_pickle"))
            go = gr.Button("Upscale", variant="primary", elem_id="extras-run")
            status = gr.Markdown(elem_id="extras-status")
        with gr.Column(scale=3):
            gallery = gr.Gallery(label="Upscaled", columns=2, height=480, elem_id="extras-gallery")
    seen = gr.State(0)

    def submit(files, folder_v, upscaler_v, *raw):
        try:
            sources, settings = upscale_request(ctx, files, folder_v, upscaler_v, form.values(*raw))
            out = ws.new_folder("outputs/upscale")
        except UserError as exc:
            return f"**Not started:** {exc}"
        task = jobs.submit("upscale", f"{len(sources)} source(s)",
                           lambda on_event: [str(p) for p in run_upscale(sources, out, settings, on_event)])
        return f"Queued as job {task.id}; the pictures go to `{ws.relative(out)}`."

    go.click(submit, [pictures, folder, upscaler, *form.inputs], status)

    def tick(seen_v):
        task = latest(jobs, "upscale", seen_v)
        if task is None:
            return gr.skip(), gr.skip(), seen_v
        if task.status != "done":
            return ended_line(task), gr.skip(), task.id
        return ended_line(task), task.result, task.id

    gr.Timer(1.0).tick(tick, seen, [status, gallery, seen], show_progress="hidden", concurrency_limit=None)


def build_merge(ctx) -> None:
    import gradio as gr

    from personae.config.extract import ExtractSettings
    from personae.config.merge import MergeSettings
    from personae.jobs.extract import run_extract
    from personae.jobs.merge import run_merge
    from personae.web.forms import SettingsForm
    from personae.web.jobfiles import ended_line, latest
    from personae.web.tab_generate import LORA_SUFFIXES, models

    ws, jobs = ctx.workspace, ctx.jobs
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                first = (models(ws) or [None])[0]
                pick = [gr.Dropdown(models(ws), value=value, allow_custom_value=True, label=label,
                                    elem_id=f"merge-{key}")
                        for key, label, value in (("a", "Primary model (A)", first), ("b", "Secondary model (B)", None),
                                                  ("c", "Tertiary model (C)", None))]
            form = SettingsForm(MergeSettings, prefix="merge", names=("method", "multiplier", "half", "allow_pickle"))
            with gr.Accordion("Bake in LoRAs and a VAE", open=False):
                loras = gr.Dropdown(ws.files(LORA_SUFFIXES), multiselect=True, label="LoRAs", elem_id="merge-loras")
                lora_weight = gr.Slider(-2, 2, value=1.0, step=0.05, label="LoRA weight")
                vae = gr.Dropdown(ws.files((".safetensors",), under=("models",)), allow_custom_value=True,
                                  label="Bake in VAE", elem_id="merge-vae")
            name = gr.Textbox(label="Name of the result under models/ (.safetensors: one file for A1111 / ComfyUI; "
                                    "else a diffusers folder)", elem_id="merge-name", placeholder="mix.safetensors")
            go = gr.Button("Merge", variant="primary", elem_id="merge-run")
            with gr.Accordion("Or extract a LoRA from a fine-tuned model (kohya's extract_lora_from_models)",
                              open=False):
                with gr.Row():
                    tuned = gr.Dropdown(models(ws), allow_custom_value=True, label="Fine-tuned model",
                                        elem_id="extract-tuned")
                    base = gr.Dropdown(models(ws), value=first, allow_custom_value=True, label="Its base model",
                                       elem_id="extract-base")
                extract_form = SettingsForm(ExtractSettings, prefix="extract", names=(
                    "rank", "conv_rank", "clamp_quantile", "min_diff", "save_precision", "allow_pickle"))
                lora_name = gr.Textbox(label="Name of the LoRA (models/Lora/NAME.safetensors)",
                                       elem_id="extract-name", placeholder="my-character")
                extract = gr.Button("Extract", elem_id="extract-run")
        with gr.Column(scale=2):
            status = gr.Markdown(elem_id="merge-status")
    seen = gr.State(0)

    def submit_extract(tuned_v, base_v, name_v, *raw):
        try:
            model, out, settings = extract_request(ws, tuned_v, base_v, name_v, extract_form.values(*raw))
        except UserError as exc:
            return f"**Not started:** {exc}"
        task = jobs.submit("merge", f"models/Lora/{out.name}",
                           lambda on_event: str(run_extract(model, out, settings, on_event=on_event)))
        return f"Queued as job {task.id}; the LoRA goes to `models/Lora/{out.name}`."

    extract.click(submit_extract, [tuned, base, lora_name, *extract_form.inputs], status)

    def submit(a, b, c, loras_v, weight_v, vae_v, name_v, *raw):
        try:
            chosen, out, settings = merge_request(ws, [a, b, c], loras_v, weight_v, vae_v, name_v, form.values(*raw))
        except UserError as exc:
            return f"**Not started:** {exc}"
        task = jobs.submit("merge", f"models/{out.name}",
                           lambda on_event: str(run_merge(chosen, out, settings, on_event=on_event)))
        return f"Queued as job {task.id}; the model goes to `models/{out.name}`."

    go.click(submit, [*pick, loras, lora_weight, vae, name, *form.inputs], status)

    def tick(seen_v):
        task = latest(jobs, "merge", seen_v)
        if task is None:
            return gr.skip(), seen_v
        return ended_line(task) + (f" `{ws.relative(Path(task.result))}`" if task.status == "done" else ""), task.id

    gr.Timer(1.0).tick(tick, seen, [status, seen], show_progress="hidden", concurrency_limit=None)
