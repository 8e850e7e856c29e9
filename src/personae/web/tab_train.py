"""The Train tab: a job from a form (or a pasted job YAML, or a pasted kohya config), run as `personae train` runs
it, watched live."""

from __future__ import annotations

from personae.errors import UserError


def job_data(ctx, base: dict, model: str, method: str, dataset: str, run_name: str, token: str, init_word: str,
             pasted: str) -> dict:
    """The job as a dict: the pasted YAML if any, else the form; paths made absolute inside the workspace."""
    from personae.config.methods import METHODS
    from personae.jobs.kohya_job import flat_text, kohya_settings, looks_like_kohya
    from personae.web.jobfiles import typed_yaml
    from personae.web.tab_generate import model_path

    ws = ctx.workspace
    if pasted and pasted.strip() and looks_like_kohya(pasted):  # kohya's config_file, pasted: its run under runs/
        flat = flat_text(pasted, "The pasted kohya config")
        for key in ("dataset_config", "reg_data_dir"):  # read while importing: only inside the workspace
            if flat.get(key):
                ws.path(str(flat[key]), what=f"{key}", must_exist=True)
        data, _ = kohya_settings(flat, ws.root, "The pasted kohya config")
        data["output"] = f"runs/{data.get('name') or 'kohya'}"
        data["base_model"] = str(data["base_model"])
    elif pasted and pasted.strip():
        data = typed_yaml(pasted, "The pasted job", "clear the box to use the form")
    else:
        data = dict(base)
        data["method"] = method
        data["base_model"] = model
        data["data"] = {**base.get("data", {}), "path": dataset}
        data["output"] = f"runs/{(run_name or '').strip()}" if (run_name or "").strip() else ""
        section = METHODS[method].tokens_section if method in METHODS else None  # the methods that learn a token
        if section:
            if not token.strip():
                raise UserError(f"{method} learns a new token, and none is given.", "Type one, e.g. <sks>.")
            data[section] = {**data.get(section, {}), "tokens": [{"token": token.strip(),
                                                               "init_word": init_word.strip() or "person"}]}
    for key in ("base_model", "output"):
        if not data.get(key):
            raise UserError(f"The job has no {key}.", "Fill it in (the run name for output).")
    data["base_model"] = model_path(ws, str(data["base_model"]))
    out = ws.path(str(data["output"]), what="run folder")
    if ws.root / "runs" not in [out, *out.parents]:
        raise UserError(f"The run folder {data['output']} is not under runs/.", "Name runs as runs/NAME.")
    data["output"] = str(out)
    section = data.get("data")
    subsets = section.get("subsets") if isinstance(section, dict) else None
    if not isinstance(section, dict) or not (section.get("path") or subsets):
        raise UserError("The job has no training images (data.path).", "Pick a prepared set or an upload folder.")
    if section.get("path"):
        data["data"] = {**section, "path": str(ws.path(section["path"], what="data folder", must_exist=True))}
    if isinstance(subsets, list):  # several folders (a kohya dataset_config), each in the workspace
        data["data"]["subsets"] = [{**s, "path": str(ws.path(str(s.get("path", "")), what="data folder",
                                                             must_exist=True))} if isinstance(s, dict) else s
                                   for s in subsets]
    prior = data.get("dreambooth")
    if isinstance(prior, dict) and isinstance(prior.get("class_data_dir"), str) and prior["class_data_dir"].strip():
        prior["class_data_dir"] = str(ws.path(prior["class_data_dir"], what="class images folder (class_data_dir)"))
    if isinstance(data.get("vae"), str) and data["vae"].strip():
        data["vae"] = str(ws.path(data["vae"], what="VAE (vae)", must_exist=True))
    lora = data.get("lora")
    if isinstance(lora, dict) and isinstance(lora.get("init_from"), str) and lora["init_from"].strip():
        lora["init_from"] = str(ws.path(lora["init_from"], what="LoRA to go on from (lora.init_from)", must_exist=True))
    return data


