"""`personae compare SUITE.yaml --out DIR`: variants x prompts x seeds, grids, metrics, report.html.

DIR/images/<variant>/p<prompt>-s<seed>.png (each with A1111 metadata), DIR/grids/seed-<seed>.png
(rows variants, columns prompts), DIR/controls/<type>-<image>.png (each ControlNet map used, once),
DIR/metrics.csv (one row per variant), DIR/metrics.json (per variant, per prompt and per image, plus
skipped metrics and, with the world metric, the ranking), DIR/runs/<variant>/ (loss curves and
validation grids of run folders), DIR/report.html, DIR/compare.json (the resolved suite).

Everything is written to DIR.partial first and moved into place at the end, so a failed or
interrupted comparison leaves no half-written report behind; a rerun replaces personae's
previous comparison in DIR (and leaves files the user put there alone), and a DIR holding
anything else is refused (outputs.py). Seeds are fixed, so a rerun gives the same images
and numbers.
"""

from __future__ import annotations

import csv
import gc
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from personae.config.compare import CompareSuite
from personae.config.generate import GenerateSettings
from personae.data.images import Rejected, find_images, load_image
from personae.errors import UserError
from personae.evaluation.metrics import Sample, build_metrics
from personae.evaluation.report import ReportData, render_report
from personae.evaluation.suites import PROMPT_SETS, fill
from personae.evaluation.world_metric import check_world_suite, rank_variants, ranking_text
from personae.events import EventHandler, Message, Progress, ignore
from personae.inference.samplers import get_sampler
from personae.inference.session import check_session_inputs, open_session
from personae.inference.txt2img import txt2img
from personae.jobs.compare_controls import prepare_suite_controls, prepared_for, row_units, save_maps
from personae.jobs.compare_plan import Row, expand, slug
from personae.media.grid import labelled_grid, save_image
from personae.media.png import save_png
from personae.outputs import Kind, check_output, staged_output

COMPARISON = Kind("compare", "a comparison", "personae compare", signature=("compare.json", "metrics.json", "report.html"),
                  layout=("images/*", "grids/*", "runs/*", "controls/*", "metrics.csv", "metrics.json", "report.html", "compare.json"))


def load_references(folder: str | None) -> list:
    if not folder:
        return []
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise UserError(f"references: {root} is not a folder.", "Point it at the training images (e.g. a prepared folder).")
    images = [img for p in find_images(root) if not p.name.startswith(("contact_sheet", "grid"))
              and not isinstance(img := load_image(p, min_side=8), Rejected)]
    if not images:
        raise UserError(f"references: {root} holds no readable images.")
    return images


def _generate_group(suite: CompareSuite, model: str, rows: list[Row], prompts: list[str], work: Path, maps: dict,
                    progress, on_event: EventHandler) -> list[tuple[Row, Sample, Path]]:
    """One loaded model for every row that uses it; LoRAs switch on and off by adapter weight."""
    loras = list(dict.fromkeys(p for r in rows for p, *_ in r.loras))
    embeddings = list(dict.fromkeys(e for r in rows for e in r.embeddings))
    session = open_session(model, suite.device, suite.dtype, loras=[(p, 1.0) for p in loras], embeddings=embeddings,
                           on_event=on_event, runtime=suite)
    by_path = dict(zip(loras, session.loras))
    by_file = dict(zip(embeddings, session.embeddings))
    out = []
    for row in rows:
        used_loras = [replace(by_path[p], weight=w, unet_weight=unet[0] if unet else None)  # this row's weights;
                      for p, w, *unet in row.loras]  # the rest off
        used_embeddings = [by_file[e] for e in row.embeddings]
        controls = prepared_for(row, maps)  # generate's ControlNet units, their maps drawn once per comparison
        token = row.token or (used_embeddings[0].token if used_embeddings else suite.token)
        folder = work / "images" / slug(row.label)
        folder.mkdir(parents=True, exist_ok=True)
        for pi, template in enumerate(prompts):
            prompt = fill(template, token, suite.class_word)
            for seed in suite.seeds:
                swept = {k: getattr(row, k) for k in ("steps", "cfg", "sampler") if getattr(row, k) is not None}
                settings = GenerateSettings(**{**suite.sampling(), **swept}, model=model, prompt=prompt, seed=seed,
                                            device=suite.device, dtype=suite.dtype, **row.control_settings())
                image = txt2img(settings, session, loras=used_loras, embeddings=used_embeddings,
                                controls=controls)[0]
                path = save_png(image.image, folder / f"p{pi:02d}-s{seed}.png", image.parameters, image.png_text())
                sample = Sample(image.image, row.label, prompt, pi, seed, fill(template, "", suite.class_word),
                                template)
                out.append((row, sample, path))
                progress()
    del session
    gc.collect()
    return out


