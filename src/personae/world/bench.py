"""`personae world bench`: teach held-out shapes with each method, then measure exactly.

    result = run_bench(WorldBench(methods=["lora"], concepts=["star"], seeds=1), "bench")

Per (method, concept, seed): draw the training images (the concept's shape and colour on
the training backgrounds and sizes), train an ordinary `personae train` job, load what it
exported (kohya LoRA, A1111 embedding, DreamBooth model folder) the way a user would, and
score generations with the exact checker. Jobs run side by side in worker processes (one
torch thread each). DIR/ gets table.md, table.csv, results.json, grids/, runs/, data/ and
report.html; it is written as DIR.partial and moved into place when everything succeeded
(replacing an earlier bench only with --overwrite; a DIR holding anything else is refused).
"""

from __future__ import annotations

import csv
import gc
import json
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from personae.config.methods import METHODS as REGISTRY
from personae.errors import UserError
from personae.events import EventHandler, Message, Progress, ignore
from personae.outputs import Kind, staged_output
from personae.world.bench_recipes import safe_name, sweep_rows
from personae.world.bench_settings import WorldBench
from personae.world.scene import HELD_OUT, caption, render, shape_mask

WORLD_BENCH = Kind("world-bench", "a shapes-world bench", "personae world bench",
                   layout=("table.md", "table.csv", "results.json", "report.html", "sweep.md", "sweep.json",
                           "grids/*", "runs/*", "data/*", "prior/*", "model/*"))

COLUMNS = [  # (key, header) of the table, in order
    ("subject_fidelity", "subject fidelity"),
    ("subject_seen_bg", "subject, training backgrounds"),
    ("subject_unseen_bg", "subject, unseen backgrounds"),
    ("prompt_fidelity", "prompt fidelity (unseen bg/size)"),
    ("subject_on_edit", "shape on unseen bg/size"),
    ("prior_after", "prior accuracy after"),
    ("prior_delta", "prior change (points)"),
    ("position_spread_px", "position spread (px)"),
    ("size_entropy_bits", "size entropy (bits)"),
    ("train_seconds", "train time (s)"),
    ("train_cpu_seconds", "train CPU (s)"),
]


@dataclass(frozen=True)
class Task:
    method: str
    concept: str
    seed: int

    @property
    def name(self) -> str:
        return f"{safe_name(self.method)}-{self.concept}-s{self.seed}"


def word_for(bench: WorldBench, method: str, concept: str) -> str:
    """What stands for the subject in captions and prompts: the trigger word, or the new token."""
    if REGISTRY[bench.job(method)["method"]].tokens_section:  # it learns a new token
        return bench.token.format(concept=concept)
    return bench.trigger.format(concept=concept)


