"""The World tab: teach the shapes-world model a held-out shape with one method, as `personae world bench` does
(world/bench.py), and watch the exact scores come in: progress while it runs, then the table and the grids."""

from __future__ import annotations

import html
import json
from pathlib import Path

# a small run that finishes in minutes on a laptop CPU (the committed table uses the declared defaults)
SMALL = {"images": 6, "prior_images": 16, "workers": 1, "seeds_per_prompt": 2, "steps": 10, "prior_samples": 16}
SMALL_TRAIN_STEPS = 100


def bench_for(method: str, concept: str, train_steps: int, main: dict, evaluation: dict):
    """The bench settings as `personae world bench --methods M --concepts C --seeds 1 --set ...` reads them."""
    from personae.cli.world_cmd import bench_settings

    assignments = [f"{k}={json.dumps(v)}" for k, v in main.items()]
    assignments += [f"eval.{k}={json.dumps(v)}" for k, v in evaluation.items()]
    assignments.append(f"jobs.{method}.train.steps={int(train_steps)}")
    return bench_settings(methods=method, concepts=concept, seeds=1, assignments=assignments)


def bench_view(out: Path) -> tuple[str, list[tuple[str, str]]]:
    """(the table as markdown, [(grid, caption)]) of a finished bench folder."""
    table = (out / "table.md").read_text(encoding="utf-8") if (out / "table.md").is_file() else ""
    grids = [(str(p), p.stem) for p in sorted((out / "grids").glob("*.png"))]
    return table, grids


def newest_bench(ws) -> Path | None:
    """The newest finished bench under outputs/world (shown when the page opens, also after a restart)."""
    done = [ws.root / f for f in ws.folders("outputs/world") if (ws.root / f / "table.md").is_file()]
    return max(done, key=lambda p: p.stat().st_mtime) if done else None


def build(ctx) -> None:
    import gradio as gr

    from personae.errors import UserError
    from personae.web.forms import SettingsForm
    from personae.web.jobfiles import ended_line, latest, running
    from personae.web.panel import queue_table
    from personae.world.bench import run_bench
    from personae.world.bench_settings import METHODS, EvalSettings, WorldBench
    from personae.world.vocab import HELD_OUT

    ws, jobs = ctx.workspace, ctx.jobs
    last = newest_bench(ws)
    last_table, last_grids = bench_view(last) if last is not None else ("", [])
    gr.Markdown("Teach the shapes-world model (a small model pretrained on shapes whose every property can be checked "
                "exactly) a shape it has never seen, with one method, then score it exactly: subject fidelity, prompt "
                "fidelity on unseen backgrounds and sizes, and how much of what it knew it kept (prior).")
    with gr.Row():
        with gr.Column(scale=2):
            method = gr.Dropdown(list(METHODS), value="lora", label="Method", elem_id="world-method")
            concept = gr.Radio(list(HELD_OUT), value=list(HELD_OUT)[0], label="Shape to teach", elem_id="world-concept")
            steps = gr.Slider(1, 1000, value=SMALL_TRAIN_STEPS, step=1, label="Training steps",
                              info="the method's train.steps (the committed table: the recipe's, 600 for most)")
            with gr.Accordion("Bench settings (small by default; the committed table uses the larger defaults)",
                              open=False):
                main = SettingsForm(WorldBench, prefix="world", names=("images", "prior_images", "workers"))
                evaluation = SettingsForm(EvalSettings, prefix="world-eval")
            for form in (main, evaluation):
                for name, component in form.components.items():
                    if name in SMALL:
                        component.value = SMALL[name]
            go = gr.Button("Teach and score", variant="primary", elem_id="world-run")
            status = gr.Markdown(elem_id="world-status")
        with gr.Column(scale=3):
            progress = gr.HTML(elem_id="world-progress")
            grids = gr.Gallery(label="Grids (the base model, then the taught one)", columns=2, height=380,
                               value=last_grids or None, elem_id="world-grids")
    table = gr.Markdown(last_table, elem_id="world-table")  # full width: a dozen score columns
    seen = gr.State(0)

    def submit(method_v, concept_v, steps_v, *raw):
        try:
            bench = bench_for(method_v, concept_v, steps_v, main.values(*raw[:len(main.inputs)]),
                              evaluation.values(*raw[len(main.inputs):]))
            out = ws.new_folder("outputs/world")
        except UserError as exc:
            return f"**Not started:** {exc}"
        command = f"personae world bench --out {ws.relative(out)} --methods {method_v} --concepts {concept_v} --seeds 1"

        def work(on_event):
            run_bench(bench, out, command=command, on_event=on_event)
            return str(out)

        task = jobs.submit("world", f"{method_v} learns the {concept_v}", work)
        return f"Queued as job {task.id}; the scores go to `{ws.relative(out)}`."

    go.click(submit, [method, concept, steps, *main.inputs, *evaluation.inputs], status)

    def tick(seen_v):
        task = running(jobs, "world")
        line = "" if task is None else queue_table([task]) + "".join(
            f"<div class='personae-world-message'>{html.escape(m)}</div>" for m in task.messages[-3:])
        done = latest(jobs, "world", seen_v)
        if done is None:
            return line, gr.skip(), gr.skip(), gr.skip(), seen_v
        if done.status != "done":
            return line, ended_line(done), gr.skip(), gr.skip(), done.id
        table_v, grids_v = bench_view(Path(done.result))
        return line, f"{ended_line(done)} `{ws.relative(Path(done.result))}`", table_v, grids_v, done.id

    gr.Timer(1.0).tick(tick, seen, [progress, status, table, grids, seen], show_progress="hidden",
                       concurrency_limit=None)
