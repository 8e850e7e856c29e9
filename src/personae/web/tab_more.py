"""The Storyboard and Compare tabs (and Animate's, from tab_animate.py): a scenes file or a suite, typed in the page
or named in the workspace, run as `personae storyboard` / `personae compare` run it into a new outputs/.../NNNN."""

from __future__ import annotations

from pathlib import Path

from personae.web.tab_animate import build_animate  # noqa: F401  (app.py builds the tab from here)

SCENES_EXAMPLE = """version: 1
model: models/tiny
steps: 4
width: 64
height: 64
seed: 0
scenes:
  - {number: 1, description: "a girl waits at a bus stop", dialogue: "is it late?", shot: close-up, angle: eye level}
  - {number: 2, description: "the bus arrives in the rain", dialogue: "", shot: full, angle: high angle}
"""

SUITE_EXAMPLE = """version: 1
base_model: models/tiny
variants:
  - {label: base}
  - {label: cfg-3, cfg: 3}
prompts: ["a photo of a cat", "a red house"]
seeds: [0]
steps: 4
width: 64
height: 64
metrics: {clip: null, dino: null, face: false}
"""


def storyboard_settings(ws, text: str | None, chosen: str | None, overrides: dict):
    """The scenes (typed, else a workspace file) read as `personae storyboard` reads them, the form's values over
    the file's; refused if the file names anything out of the workspace."""
    from personae.jobs.storyboard import load_scenes
    from personae.web.jobfiles import inside, settings_file

    path = settings_file(ws, text, "uploads/storyboard", "scenes.yaml", chosen)
    settings = load_scenes(path, overrides)
    inside(ws, settings.model_dump(), "The scenes file")
    return settings


def compare_suite(ws, text: str | None, chosen: str | None, overrides: dict):
    """The suite (typed, else a workspace file) read as `personae compare` reads it, the form's values over the
    file's; refused if the suite names anything out of the workspace."""
    from personae.jobs.compare_plan import load_suite
    from personae.web.jobfiles import inside, settings_file

    path = settings_file(ws, text, "uploads/compare", "suite.yaml", chosen)
    suite = load_suite(path, overrides)
    inside(ws, suite.model_dump(by_alias=True), "The suite")
    return suite


def report_frame(ws, report: Path) -> str:
    """report.html in an iframe, served by Gradio from the workspace (an allowed path)."""
    return (f"<iframe src='/gradio_api/file={report.resolve()}' title='comparison report' "
            "style='width:100%;height:640px;border:1px solid #8884'></iframe>"
            f"<p><a href='/gradio_api/file={report.resolve()}' target='_blank'>open the report alone</a> "
            f"({ws.relative(report)})</p>")


SHEETS = ("sheet.png", "sheet.pdf")


def show_board(ws, folder: str | None) -> tuple[str, str | None, str | None]:
    """(status line, sheet PNG, sheet PDF) of an earlier storyboard folder (outputs/storyboard/NNNN)."""
    if not folder:
        return "", None, None
    out = ws.path(folder, what="storyboard folder", must_exist=True)
    return f"`{ws.relative(out)}`", *(str(out / n) if (out / n).is_file() else None for n in SHEETS)


def show_comparison(ws, folder: str | None) -> tuple[str, str, list[str]]:
    """(status line, the report in a frame, the grids) of an earlier comparison (outputs/compare/NNNN)."""
    if not folder:
        return "", "", []
    out = ws.path(folder, what="comparison folder", must_exist=True)
    report = out / "report.html"
    return (f"`{ws.relative(out)}`", report_frame(ws, report) if report.is_file() else "",
            [str(p) for p in sorted((out / "grids").glob("*.png"))])


def _file_box(gr, ws, under: str, label: str, elem_id: str):
    files = ws.files((".yaml", ".yml", ".csv"), under=("uploads", "datasets", "outputs", under))
    return gr.Dropdown(files, allow_custom_value=True, label=label, elem_id=elem_id,
                       info="used when the box above is empty; paths in it are relative to the file")


