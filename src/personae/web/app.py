"""`personae ui`: the web UI, a Gradio page over the same job functions the CLI calls.

    app = build(Workspace("work"), JobQueue())     # a gr.Blocks; serve() launches it

Layout only: the forms come from the settings declarations (forms.py), the work from jobs/ and
data/ (each tab's module calls what its CLI command calls), the long work from the job queue
(jobs/queue.py: one job at a time, progress as events). Every page polls the queue once a second,
so a page opened again finds the jobs where they are, and a restarted UI lists the runs on disk.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from personae.errors import UserError
from personae.jobs.queue import JobQueue
from personae.web.workspace import MAX_UPLOAD_MB, Workspace

LOOPBACK = ("127.0.0.1", "localhost", "::1")
CSS = """
.personae-queue {width: 100%; font-size: 0.9em} .personae-queue td, .personae-queue th {padding: 2px 6px}
.personae-scroll {overflow-x: auto} .personae-queue progress {width: 7em} .personae-error {color: #c0392b; white-space: pre-wrap}
"""


@dataclass
class Context:
    """What every tab shares: the workspace, the job queue, and (filled in as tabs are built) their inputs."""

    workspace: Workspace
    jobs: JobQueue
    tabs: object = None  # the gr.Tabs, for "use this LoRA in Generate"
    generate_loras: object = None  # the Generate tab's LoRA picker
    generate_addons: object = None  # the accordion it is in


def build(workspace: Workspace, jobs: JobQueue):
    import gradio as gr

    from personae.web import tab_extras, tab_generate, tab_more, tab_prepare, tab_runs, tab_train, tab_world
    from personae.web.panel import queue_table

    ctx = Context(workspace, jobs)
    with gr.Blocks(title="personae", analytics_enabled=False) as app:
        gr.Markdown(f"## personae\nworkspace: `{workspace.root}`")
        with gr.Tabs() as tabs:
            ctx.tabs = tabs
            with gr.Tab("Generate", id="generate"):
                tab_generate.build(ctx)
            with gr.Tab("Train", id="train"):
                tab_train.build(ctx)
            with gr.Tab("Prepare", id="prepare"):
                tab_prepare.build(ctx)
            with gr.Tab("Animate", id="animate"):
                tab_more.build_animate(ctx)
            with gr.Tab("Storyboard", id="storyboard"):
                tab_more.build_storyboard(ctx)
            with gr.Tab("Compare", id="compare"):
                tab_more.build_compare(ctx)
            with gr.Tab("Extras", id="extras"):
                tab_extras.build_extras(ctx)
            with gr.Tab("Merge", id="merge"):
                tab_extras.build_merge(ctx)
            with gr.Tab("Runs", id="runs"):
                tab_runs.build(ctx)
            with gr.Tab("World", id="world"):
                tab_world.build(ctx)
        with gr.Accordion("Jobs (one at a time, in order)", open=True):
            board = gr.HTML(queue_table(jobs.snapshot()), elem_id="personae-queue")
        shown = gr.State("")

        def refresh(last: str):  # the page redraws only what changed (a redraw costs the browser more than a poll)
            table = queue_table(jobs.snapshot())
            return (gr.skip(), last) if table == last else (table, table)

        gr.Timer(1.0).tick(refresh, shown, [board, shown], show_progress="hidden")
    return app


def parse_auth(auth: str | None) -> tuple[str, str] | None:
    if not auth:
        return None
    user, colon, password = auth.partition(":")
    if not colon or not user or not password:
        raise UserError(f"--auth {auth!r} is not USER:PASSWORD.", "Pass --auth name:secret.")
    return user, password


def exposure_warning(host: str, port: int, credentials, ws: Workspace) -> str | None:
    """What to say when the UI listens beyond this machine with no login (None when it does not)."""
    if host in LOOPBACK or credentials is not None:
        return None
    return (f"warning: personae ui listens on {host} without --auth: anyone who can reach this machine's port {port} "
            f"can run jobs and read the workspace {ws.root}. Add --auth USER:PASSWORD.")


def serve(workspace: str, host: str = "127.0.0.1", port: int = 7860, auth: str | None = None,
          share: bool = False, block: bool = True, jobs: JobQueue | None = None):
    """Launch the UI on host:port; with block=False return (app, url) and leave it running in threads."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    ws = Workspace(workspace)
    credentials = parse_auth(auth)
    warning = exposure_warning(host, port, credentials, ws)
    if warning:
        print(warning, file=sys.stderr)
    import gradio as gr

    temp = ws.root / ".personae-ui" / "uploads"  # Gradio's uploads land here before a tab copies them in
    temp.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(temp)
    jobs = jobs or JobQueue()
    app = build(ws, jobs)
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"])  # no web fonts offline
    app.queue(default_concurrency_limit=4)
    _, url, _ = app.launch(server_name=host, server_port=port, auth=credentials, share=share, inbrowser=False,
                           prevent_thread_lock=True, allowed_paths=[str(ws.root)], max_file_size=f"{MAX_UPLOAD_MB}mb",
                           show_error=True, quiet=True, ssr_mode=False, theme=theme, css=CSS,
                           enable_monitoring=False)
    if not block:
        return app, url
    print(f"personae ui: {url} (workspace {ws.root}); Ctrl-C stops it (a running training job saves a checkpoint)")
    try:
        app.block_thread()
    finally:
        app.close()
        if any(t.status in ("running", "queued") for t in jobs.snapshot()):
            print("personae ui: stopping the running job (a training run saves a checkpoint; Resume continues it)",
                  file=sys.stderr)
        jobs.shutdown()
    return app, url