def _grids(rows: list[Row], prompts: list[str], seeds: list[int], made, work: Path) -> list[tuple[str, str]]:
    (work / "grids").mkdir()
    cell = {(r.label, s.prompt_index, s.seed): s.image for r, s, _ in made}
    grids = []
    for seed in seeds:
        cells = [[cell[(r.label, pi, seed)] for pi in range(len(prompts))] for r in rows]
        grid = labelled_grid(cells, [r.label for r in rows], prompts, title=f"seed {seed}")
        save_image(grid, work / "grids" / f"seed-{seed}.png")
        grids.append((f"seed {seed}: rows are variants, columns prompts", f"grids/seed-{seed}.png"))
    return grids


def _run_files(rows: list[Row], work: Path) -> list[tuple[str, list[tuple[str, str]]]]:
    """Each run folder's loss curve and validation grids, copied beside the report."""
    runs, seen = [], set()
    for row in rows:
        if not row.run or row.run in seen:
            continue
        seen.add(row.run)
        run = Path(row.run)
        dest = work / "runs" / slug(run.name)
        dest.mkdir(parents=True, exist_ok=True)
        files = []
        for src in [run / "loss.png"] + sorted((run / "validation").glob("*.png")):
            if src.is_file():
                shutil.copy2(src, dest / src.name)
                caption = "loss curve" if src.name == "loss.png" else f"validation {src.stem}"
                files.append((caption, f"runs/{dest.name}/{src.name}"))
        runs.append((f"run {run.name} ({row.run})", files))
    return runs


def _means(entry: dict, images: list[dict], names: list[str]) -> dict:
    """`entry` with the number of images and each metric's mean over them (None where none applies)."""
    entry["images"] = len(images)
    for n in names:
        values = [p["scores"][n] for p in images if p["scores"][n] is not None]
        entry[n] = float(np.mean(values)) if values else None
    return entry