def make_data(bench: WorldBench, task: Task, folder: Path, masks: bool = False) -> list[str]:
    """The task's training images with caption sidecars (and with `masks`, the shape's own coverage as a
    NN.mask.png sidecar, which prepare turns into the loss mask); the same draw for every method at a seed."""
    colour = bench.concept_settings[task.concept].colour
    backgrounds = [b for b in bench.train_backgrounds if b != colour]
    rng = np.random.default_rng([task.seed, HELD_OUT.index(task.concept)])
    folder.mkdir(parents=True, exist_ok=True)
    word = word_for(bench, task.method, task.concept)
    captions = []
    for i in range(bench.images):
        background = backgrounds[i % len(backgrounds)]  # every training background and size is covered
        size = bench.train_sizes[(i // len(backgrounds)) % len(bench.train_sizes)]
        offset = tuple(float(v) for v in rng.uniform(-1.0, 1.0, 2))
        render(task.concept, colour, background, size, offset).save(folder / f"{i:02d}.png")
        if masks:
            shape_mask(task.concept, size, offset).save(folder / f"{i:02d}.mask.png")
        text = caption(word, colour, background, size)
        (folder / f"{i:02d}.txt").write_text(text + "\n")
        captions.append(text)
    return captions


def make_prior(bench: WorldBench, pipe, folder: Path) -> None:
    """Regularization images: the base model's own pictures of ordinary random captions, with sidecars."""
    from personae.world.evaluate import generate_world
    from personae.world.scene import world_samples

    folder.mkdir(parents=True, exist_ok=True)
    captions = [text for _, text, _ in world_samples(seed=10_000, count=bench.prior_images)]
    images = generate_world(pipe, captions, list(range(len(captions))), bench.eval.steps, bench.eval.cfg)
    for i, (image, text) in enumerate(zip(images, captions)):
        image.save(folder / f"prior_{i:04d}.png")
        (folder / f"prior_{i:04d}.txt").write_text(text + "\n")


def job_for(bench: WorldBench, task: Task, model: str, data: Path, run: Path, init: str):
    """The `personae train` job of a task: the method's recipe with paths, seed and token filled in."""
    from personae.config.base import parse_settings
    from personae.config.train import TrainJob

    word = word_for(bench, task.method, task.concept)
    text = json.dumps(bench.job(task.method)).replace("{token}", word).replace("{init}", init)
    text = text.replace("{prior}", str(run.parent.parent / "prior"))
    recipe = json.loads(text)
    recipe.setdefault("train", {})["seed"] = task.seed
    recipe["train"].setdefault("resolution", 32)
    recipe.update(base_model=model, data={**recipe.get("data", {}), "path": str(data)}, output=str(run),
                  trigger=word, device="cpu")
    return parse_settings(TrainJob, recipe, f"jobs.{task.method}")


def _exports(run: Path) -> tuple[str | None, list[tuple[str, str | None]], str | None]:
    """(kohya LoRA, [(A1111 embedding, token)], model folder) from a finished run's record."""
    from personae.runs import read_run

    files = read_run(run).exports
    # the file users share, whatever reads it back: DoRA's kohya file and LoHa / LoKr's LyCORIS file are checked
    # through personae's own loader (loader "personae"), which open_session uses too
    lora = next((str(run / f.path) for f in files if f.format in ("kohya", "lycoris")), None)
    embeddings = [(str(run / f.path), f.token) for f in files if f.loader == "embedding" and f.format == "a1111"]
    folder = next((str(run / f.path) for f in files if f.loader == "folder"), None)
    return lora, embeddings, folder


def evaluate(bench: WorldBench, pipe, word: str, concept: str, seed: int) -> tuple[dict, list, list]:
    """Scores of one loaded pipeline for a concept, and the images per prompt (for grids)."""
    from personae.world.bench_scores import bench_prompts, score_concept
    from personae.world.evaluate import evaluate_world, generate_world

    e = bench.eval
    prompts = bench_prompts(word, bench.concept_settings[concept].colour, bench.train_backgrounds, bench.train_sizes)
    texts = [p.text for p in prompts for _ in range(e.seeds_per_prompt)]
    seeds = [1000 * seed + i for _ in prompts for i in range(e.seeds_per_prompt)]
    flat = generate_world(pipe, texts, seeds, e.steps, e.cfg)
    images = [flat[i * e.seeds_per_prompt:(i + 1) * e.seeds_per_prompt] for i in range(len(prompts))]
    scores = score_concept(concept, prompts, images)
    scores["prior_after"] = evaluate_world(pipe, e.prior_samples, e.steps, e.cfg, seed=0).scores["all"]  # paired
    return scores, prompts, images


def run_task(bench_data: dict, task: Task, model: str, work: str) -> dict:
    """One (method, concept, seed): data, training, loading the exports, scoring. Runs in a worker (_worker_start)."""
    from personae.inference.session import open_session
    from personae.jobs.train import run_training

    bench = WorldBench.model_validate(bench_data)
    work_dir = Path(work)
    data = work_dir / "data" / task.name
    run = work_dir / "runs" / task.name
    job = job_for(bench, task, model, data, run, bench.concept_settings[task.concept].init_word)
    make_data(bench, task, data, masks=job.data.masked_loss == "on")  # auto: no masks made, so off
    started, cpu_started = time.monotonic(), time.process_time()
    run_training(job, overwrite=True)
    # the wall time grows with whatever else shares the machine; the worker's CPU time (one torch thread) does not
    seconds, cpu_seconds = time.monotonic() - started, time.process_time() - cpu_started
    lora, embeddings, folder = _exports(run)
    session = open_session(folder or model, device="cpu", loras=[(lora, 1.0)] if lora else [], embeddings=embeddings)
    word = word_for(bench, task.method, task.concept)
    scores, prompts, images = evaluate(bench, session.pipe, word, task.concept, task.seed)
    scores["train_seconds"] = round(seconds, 1)
    scores["train_cpu_seconds"] = round(cpu_seconds, 1)
    _save_grid(work_dir / "grids" / f"{task.name}.png", f"{task.method}, {task.concept}, seed {task.seed}", prompts, images)
    del session
    gc.collect()
    return {"method": task.method, "concept": task.concept, "seed": task.seed, **scores}


def _worker_start() -> None:
    """A bench worker process uses one torch thread (workers run side by side; the caller's process is left as is)
    and keeps library load bars out of the terminal it shares with the caller."""
    import torch

    from personae.quiet import quiet_libraries

    quiet_libraries()
    torch.set_num_threads(1)


def _save_grid(path: Path, title: str, prompts, images) -> None:
    from personae.media.grid import labelled_grid, save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(labelled_grid(images, [p.text for p in prompts], [], title=title, cell=64), path)


def base_scores(bench: WorldBench, model: str, work: Path) -> dict:
    """The untouched model: prior accuracy (what training must preserve) and the trigger's subject fidelity.
    Run in a worker like the tasks (`run_bench` does), so its numbers come from the same thread count."""
    from personae.inference.session import open_session

    session = open_session(model, device="cpu")
    make_prior(bench, session.pipe, work / "prior")
    out = {}
    for concept in bench.concepts:
        scores, prompts, images = evaluate(bench, session.pipe, bench.trigger.format(concept=concept), concept, 0)
        out[concept] = scores
        _save_grid(work / "grids" / f"base-{concept}.png", f"base model, {concept} prompts", prompts, images)
    return out


def _base_task(data: dict, model: str, work: str) -> dict:
    return base_scores(WorldBench.model_validate(data), model, Path(work))


def summarise(results: list[dict], base: dict, methods: list[str]) -> list[dict]:
    """One row per method: mean and spread (standard deviation) over concepts and seeds."""
    rows = []
    for method in methods:
        mine = [r for r in results if r["method"] == method]
        for r in mine:
            r["prior_delta"] = 100.0 * (r["prior_after"] - base[r["concept"]]["prior_after"])
        row = {"method": method, "runs": len(mine)}
        for key, _ in COLUMNS:
            values = np.array([r[key] for r in mine], dtype=float)
            row[key] = float(values.mean()) if len(values) else None
            row[key + "_sd"] = float(values.std()) if len(values) else None
        rows.append(row)
    return rows


def _fmt(key: str, mean, sd) -> str:
    if mean is None:
        return "–"
    if key in ("subject_fidelity", "subject_seen_bg", "subject_unseen_bg", "prompt_fidelity", "subject_on_edit",
               "prior_after"):
        return f"{100 * mean:.0f} % ± {100 * sd:.0f}"
    if key == "prior_delta":
        return f"{mean:+.1f} ± {sd:.1f}"
    return f"{mean:.1f} ± {sd:.1f}" if key != "size_entropy_bits" else f"{mean:.2f} ± {sd:.2f}"


def table_markdown(rows: list[dict], base: dict, command: str) -> str:
    prior = np.mean([b["prior_after"] for b in base.values()])
    subject = np.mean([b["subject_fidelity"] for b in base.values()])
    lines = [f"`{command}`", "",
             f"Base model: prior accuracy {100 * prior:.0f} %, subject fidelity of the untaught trigger {100 * subject:.0f} %.",
             "Mean ± standard deviation over concepts and seeds.", "",
             "| method | runs | " + " | ".join(h for _, h in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append(f"| {r['method']} | {r['runs']} | " + " | ".join(_fmt(k, r[k], r[k + '_sd']) for k, _ in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def _write_outputs(work: Path, bench: WorldBench, results: list[dict], base: dict, rows: list[dict],
                   command: str, seconds: float, failed: list[dict] = ()) -> None:
    from personae.evaluation.report import ReportData, render_report

    failures = "".join(f"\nFailed, not in the table: {f['run']}: {f['error']}\n" for f in failed)
    (work / "table.md").write_text(table_markdown(rows, base, command) + failures)
    with open(work / "table.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["method", "runs"] + [c for k, _ in COLUMNS for c in (k, k + "_sd")])
        for r in rows:
            writer.writerow([r["method"], r["runs"]] + [r[c] for k, _ in COLUMNS for c in (k, k + "_sd")])
    (work / "results.json").write_text(json.dumps({
        "settings": bench.model_dump(), "command": command, "seconds": round(seconds, 1),
        "base": base, "runs": results, "failed": list(failed), "table": rows}, indent=1))
    grids = [(f"base model, {c} prompts", f"grids/base-{c}.png") for c in bench.concepts]
    grids += [(f"{r['method']}, {r['concept']}, seed {r['seed']}",
               f"grids/{Task(r['method'], r['concept'], r['seed']).name}.png") for r in results]
    report = ReportData(
        title="Shapes-world bench", settings={"command": command, "minutes": f"{seconds / 60:.1f}",
                                              "concepts": ", ".join(bench.concepts), "seeds": str(bench.seeds),
                                              "training images": str(bench.images)},
        columns=COLUMNS, skipped={},
        rows=[{"label": r["method"], "settings": "", "images": r["runs"], **{k: r[k] for k, _ in COLUMNS}} for r in rows],
        grids=grids, notes=["Every score is read from the images by the exact checker (world/check.py)."])
    (work / "report.html").write_text(render_report(report), encoding="utf-8")


def _write_sweep(work: Path, bench: WorldBench, base: dict, rows: list[dict], command: str) -> None:
    """sweep.md and sweep.json: the table's rows, one per grid point (and method), best subject fidelity first."""
    ranked = sweep_rows(rows)
    grid = ", ".join(f"{k} in {v}" for k, v in bench.sweep.items())
    (work / "sweep.md").write_text(f"Sweep over {grid}, sorted by subject fidelity.\n\n"
                                   + table_markdown(ranked, base, command))
    (work / "sweep.json").write_text(json.dumps({"command": command, "sweep": bench.sweep, "rows": ranked}, indent=1))


def run_bench(bench: WorldBench, out: str | Path, command: str = "personae world bench",
              overwrite: bool = False, on_event: EventHandler = ignore) -> dict:
    """Every task, the base model's scores, the table and report; returns results.json's content."""
    started = time.monotonic()
    out = Path(out)
    with staged_output(out, WORLD_BENCH, replace=overwrite) as work:
        model = bench.model
        if model == "world":  # the model's modules are imported once the output folder is known to be right
            from personae.world.model import write_world_model

            model = str(write_world_model(work / "model"))
        elif not (Path(model) / "model_index.json").is_file():
            raise UserError(f"model {model} is not a diffusers model folder.",
                            "Use `world` (the shipped model) or a `personae world pretrain` output folder.")
        labels = bench.labels
        tasks = [Task(m, c, s) for m in labels for c in bench.concepts for s in range(bench.seeds)]
        on_event(Message(f"{len(tasks)} training runs ({len(labels)} methods or recipes x {len(bench.concepts)} "
                         f"concepts x {bench.seeds} seeds), {bench.workers} at a time"))
        data = bench.model_dump()
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"), initializer=_worker_start) as pool:
            base = pool.submit(_base_task, data, model, str(work)).result()  # this process's threads are left as is
        results, failed = [], []
        on_event(Progress("bench", 0, len(tasks)))
        with ProcessPoolExecutor(max_workers=bench.workers, mp_context=get_context("spawn"),
                                 initializer=_worker_start) as pool:
            futures = {pool.submit(run_task, data, t, model, str(work)): t for t in tasks}
            for done, future in enumerate(as_completed(futures), 1):
                task = futures[future]
                try:
                    results.append(future.result())
                except Exception as err:  # one run's failure must not cost the others' hours: recorded, raised last
                    failed.append({"method": task.method, "concept": task.concept, "seed": task.seed,
                                   "run": f"runs/{task.name}", "error": " ".join(str(err).split())})
                    on_event(Message(f"run {task.name} failed: {failed[-1]['error']}"))
                on_event(Progress("bench", done, len(tasks), {"last": task.name}))
        results.sort(key=lambda r: (labels.index(r["method"]), r["concept"], r["seed"]))
        rows = summarise(results, base, labels)
        _write_outputs(work, bench, results, base, rows, command, time.monotonic() - started, failed)
        if bench.sweep:
            _write_sweep(work, bench, base, rows, command)
    on_event(Message(f"wrote the bench to {out} ({(time.monotonic() - started) / 60:.1f} min)"))
    if failed:
        first = failed[0]
        raise UserError(f"{len(failed)} of {len(tasks)} bench runs failed; the first, {first['run']}: "
                        f"{first['error']}",
                        f"The other runs are scored in {out}/table.md; every failure is listed under \"failed\" in "
                        f"{out}/results.json and its run folder is kept.")
    return json.loads((out / "results.json").read_text())
