"""The Prepare tab: uploaded images (or a workspace folder) -> a captioned set under datasets/, as `personae prepare`
makes it; then its contact sheet and its captions, edited inline and saved as `personae captions` saves them."""

from __future__ import annotations

from pathlib import Path

from personae.errors import UserError


def source_folder(ws, files, folder: str | None) -> Path:
    """The images to prepare: the uploads (copied into a new uploads/NNNN), else a folder of the workspace."""
    if files:
        target = ws.new_folder("uploads")
        for f in files:
            src = Path(f if isinstance(f, str) else f.name)
            ws.take_upload(src, src.name, target)
        return target
    if not folder or not str(folder).strip():
        raise UserError("No images are given.", "Upload images, or pick a folder of the workspace (e.g. uploads/0001).")
    path = ws.path(folder, what="image folder", must_exist=True)
    if not path.is_dir():
        raise UserError(f"{folder} is not a folder.", "Pick a folder of images in the workspace.")
    return path


def dataset_folder(ws, name: str | None) -> Path:
    """datasets/NAME (a new datasets/NNNN without a name); prepare itself refuses a folder it did not make."""
    name = (name or "").strip()
    if not name:
        return ws.new_folder("datasets")
    out = ws.path(f"datasets/{name}", what="dataset name")
    if out.parent != ws.root / "datasets":
        raise UserError(f"The dataset name {name!r} is not one folder name.", "Type a plain name, e.g. me.")
    return out


def captioner_in_workspace(ws, spec: str) -> str:
    """A captioner spec whose folder (wd14:FOLDER, or a transformers model folder) is a workspace path, made
    absolute; a name (filename, none) or a hub id as it is."""
    kind, colon, where = (spec or "").partition(":")
    if not colon:
        kind, where = "", spec or ""
    if not where.strip():
        return spec
    path = ws.path(where, what="captioner folder")  # refuses absolute paths and `..`
    if not path.exists():
        return spec
    return f"{kind}:{path}" if kind else str(path)


def prepare(src: Path, out: Path, settings, on_event) -> str:
    """`personae prepare SRC OUT` (cli/prepare_cmd.py), the captioner loaded the way it loads it."""
    from personae.data.prepare import prepare_dataset
    from personae.models.captioners import load_captioner

    result = prepare_dataset(src, out, settings, on_event=on_event,
                             load_captioner=lambda spec: load_captioner(spec, settings=settings))
    return f"{len(result.entries)} images in {out.name} ({len(result.rejected)} rejected; see report.md)"


def caption_rows(folder: Path) -> list[list[str]]:
    """[[image, caption], ...] of a prepared set, as `personae captions DIR` lists them."""
    from personae.data.caption_editor import load_captions

    return [[item.name, item.caption] for item in load_captions(folder).items]


def save_captions(folder: Path, rows) -> str:
    """Write the edited table's captions through the caption editor (only changed ones, a prepared set only)."""
    from personae.data.caption_editor import load_captions, set_captions

    if hasattr(rows, "values") and hasattr(rows, "columns"):  # a pandas DataFrame from gr.Dataframe
        rows = rows.values.tolist()
    new = {str(r[0]): "" if r[1] is None else str(r[1]) for r in rows or [] if r and str(r[0]).strip()}
    result = set_captions(load_captions(folder), new)
    skipped = "".join(f"; {item.name} not edited: {why}" for item, why in result.skipped)
    return f"Saved: changed {len(result.changes)} of {result.matched} captions{skipped}."


def build(ctx) -> None:
    import gradio as gr

    from personae.config.base import parse_settings
    from personae.config.prepare import PrepareSettings
    from personae.web.forms import SettingsForm
    from personae.web.jobfiles import ended_line, latest

    ws, jobs = ctx.workspace, ctx.jobs
    with gr.Row():
        with gr.Column(scale=3):
            files = gr.File(label="Upload images", file_count="multiple", file_types=["image"],
                            elem_id="prepare-upload")
            folder = gr.Dropdown(ws.folders("uploads"), allow_custom_value=True, label="Or a folder of the workspace",
                                 info="used when nothing is uploaded", elem_id="prepare-folder")
            name = gr.Textbox(label="Dataset name", info="written to datasets/NAME (empty: a new numbered folder); "
                              "running again on the same name updates only what changed", elem_id="prepare-name")
            main = SettingsForm(PrepareSettings, prefix="prepare", names=("trigger", "class_word", "crop", "resolution", "captioner",
                                                        "template"))
            with gr.Accordion("More settings", open=False):
                more = SettingsForm(PrepareSettings, prefix="prepare", skip=tuple(main.components))
        with gr.Column(scale=3):
            go = gr.Button("Prepare", variant="primary", elem_id="prepare-run")
            status = gr.Markdown(elem_id="prepare-status")
            sheet = gr.Image(label="Contact sheet", type="filepath", interactive=False, elem_id="prepare-sheet")
            with gr.Row():
                shown = gr.Dropdown(ws.folders("datasets"), allow_custom_value=True, label="Captions of",
                                    elem_id="prepare-dataset")
                load = gr.Button("Load", size="sm")
            captions = gr.Dataframe(headers=["image", "caption"], column_count=(2, "fixed"), interactive=True,
                                    wrap=True, label="Captions (edit a cell, then Save)", elem_id="prepare-captions")
            save = gr.Button("Save captions", elem_id="prepare-save")
            note = gr.Markdown(elem_id="prepare-note")
    forms = [main, more]
    raw = [c for f in forms for c in f.inputs]
    seen = gr.State(0)

    def submit(files_v, folder_v, name_v, *values):
        try:
            data = {**main.values(*values[:len(main.inputs)]), **more.values(*values[len(main.inputs):])}
            if data.get("captioner"):
                data["captioner"] = captioner_in_workspace(ws, data["captioner"])
            settings = parse_settings(PrepareSettings, data, "the Prepare form")
            src = source_folder(ws, files_v, folder_v)
            out = dataset_folder(ws, name_v)
        except UserError as exc:
            return f"**Not started:** {exc}"
        def work(on_event):
            prepare(src, out, settings, on_event)
            return str(out)

        task = jobs.submit("prepare", f"{ws.relative(src)} -> datasets/{out.name}", work)
        return f"Queued as job {task.id}: `{ws.relative(src)}` into `datasets/{out.name}`."

    go.click(submit, [files, folder, name, *raw], status)

    def show(folder_v):
        try:
            path = ws.path(folder_v, what="dataset", must_exist=True)
            rows = caption_rows(path)
        except UserError as exc:
            return gr.skip(), gr.skip(), f"**{exc}**"
        contact = path / "contact_sheet.png"
        return (str(contact) if contact.is_file() else None), rows, f"{len(rows)} images in `{ws.relative(path)}`."

    def tick(seen_v):
        task = latest(jobs, "prepare", seen_v)
        if task is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), seen_v
        if task.status != "done":
            return ended_line(task), gr.skip(), gr.skip(), gr.skip(), task.id
        name_v = ws.relative(Path(task.result))
        contact, rows, line = show(name_v)
        return (f"{ended_line(task)} {line}", contact, rows,
                gr.update(choices=ws.folders("datasets"), value=name_v), task.id)

    gr.Timer(1.0).tick(tick, seen, [status, sheet, captions, shown, seen], show_progress="hidden",
                       concurrency_limit=None)
    load.click(show, shown, [sheet, captions, note])

    def save_now(folder_v, rows):
        try:
            return save_captions(ws.path(folder_v, what="dataset", must_exist=True), rows)
        except UserError as exc:
            return f"**Not saved:** {exc}"

    save.click(save_now, [shown, captions], note)