def build(ctx) -> None:
    import gradio as gr
    import pandas as pd

    from personae.config.base import parse_settings
    from personae.config.methods import METHODS
    from personae.config.train import DataSection, LoraSection, TrainJob, TrainSection
    from personae.jobs.train import load_job
    from personae.web.forms import SettingsForm
    from personae.web.tab_generate import models

    ws, jobs = ctx.workspace, ctx.jobs
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                model = gr.Dropdown(models(ws), value=(models(ws) or [None])[0], allow_custom_value=True,
                                    label="Base model", elem_id="train-model")
                method = gr.Dropdown(list(METHODS), value="lora", label="Method", elem_id="train-method",
                                     info=METHODS["lora"].summary)
            with gr.Row():
                dataset = gr.Dropdown(ws.folders("datasets") + ws.folders("uploads"), allow_custom_value=True,
                                      label="Training images", info="a prepared set (datasets/) or an upload folder",
                                      elem_id="train-data")
                run_name = gr.Textbox(label="Run name", info="the run folder: runs/NAME", elem_id="train-run")
            with gr.Row():
                token = gr.Textbox(label="Token (textual inversion, pivotal)", placeholder="<sks>")
                init_word = gr.Textbox(label="Token starts from the word", placeholder="person")
            with gr.Accordion("Training settings", open=False):
                train_form = SettingsForm(TrainSection, skip=("validation",), prefix="train")
            with gr.Accordion("LoRA settings", open=False):
                lora_form = SettingsForm(LoraSection, prefix="train-lora")
            with gr.Accordion("Data settings", open=False):
                # several folders (data.subsets) come with a pasted job or kohya config
                data_form = SettingsForm(DataSection, skip=("path", "subsets"), prefix="train-data")
            with gr.Accordion("Or paste a job YAML, or kohya's config .toml (replaces the form)", open=False):
                pasted = gr.Code(language="yaml", label="job.yaml or kohya config_lora.toml (paths in the workspace)",
                                 lines=10)
        with gr.Column(scale=2):
            with gr.Row():
                start = gr.Button("Start training", variant="primary", elem_id="train-start")
                stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
                resume = gr.Button("Resume", elem_id="train-resume")
            status = gr.Markdown(elem_id="train-status")
            progress = gr.HTML(elem_id="train-progress")
            losses = gr.LinePlot(x="step", y="loss", title="training loss", height=220, elem_id="train-loss")
            samples = gr.Gallery(label="Validation images", columns=2, height=300, elem_id="train-samples")
    forms = [train_form, lora_form, data_form]
    raw = [c for f in forms for c in f.inputs]

    def base_from(values) -> dict:
        at, parts = 0, []
        for f in forms:
            parts.append(f.values(*values[at: at + len(f.inputs)]))
            at += len(f.inputs)
        return {"train": parts[0], "lora": parts[1], "data": parts[2]}

    def submit(model_v, method_v, data_v, name_v, token_v, init_v, pasted_v, *values):
        try:
            data = job_data(ctx, base_from(values), model_v, method_v, data_v, name_v, token_v, init_v, pasted_v)
            job = parse_settings(TrainJob, data, "the Train form")
        except UserError as exc:
            return f"**Not started:** {exc}"
        task = jobs.submit_training(job, title=f"{job.method} -> {ws.relative(job.output)}")
        return f"Queued as job {task.id}: {job.method} into `{ws.relative(job.output)}`."

    method.change(lambda m: gr.update(info=METHODS[m].summary if m in METHODS else ""), method, method)
    start.click(submit, [model, method, dataset, run_name, token, init_word, pasted, *raw], status)

    def current():
        trains = [t for t in jobs.snapshot() if t.kind == "train"]
        running = [t for t in trains if t.status == "running"]
        return running[0] if running else (trains[-1] if trains else None)

    def stop_job():
        task = current()
        if task is None or task.status != "running":
            return "No training job is running."
        return jobs.stop(task.id)

    stop.click(stop_job, None, status)

    def resume_job(name_v):
        try:
            folder = ws.path(f"runs/{name_v.strip()}", what="run folder", must_exist=True) if (name_v or "").strip() \
                else (current().run if current() and current().run else None)
            if folder is None:
                raise UserError("No run to resume.", "Type the run's name (runs/NAME), or start one.")
            job = load_job(folder / "config.yaml")
        except UserError as exc:
            return f"**Not resumed:** {exc}"
        task = jobs.submit_training(job, resume=True, title=f"resume {job.method} -> {ws.relative(folder)}")
        return f"Queued as job {task.id}: resume `{ws.relative(folder)}`."

    resume.click(resume_job, run_name, status)

    seen = gr.State(("", 0, 0))

    def live(last):
        from personae.web.panel import queue_table

        task = current()
        if task is None:
            return gr.skip(), gr.skip(), gr.skip(), last
        table = queue_table([task])
        now = (table, len(task.losses), len(task.images))
        if now == tuple(last):  # the page redraws only what changed
            return gr.skip(), gr.skip(), gr.skip(), last
        frame = pd.DataFrame(task.losses or [], columns=["step", "loss"])
        plot = frame if now[1] != last[1] else gr.skip()
        images = [str(p) for p in task.images] if now[2] != last[2] else gr.skip()
        return table, plot, images, now

    gr.Timer(1.0).tick(live, seen, [progress, losses, samples, seen], show_progress="hidden")