def run_compare(suite: CompareSuite, out: str | Path, on_event: EventHandler = ignore) -> dict:
    out = Path(out)
    # 1. check inputs before loading anything: the output folder, rows, ControlNet units, prompts, samplers, references
    check_output(out, COMPARISON)
    rows = expand(suite)
    maps = prepare_suite_controls(suite)
    prompts = suite.prompts or PROMPT_SETS[suite.prompt_set]
    for name in {r.sampler or suite.sampler for r in rows}:
        get_sampler(name)
    for model, embeddings in dict.fromkeys((r.model, r.embeddings) for r in rows):  # before the metrics' models load
        check_session_inputs(model, loras=[p for r in rows if r.model == model for p, *_ in r.loras],
                             embeddings=[path for path, _ in embeddings])
    references = load_references(suite.references)
    metrics, skipped = build_metrics(suite.metrics, "cpu", bool(references))
    if suite.metrics.world:  # prompts in the world's grammar, shapes-world models only: said before any image
        check_world_suite(suite.metrics.world, prompts, suite.token, suite.class_word,
                          {r.label: r.model for r in rows}, suite.width, suite.height)
    with staged_output(out, COMPARISON) as work:  # 5. the finished folder replaces any previous comparison in DIR
        # 2. generate, one loaded model per distinct model
        total, done = len(rows) * len(prompts) * len(suite.seeds), [0]

        def progress():
            done[0] += 1
            on_event(Progress("compare", done[0], total))

        made = []
        # rows with embeddings get a session of their own: a loaded token could otherwise change another row's prompt
        for model, embeddings in dict.fromkeys((r.model, r.embeddings) for r in rows):
            group = [r for r in rows if (r.model, r.embeddings) == (model, embeddings)]
            made += _generate_group(suite, model, group, prompts, work, maps, progress, on_event)
        order = {r.label: i for i, r in enumerate(rows)}
        made.sort(key=lambda m: (order[m[0].label], m[1].prompt_index, suite.seeds.index(m[1].seed)))
        # 3. metrics per image, then means per variant
        samples = [s for _, s, _ in made]
        scores = {}
        for metric in metrics:
            on_event(Message(f"computing {metric.name}"))
            scores[metric.name] = metric.score(samples, references)
        names = [m.name for m in metrics]
        per_image = [{"file": path.relative_to(work).as_posix(), "variant": s.variant, "prompt": s.prompt,
                      "prompt_index": s.prompt_index, "seed": s.seed, "scores": {n: scores[n][i] for n in names}}
                     for i, (_, s, path) in enumerate(made)]
        table = []
        for row in rows:
            mine = [p for p in per_image if p["variant"] == row.label]
            entry = {"label": row.label, "settings": ", ".join(f"{k} {v}" for k, v in row.settings.items()),
                     "images": len(mine)}
            if row.controls:
                entry["controls"] = [dict(u.model_dump(), start=row.control_start, end=row.control_end)
                                     for u in row.controls]
            for n in names:
                values = [p["scores"][n] for p in mine if p["scores"][n] is not None]
                entry[n] = float(np.mean(values)) if values else None
                if n == "face" and len(values) < len(mine):
                    entry["no_face"] = len(mine) - len(values)
            table.append(entry)
        per_prompt = [_means({"variant": row.label, "prompt": fill(t, row.token or suite.token, suite.class_word)},
                             [p for p in per_image if p["variant"] == row.label and p["prompt_index"] == pi], names)
                      for row in rows for pi, t in enumerate(prompts)]
        ranking = rank_variants(table) if suite.metrics.world else []
        # 4. files: grids, tables, run curves, report
        grids = _grids(rows, [fill(p, suite.token, suite.class_word) for p in prompts], suite.seeds, made, work)
        runs = _run_files(rows, work)
        units = row_units(rows, save_maps(maps, work)) if maps else []
        with open(work / "metrics.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["variant", "settings", "images"] + names)
            for entry in table:
                writer.writerow([entry["label"], entry["settings"], entry["images"]]
                                + ["" if entry[n] is None else f"{entry[n]:.6f}" for n in names])
        result = {"variants": table, "prompts": per_prompt, "images": per_image, "skipped": skipped, "metrics": names,
                  "ranking": ranking}
        (work / "metrics.json").write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
        notes = [f'{e["label"]}: no face found in {e["no_face"]} image(s)' for e in table if e.get("no_face")]
        titles = {m.name: m.title for m in metrics}
        report = ReportData(
            "personae compare", {"base model": suite.base_model, "prompts": str(len(prompts)),
                                 "seeds": ", ".join(map(str, suite.seeds)), "steps": str(suite.steps),
                                 "CFG": f"{suite.cfg:g}", "sampler": suite.sampler,
                                 "references": f"{len(references)} image(s) from {suite.references}" if references else "none"},
            [(n, titles[n]) for n in names], table, skipped, grids, runs, per_image, notes, units, per_prompt,
            ranking_text(ranking))
        (work / "report.html").write_text(render_report(report), encoding="utf-8")
        (work / "compare.json").write_text(json.dumps({"suite": suite.model_dump(by_alias=True),
                                                       "rows": [r.label for r in rows]}, indent=1), encoding="utf-8")
    for name, why in skipped.items():
        on_event(Message(f"skipped {name}: {why}", "warning"))
    on_event(Message(f"compare: {len(made)} images, {len(rows)} variants; report at {out / 'report.html'}"))
    return result
