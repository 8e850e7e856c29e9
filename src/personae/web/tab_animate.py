"""The Animate tab: an AnimateDiff clip as `personae animate` makes it (jobs/animate.py), GIF and MP4 (and a WebP
or WebM when asked) into a new outputs/animate/NNNN, played in the page when done."""

from __future__ import annotations

from pathlib import Path

from personae.errors import UserError

CLIPS = ("clip.gif", "clip.mp4")  # always written, and shown in the page
ALSO = {"WebP": "clip.webp", "WebM": "clip.webm"}  # "Also save as"
DROPPED = (".png", ".gif", ".webp", ".mp4", ".webm")  # what fills the form (jobs/animate_png.py)


def animate_data(ws, data: dict, model: str, motion: str, loras, lora_weight: float, embeddings,
                 control: dict | None = None) -> dict:
    """The form's values completed with the pickers, every path checked to be in the workspace; `control`: the
    ControlNet unit (`control_unit`), if any."""
    from personae.web.tab_generate import model_path

    data["model"] = model_path(ws, model)
    data["motion_adapter"] = model_path(ws, motion)
    data["loras"] = [{"path": str(ws.path(p, what="LoRA", must_exist=True)), "weight": float(lora_weight)}
                     for p in loras or []]
    data["embeddings"] = [{"path": str(ws.path(p, what="embedding", must_exist=True))} for p in embeddings or []]
    data["controls"] = [control] if control else []
    return data


def control_unit(ws, kind: str | None, uploaded: str | None, folder: str | None, model: str | None, weight: float,
                 mode: str, options: str | None = None) -> dict | None:
    """The form's ControlNet unit for a clip (None for "none"): its frames from a folder in the workspace, else from
    the uploaded video or picture (already copied into the workspace); its ControlNet from the workspace or the
    hub, else the type's default; its preprocessor's options typed as on the Generate tab ("low=50, high=150")."""
    from personae.web.tab_generate import CONTROL_TYPES_NONE, unit_choices

    if not kind or kind == CONTROL_TYPES_NONE:
        return None
    if (folder or "").strip():
        image = str(ws.path(folder, what="folder of control frames", must_exist=True))
    elif uploaded:
        image = uploaded
    else:
        raise UserError(f"ControlNet {kind} needs its control frames.", 'Drop a GIF, WebP, MP4, WebM or picture on '
                                                                        '"Control frames", or name a folder of frames.')
    return {"type": kind, "image": image, "weight": float(weight), "control_mode": mode,
            **unit_choices(ws, model, options)}


def start_from(ws, uploaded: str | None, folder: str | None, last: str | None) -> dict:
    """The form's "Start from" accordion as settings: a folder of frames in the workspace, else the uploaded clip or
    picture (already copied into the workspace), and the uploaded last frame (for one picture only)."""
    data = {}
    if (folder or "").strip():
        data["init_image"] = str(ws.path(folder, what="folder of frames to start from", must_exist=True))
    elif uploaded:
        data["init_image"] = uploaded
    if last:
        if "init_image" not in data:
            raise UserError("A last frame is the picture a clip from one picture ends at.",
                            'Drop the picture it starts from on "Start from" too, or take the last frame away.')
        data["last_frame"] = last
    return data


def stored_elsewhere(data: dict, fields: set[str]) -> list[str]:
    """The settings a dropped clip or frame holds (not empty) that the form's fields do not take: its LoRAs,
    embeddings, ControlNet units, frames or picture to start from, styles and the like."""
    return sorted(k for k, v in data.items() if k not in fields and k not in ("model", "motion_adapter", "version")
                  and v not in (None, "", [], {}))


def animate_work(settings, out: Path, also: list[str] | None = None):
    """The job: `personae animate ... --out OUT/clip.gif --out OUT/clip.mp4` (and OUT/clip.webp, OUT/clip.webm for
    the formats `also` names); returns the GIF and the MP4."""
    from personae.jobs.animate import run_animate

    paths = [out / name for name in CLIPS] + [out / ALSO[name] for name in also or []]

    def work(on_event):
        run_animate(settings, paths, on_event=on_event)
        return [str(p) for p in paths[:len(CLIPS)]]
    return work


def show_clip(ws, folder: str | None) -> tuple[str, str | None, str | None]:
    """(status line, MP4, GIF) of an earlier clip folder (outputs/animate/NNNN), checked to be in the workspace."""
    if not folder:
        return "", None, None
    out = ws.path(folder, what="clip folder", must_exist=True)
    gif, mp4 = (out / name for name in CLIPS)
    return f"`{ws.relative(out)}`", str(mp4) if mp4.is_file() else None, str(gif) if gif.is_file() else None


