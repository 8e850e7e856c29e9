"""The Runs tab: every training run in the workspace (read from its run record), its curve, grids and exports."""

from __future__ import annotations

import html


def runs_table(ws) -> str:
    rows = []
    for entry in ws.runs():
        name = html.escape(ws.relative(entry.path))
        if entry.record is None:
            rows.append(f"<tr data-run='{name}'><td>{name}</td><td colspan='5'>{html.escape(entry.problem)}</td></tr>")
            continue
        r = entry.record
        method = html.escape(str(r.settings.get("method", "")))
        total = r.metrics.total_steps or "?"
        loss = f"{r.metrics.final_loss:.4f}" if r.metrics.final_loss is not None else ""
        exports = ", ".join(html.escape(e.path) for e in r.exports)
        rows.append(f"<tr data-run='{name}'><td>{name}</td><td>{method}</td><td>{html.escape(r.status)}</td>"
                    f"<td>{r.metrics.steps}/{total}</td><td>{loss}</td><td>{exports}</td></tr>")
    if not rows:
        return "<p>No runs in the workspace yet (runs/). Start one in the Train tab.</p>"
    return ("<table class='personae-runs'><thead><tr><th>run</th><th>method</th><th>status</th><th>steps</th>"
            "<th>loss</th><th>exports</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def run_files(ws, name: str) -> tuple[str | None, list[tuple[str, str]], list[str], list[str]]:
    """(loss curve, validation grids with their step, export files, LoRA exports) of one run."""
    from personae.runs import read_run

    folder = ws.path(name, what="run", must_exist=True)
    record = read_run(folder)
    curve = folder / "loss.png"
    grids = [(str(p), p.stem.replace("step-", "step ").lstrip("0")) for p in sorted((folder / "validation").glob("*.png"))]
    exports, loras = [], []
    for export in record.exports:
        path = folder / export.path
        if path.is_file():
            exports.append(str(path))
            if export.loader == "lora":
                loras.append(ws.relative(path))
        elif path.is_dir():
            exports += [str(p) for p in sorted(path.rglob("*")) if p.is_file()]
    return (str(curve) if curve.is_file() else None), grids, exports, loras


def build(ctx) -> None:
    import gradio as gr

    from personae.errors import UserError

    ws = ctx.workspace
    table = gr.HTML(runs_table(ws), elem_id="runs-table")
    with gr.Row():
        choice = gr.Dropdown([ws.relative(e.path) for e in ws.runs()], label="Run", elem_id="runs-choice")
        refresh = gr.Button("Refresh", size="sm")
        use = gr.Button("Use this LoRA in Generate", elem_id="runs-use-lora")
    note = gr.Markdown(elem_id="runs-note")
    with gr.Row():
        curve = gr.Image(label="Loss", type="filepath", height=260)
        grids = gr.Gallery(label="Validation grids by step", columns=3, height=260)
    files = gr.File(label="Exports (download)", file_count="multiple", interactive=False)
    loras = gr.State([])

    def show(name):
        if not name:
            return None, [], None, [], ""
        try:
            curve_v, grids_v, exports, lora_files = run_files(ws, name)
        except UserError as exc:
            return None, [], None, [], f"**{exc}**"
        return curve_v, grids_v, exports or None, lora_files, f"{len(exports)} export file(s)"

    choice.change(show, choice, [curve, grids, files, loras, note])
    refresh.click(lambda: (runs_table(ws), gr.update(choices=[ws.relative(e.path) for e in ws.runs()])), None,
                  [table, choice])

    def use_lora(lora_files):
        if not lora_files:
            return gr.skip(), gr.skip(), gr.skip(), "This run has no LoRA file (pick a LoRA or pivotal run)."
        return (gr.update(choices=ws.files((".safetensors",)), value=lora_files[:1]), gr.Accordion(open=True),
                gr.Tabs(selected="generate"), "")

    use.click(use_lora, loras, [ctx.generate_loras, ctx.generate_addons, ctx.tabs, note])
    last = gr.State("")

    def poll(shown: str):  # runs made since the page was built (or by another UI) appear within seconds
        now = runs_table(ws)
        if now == shown:
            return gr.skip(), gr.skip(), shown
        return now, gr.update(choices=[ws.relative(e.path) for e in ws.runs()]), now

    gr.Timer(2.0).tick(poll, last, [table, choice, last], show_progress="hidden")
