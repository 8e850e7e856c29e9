"""txt2img: personae (A1111 prompt encoder, per-image generators, NaN guard, metadata) vs a bare
StableDiffusionPipeline call, on the same model, sampler, steps, size, seed and batch.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_generate.py --size full --steps 20 --repeats 3
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_generate.py --size tiny --steps 2 --repeats 1   # smoke

One process, both loaded once (they share nothing: personae's session and a pipeline from the same
folder), interleaved repeats (personae, bare, personae, bare, ...) after one warm-up call each.
Per run: the wall time of the call (end to end: prompt encoding, the denoising loop, VAE decode, PIL
images) and the time per denoising step (the mean gap between step-end callbacks). Peak RSS is the
process's, for both together; bench_train.py measures memory per configuration.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import GB, PeakRss, machine, model_folder, write_json  # noqa: E402

PROMPT = "a photo of a cat, (sharp:1.2)"
BARE_PROMPT = "a photo of a cat, sharp"  # the bare pipeline has no emphasis syntax: the same tokens, unweighted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--resolution", type=int, default=None, help="default: 256 (full), 64 (tiny)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sampler", default="DPM++ 2M Karras")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "personae-bench"))
    parser.add_argument("--json", default=None, help="default: benchmarks/results/generate-<size>.json")
    parser.add_argument("--token-merging", type=float, default=0.0,
                        help="also time personae with A1111's Token merging ratio (ToMe) at this ratio")
    args = parser.parse_args()

    import torch
    from diffusers import StableDiffusionPipeline

    from personae.cli.main import quiet_libraries
    from personae.config.generate import GenerateSettings
    from personae.inference.samplers import get_sampler
    from personae.inference.session import open_session
    from personae.inference.txt2img import txt2img

    quiet_libraries()
    resolution = args.resolution or (256 if args.size == "full" else 64)
    folder = model_folder(args.size, Path(args.cache))
    peak = PeakRss()
    peak.start()
    session = open_session(str(folder))
    bare = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None, requires_safety_checker=False,
                                                   local_files_only=True).to(session.device)
    bare.set_progress_bar_config(disable=True)
    bare.scheduler = get_sampler(args.sampler).make(dict(bare.scheduler.config))  # the same scheduler class, options
    settings = GenerateSettings(model=str(folder), prompt=PROMPT, steps=args.steps, batch_size=args.batch, seed=0,
                                sampler=args.sampler, width=resolution, height=resolution)
    stamps: list[float] = []

    def personae_run():
        txt2img(settings, session, on_event=lambda e: stamps.append(time.perf_counter())
                if getattr(e, "stage", "") == "denoise" else None)

    def bare_run():
        def step_end(pipe, step, timestep, kwargs):
            stamps.append(time.perf_counter())
            return kwargs

        bare(BARE_PROMPT, num_inference_steps=args.steps, num_images_per_prompt=args.batch, height=resolution,
             width=resolution, generator=torch.Generator().manual_seed(0), callback_on_step_end=step_end)

    def timed(run) -> tuple[float, float | None]:
        stamps.clear()
        start = time.perf_counter()
        run()
        total = time.perf_counter() - start
        per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else None
        return total, per_step

    runs = {"personae": personae_run, "bare": bare_run}
    if args.token_merging:
        merged = settings.model_copy(update={"token_merging": args.token_merging})
        runs["personae ToMe"] = lambda: txt2img(merged, session, on_event=lambda e: stamps.append(
            time.perf_counter()) if getattr(e, "stage", "") == "denoise" else None)
    for run in runs.values():
        run()  # warm-up
    results: dict[str, list[tuple[float, float | None]]] = {name: [] for name in runs}
    for repeat in range(args.repeats):
        for name, run in runs.items():
            results[name].append(timed(run))
            total, step = results[name][-1]
            print(f"repeat {repeat + 1}: {name}: {total:.3f} s, {step or float('nan'):.3f} s/step", flush=True)
    peak_gb = peak.stop() / GB

    def mean(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    rows = {name: {"end_to_end_s": mean([t for t, _ in r]), "per_step_s": mean([s for _, s in r]), "runs": r}
            for name, r in results.items()}
    ours, theirs = rows["personae"], rows["bare"]
    ratio_total = ours["end_to_end_s"] / theirs["end_to_end_s"]
    ratio_step = ours["per_step_s"] / theirs["per_step_s"] if ours["per_step_s"] and theirs["per_step_s"] else None
    print(f"\n{args.size} model, {resolution} px, {args.sampler}, {args.steps} steps, batch {args.batch}, "
          f"{args.repeats} repeats, threads {torch.get_num_threads()}, device {session.device}")
    print(f"{'run':<22}{'s / call':>10}{'s / step':>10}")
    shown = [("bare diffusers", theirs), ("personae txt2img", ours)]
    merged_row = rows.get("personae ToMe")
    if merged_row:
        shown.append((f"personae ToMe {args.token_merging:g}", merged_row))
    for name, row in shown:
        step = f"{row['per_step_s']:10.3f}" if row["per_step_s"] else f"{'-':>10}"
        print(f"{name:<22}{row['end_to_end_s']:10.3f}{step}")
    print(f"ratio personae / bare: end to end {ratio_total:.3f}, per step "
          f"{f'{ratio_step:.3f}' if ratio_step else '-'}   (process peak RSS {peak_gb:.2f} GB)")
    ratio_merged = None
    if merged_row and merged_row["per_step_s"] and theirs["per_step_s"]:
        ratio_merged = merged_row["per_step_s"] / theirs["per_step_s"]
        print(f"ratio personae with Token merging {args.token_merging:g} / bare: end to end "
              f"{merged_row['end_to_end_s'] / theirs['end_to_end_s']:.3f}, per step {ratio_merged:.3f}")
    path = args.json or Path(__file__).parent / "results" / f"generate-{args.size}.json"
    write_json(path, {"benchmark": "generate", "size": args.size, "resolution": resolution, "steps": args.steps,
                      "batch": args.batch, "sampler": args.sampler, "repeats": args.repeats,
                      "command": " ".join(sys.argv), "machine": machine(), "rows": rows,
                      "ratio_end_to_end": ratio_total, "ratio_per_step": ratio_step, "peak_rss_gb": peak_gb,
                      **({"token_merging": args.token_merging, "ratio_per_step_token_merging": ratio_merged}
                         if args.token_merging else {})})
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