def build_storyboard(ctx) -> None:
    import gradio as gr

    from personae.config.storyboard import StoryboardSettings
    from personae.errors import UserError
    from personae.inference.samplers import SAMPLERS
    from personae.jobs.storyboard import run_storyboard
    from personae.web.forms import SettingsForm
    from personae.web.jobfiles import changed, ended_line, latest, shown
    from personae.web.tab_generate import model_path, models

    ws, jobs = ctx.workspace, ctx.jobs
    with gr.Row():
        with gr.Column(scale=3):
            scenes = gr.Code(SCENES_EXAMPLE, language="yaml", label="Scenes (YAML; paths relative to the workspace)",
                             lines=12, elem_id="storyboard-scenes")
            chosen = _file_box(gr, ws, "storyboards", "Or a scenes file in the workspace (.yaml / .csv)",
                               "storyboard-file")
            model = gr.Dropdown(["", *models(ws)], value="", allow_custom_value=True, label="Model",
                                info="empty: the file's", elem_id="storyboard-model")
            with gr.Accordion("Sampling (a setting moved from its default overrides the file's)", open=False):
                form = SettingsForm(StoryboardSettings, prefix="storyboard", groups=("sampling", "runtime"), names=("style_trigger",),
                                    choices={"sampler": list(SAMPLERS)})
        with gr.Column(scale=3):
            go = gr.Button("Draw the storyboard", variant="primary", elem_id="storyboard-run")
            status = gr.Markdown(elem_id="storyboard-status")
            earlier = gr.Dropdown(ws.outputs("storyboard", SHEETS[:1]), value=None, label="Earlier storyboards",
                                  elem_id="storyboard-earlier")
            sheet = gr.Image(label="Sheet", type="filepath", interactive=False, elem_id="storyboard-sheet")
            pdf = gr.File(label="Sheet (PDF)", interactive=False, elem_id="storyboard-pdf")
    seen = gr.State(0)

    def submit(text, chosen_v, model_v, *raw):
        try:
            overrides = changed(form, raw)
            if model_v and model_v.strip():
                overrides["model"] = model_path(ws, model_v)
            settings = storyboard_settings(ws, text, chosen_v, overrides)
            out = ws.new_folder("outputs/storyboard")
        except UserError as exc:
            return f"**Not started:** {exc}"

        def work(on_event):
            run_storyboard(settings, out, on_event=on_event)
            return str(out)

        task = jobs.submit("storyboard", f"{len(settings.scenes)} scenes", work)
        return f"Queued as job {task.id}; the board goes to `{ws.relative(out)}`."

    go.click(submit, [scenes, chosen, model, *form.inputs], status)

    def tick(seen_v):
        task = latest(jobs, "storyboard", seen_v)
        if task is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), seen_v
        if task.status != "done":
            return ended_line(task), gr.skip(), gr.skip(), gr.skip(), task.id
        out = Path(task.result)
        return (f"{ended_line(task)} `{ws.relative(out)}`", str(out / "sheet.png"), str(out / "sheet.pdf"),
                gr.update(choices=ws.outputs("storyboard", SHEETS[:1])), task.id)

    gr.Timer(1.0).tick(tick, seen, [status, sheet, pdf, earlier, seen], show_progress="hidden",
                       concurrency_limit=None)
    earlier.change(lambda f: shown(show_board, ws, f), earlier, [status, sheet, pdf])


def build_compare(ctx) -> None:
    import gradio as gr

    from personae.config.compare import CompareSuite
    from personae.errors import UserError
    from personae.inference.samplers import SAMPLERS
    from personae.jobs.compare import run_compare
    from personae.web.forms import SettingsForm
    from personae.web.jobfiles import changed, ended_line, latest, shown

    ws, jobs = ctx.workspace, ctx.jobs
    with gr.Row():
        with gr.Column(scale=2):
            suite_text = gr.Code(SUITE_EXAMPLE, language="yaml", label="Suite (YAML; paths relative to the workspace)",
                                 lines=14, elem_id="compare-suite")
            chosen = _file_box(gr, ws, "suites", "Or a suite file in the workspace", "compare-file")
            with gr.Accordion("Sampling (a setting moved from its default overrides the suite's)", open=False):
                form = SettingsForm(CompareSuite, prefix="compare", groups=("sampling", "runtime"), choices={"sampler": list(SAMPLERS)})
            go = gr.Button("Compare", variant="primary", elem_id="compare-run")
            status = gr.Markdown(elem_id="compare-status")
        with gr.Column(scale=3):
            earlier = gr.Dropdown(ws.outputs("compare", ("report.html",)), value=None, label="Earlier comparisons",
                                  elem_id="compare-earlier")
            report = gr.HTML(elem_id="compare-report")
            grids = gr.Gallery(label="Grids (rows are variants, columns prompts)", columns=1, height=360,
                               elem_id="compare-grids")
    seen = gr.State(0)

    def submit(text, chosen_v, *raw):
        try:
            suite = compare_suite(ws, text, chosen_v, changed(form, raw))
            out = ws.new_folder("outputs/compare")
        except UserError as exc:
            return f"**Not started:** {exc}"

        def work(on_event):
            run_compare(suite, out, on_event=on_event)
            return str(out)

        task = jobs.submit("compare", f"{len(suite.variants)} variants", work)
        return f"Queued as job {task.id}; the comparison goes to `{ws.relative(out)}`."

    go.click(submit, [suite_text, chosen, *form.inputs], status)

    def tick(seen_v):
        task = latest(jobs, "compare", seen_v)
        if task is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), seen_v
        if task.status != "done":
            return ended_line(task), gr.skip(), gr.skip(), gr.skip(), task.id
        out = Path(task.result)
        images = [str(p) for p in sorted((out / "grids").glob("*.png"))]
        return (f"{ended_line(task)} `{ws.relative(out)}`", report_frame(ws, out / "report.html"), images,
                gr.update(choices=ws.outputs("compare", ("report.html",))), task.id)

    gr.Timer(1.0).tick(tick, seen, [status, report, grids, earlier, seen], show_progress="hidden",
                       concurrency_limit=None)
    earlier.change(lambda f: shown(show_comparison, ws, f), earlier, [status, report, grids])