def build_animate(ctx) -> None:
    from typing import get_args

    import gradio as gr

    from personae.config.addons import ControlRef
    from personae.config.animate import AnimateSettings
    from personae.config.base import parse_settings
    from personae.data.control import CONTROL_TYPES
    from personae.inference.samplers import SAMPLERS
    from personae.web.forms import SettingsForm
    from personae.web.jobfiles import ended_line, latest, shown
    from personae.web.tab_generate import (
        CONTROL_TYPES_NONE,
        LORA_SUFFIXES,
        OPTIONS_INFO,
        embedding_files,
        models,
        type_options,
        upload,
    )

    ws, jobs = ctx.workspace, ctx.jobs
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                model = gr.Dropdown(models(ws), value=(models(ws) or [None])[0], allow_custom_value=True,
                                    label="Model", info="a model under models/ in the workspace, or a hub id",
                                    elem_id="animate-model")
                motion = gr.Dropdown(ws.folders("models"), allow_custom_value=True, label="Motion adapter",
                                     info="an AnimateDiff motion adapter under models/, or a hub id",
                                     elem_id="animate-motion")
            prompt_form = SettingsForm(AnimateSettings, prefix="animate", groups=("prompt",))
            motion_form = SettingsForm(AnimateSettings, prefix="animate", groups=("motion",), skip=("motion_adapter",))
            with gr.Accordion("Sampling", open=False):
                form = SettingsForm(AnimateSettings, prefix="animate",
                                    groups=("sampling", "sampler parameters", "prompt encoding"),
                                    choices={"sampler": list(SAMPLERS)})
            with gr.Accordion("Start from a clip or a picture", open=False):
                init_file = gr.File(label="Start from: a GIF, WebP, MP4 or WebM, or one picture (img2gif)",
                                    type="filepath", elem_id="animate-init-file")
                init_folder = gr.Textbox(label="or a folder of frames in the workspace (one per frame, in name order)",
                                         placeholder="uploads/frames", elem_id="animate-init-folder")
                last_file = gr.File(label="Last frame (with one picture): the picture the clip ends at",
                                    type="filepath", elem_id="animate-last-file")
                start_form = SettingsForm(AnimateSettings, prefix="animate", names=("strength",),
                                          groups=("clip from a picture",), skip=("last_frame",))
            with gr.Accordion("FreeInit", open=False):
                freeinit_form = SettingsForm(AnimateSettings, prefix="animate", groups=("FreeInit",))
            with gr.Accordion("ControlNet", open=False):
                control_type = gr.Dropdown([CONTROL_TYPES_NONE, *CONTROL_TYPES], value=CONTROL_TYPES_NONE,
                                           label="Control type", elem_id="animate-control-type")
                control_file = gr.File(label="Control frames: a GIF, WebP, MP4, WebM or one picture", type="filepath",
                                       elem_id="animate-control-file")
                control_folder = gr.Textbox(label="or a folder of frames in the workspace (one per frame, in name "
                                                  "order)", placeholder="uploads/frames",
                                            elem_id="animate-control-folder")
                control_model = gr.Dropdown(ws.folders("models"), value=None, allow_custom_value=True,
                                            label="ControlNet", info="a ControlNet under models/, or a hub id; empty: "
                                                                     "the type's default", elem_id="animate-controlnet")
                control_options = gr.Textbox(label="Preprocessor options", placeholder="low=50, high=150",
                                             info=OPTIONS_INFO.format(options=type_options(CONTROL_TYPES)),
                                             elem_id="animate-control-options")
                control_weight = gr.Slider(0, 2, value=1.0, step=0.05, label="Control weight")
                control_mode = gr.Radio(list(get_args(ControlRef.model_fields["control_mode"].annotation)),
                                        value="Balanced", label="Control Mode", elem_id="animate-control-mode")
                control_form = SettingsForm(AnimateSettings, prefix="animate", names=("control_start", "control_end"))
            with gr.Accordion("LoRA and embeddings", open=False):
                loras = gr.Dropdown(ws.files(LORA_SUFFIXES), multiselect=True, label="LoRAs")
                lora_weight = gr.Slider(-2, 2, value=1.0, step=0.05, label="LoRA weight")
                embeddings = gr.Dropdown(embedding_files(ws), multiselect=True, label="Embeddings")
                refresh = gr.Button("Refresh lists", size="sm")
            with gr.Accordion("Runtime", open=False):
                runtime_form = SettingsForm(AnimateSettings, prefix="animate", groups=("runtime",))
            clip_drop = gr.File(label="Drop a clip or frame made by personae or A1111's AnimateDiff (GIF, WebP, MP4, "
                                      "WebM or a frame PNG) to fill the form", file_types=list(DROPPED),
                                elem_id="animate-drop")
        with gr.Column(scale=2):
            go = gr.Button("Animate", variant="primary", elem_id="animate-run")
            also = gr.CheckboxGroup(list(ALSO), label="Also save as", info="beside the GIF and the MP4",
                                    elem_id="animate-also")
            status = gr.Markdown(elem_id="animate-status")
            earlier = gr.Dropdown(ws.outputs("animate", CLIPS), value=None, label="Earlier clips",
                                  elem_id="animate-earlier")
            video = gr.Video(label="Clip (MP4)", interactive=False, loop=True, elem_id="animate-video")
            gif = gr.Image(label="Clip (GIF)", type="filepath", interactive=False, elem_id="animate-gif")
    forms = [prompt_form, motion_form, form, start_form, freeinit_form, control_form, runtime_form]
    raw = [c for f in forms for c in f.inputs]
    seen = gr.State(0)
    unit_inputs = [control_type, control_file, control_folder, control_model, control_weight, control_mode,
                   control_options]
    start_inputs = [init_file, init_folder, last_file]

    def submit(model_v, motion_v, loras_v, weight_v, emb_v, also_v, init_v, init_folder_v, last_v, kind_v, file_v,
               folder_v, net_v, cweight_v, mode_v, options_v, *values):
        data, at = {}, 0
        for f in forms:
            data.update(f.values(*values[at: at + len(f.inputs)]))
            at += len(f.inputs)
        try:
            wanted = kind_v and kind_v != CONTROL_TYPES_NONE and file_v and not (folder_v or "").strip()
            uploaded = upload(ctx, file_v, "uploads/control") if wanted else None  # copied only when it is used
            unit = control_unit(ws, kind_v, uploaded, folder_v, net_v, cweight_v, mode_v, options_v)
            data = animate_data(ws, data, model_v, motion_v, loras_v, weight_v, emb_v, unit)
            given = init_v and not (init_folder_v or "").strip()  # an upload is copied in only when it is used
            data.update(start_from(ws, upload(ctx, init_v, "uploads/init") if given else None, init_folder_v,
                                   upload(ctx, last_v, "uploads/init") if last_v else None))
            settings = parse_settings(AnimateSettings, data, "the Animate form")
            out = ws.new_folder("outputs/animate")
        except UserError as exc:
            return f"**Not started:** {exc}"
        task = jobs.submit("animate", settings.prompt[:60], animate_work(settings, out, also_v))
        return f"Queued as job {task.id}; the clip goes to `{ws.relative(out)}`."

    go.click(submit, [model, motion, loras, lora_weight, embeddings, also, *start_inputs, *unit_inputs, *raw],
             status)

    def from_clip(file):
        """The form filled from what a dropped clip or frame stores, as `personae animate --from-png` reads it."""
        from personae.jobs.animate_png import read_clip_settings

        skip = [gr.skip()] * (len(raw) + 2)
        if not file:
            return skip
        try:
            reading = read_clip_settings(file if isinstance(file, str) else file.name)
        except UserError as exc:
            gr.Warning(str(exc))
            return skip
        if reading.notes:  # what the file asks for that the form does not do, said as the command line says it
            gr.Warning("Not applied (personae does not do these, or they need your files): " + "; ".join(reading.notes))
        data = reading.settings
        unfilled = stored_elsewhere(data, {name for f in forms for name in f.components})
        if unfilled:  # a frame's JSON holds settings this form has no field for: said, not dropped silently
            gr.Warning("Not filled in (set them with the pickers and accordions): " + ", ".join(unfilled))
        updates = [gr.skip() if data.get(name) is None else data[name] for f in forms for name in f.components]
        return [*updates, data.get("model") or gr.skip(), data.get("motion_adapter") or gr.skip()]

    clip_drop.upload(from_clip, clip_drop, [*raw, model, motion])

    def tick(seen_v):
        task = latest(jobs, "animate", seen_v)
        if task is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), seen_v
        if task.status != "done":
            return ended_line(task), gr.skip(), gr.skip(), gr.skip(), task.id
        gif_v, mp4_v = task.result
        return (f"{ended_line(task)} `{ws.relative(Path(mp4_v).parent)}`", mp4_v, gif_v,
                gr.update(choices=ws.outputs("animate", CLIPS)), task.id)

    gr.Timer(1.0).tick(tick, seen, [status, video, gif, earlier, seen], show_progress="hidden",
                       concurrency_limit=None)
    earlier.change(lambda f: shown(show_clip, ws, f), earlier, [status, video, gif])
    refresh.click(lambda: (gr.update(choices=ws.files(LORA_SUFFIXES)), gr.update(choices=embedding_files(ws)),
                           gr.update(choices=models(ws)), gr.update(choices=ws.folders("models"))),
                  None, [loras, embeddings, model, motion])
