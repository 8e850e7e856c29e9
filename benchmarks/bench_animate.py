"""AnimateDiff clips: `personae animate` against a bare diffusers AnimateDiffPipeline, on the same model, motion
adapter, sampler (DDIM on AnimateDiff's schedule), steps, frames, size, guidance and seed.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_animate.py --size full --frames 8 --resolution 128 --steps 2 --repeats 2
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_animate.py --size tiny --repeats 1   # smoke

`--size full` is the SD-1.5 model of bench_generate.py with a motion adapter of AnimateDiff v2's shape (diffusers'
MotionAdapter defaults: 453 M parameters, a mid-block module, 32 positions), both with seeded random weights, written
once to the cache folder. Each side runs in a process of its own, interleaved over repeats, so each peak is its
own. Per run: the time to load, the time per denoising step (the mean gap between step callbacks, after the first),
the process's peak resident memory while loading and while drawing, and the weights the clip's pipeline holds (the
distinct tensor storages of its modules: on a GPU, what goes to the GPU). personae's run also reports what the
loaded model it builds on holds, and both together.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import GB, PeakRss, machine, model_folder, write_json  # noqa: E402

PROMPT = "a photo of a cat walking"


def motion_folder(size: str, cache: Path) -> Path:
    """A motion adapter for the model of `size`: AnimateDiff v2's shape at full size, the tiny one otherwise."""
    import torch
    from diffusers import MotionAdapter

    from personae.models.tiny_motion import write_tiny_motion_adapter

    folder = cache / ("motion-random-full" if size == "full" else "tiny-motion")
    if (folder / "config.json").is_file():
        return folder
    if size != "full":
        return write_tiny_motion_adapter(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        adapter = MotionAdapter()  # diffusers' defaults are mm_sd_v15_v2's shape
    work = folder.with_name(folder.name + ".partial")
    adapter.save_pretrained(str(work))
    work.rename(folder)
    return folder


def storage_bytes(modules) -> int:
    """Bytes of the distinct storages behind the modules' parameters and buffers (shared tensors count once)."""
    seen = {}
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def modules_of(pipe) -> list:
    import torch

    return [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]


def child(a) -> None:
    import torch

    from personae.cli.main import quiet_libraries

    quiet_libraries()
    stamps: list[float] = []
    peak = PeakRss()
    peak.start()
    start = time.perf_counter()
    if a.child == "personae":
        from personae.config.animate import AnimateSettings
        from personae.inference.animate import animate, open_for

        settings = AnimateSettings(model=a.model, motion_adapter=a.motion, prompt=PROMPT, negative="", steps=a.steps,
                                   frames=a.frames, width=a.resolution, height=a.resolution, seed=0, sampler="DDIM",
                                   cfg=7.5, device="cpu")
        held = open_for(settings)
        pipe = held.pipe
        loaded = modules_of(held.session.pipe)
        extra = {"model_gb": storage_bytes(loaded) / GB, "held_gb": storage_bytes([*loaded, *modules_of(pipe)]) / GB}

        def run():
            animate(settings, held, on_event=lambda e: stamps.append(time.perf_counter())
                    if getattr(e, "stage", "") == "denoise" else None)
    else:
        from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter

        from personae.inference.animate import MOTION_SCHEDULE

        adapter = MotionAdapter.from_pretrained(a.motion)
        pipe = AnimateDiffPipeline.from_pretrained(a.model, motion_adapter=adapter, local_files_only=True)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, **MOTION_SCHEDULE)
        pipe.set_progress_bar_config(disable=True)
        extra = {}

        def run():
            def step_end(p, step, timestep, kwargs):
                stamps.append(time.perf_counter())
                return kwargs

            pipe(PROMPT, negative_prompt="", num_frames=a.frames, num_inference_steps=a.steps, guidance_scale=7.5,
                 width=a.resolution, height=a.resolution, generator=torch.Generator().manual_seed(0),
                 callback_on_step_end=step_end, output_type="np")
    load_s = time.perf_counter() - start
    load_peak = peak.stop()
    draw = PeakRss()
    draw.start()
    start = time.perf_counter()
    run()
    total = time.perf_counter() - start
    draw_peak = draw.stop()
    per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else None
    print("RESULT " + json.dumps({"load_s": load_s, "clip_s": total, "per_step_s": per_step,
                                  "load_peak_gb": load_peak / GB, "draw_peak_gb": draw_peak / GB,
                                  "pipeline_gb": storage_bytes(modules_of(pipe)) / GB, **extra}), flush=True)


def run_child(args, side: str, model: Path, motion: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", side, "--model", str(model), "--motion", str(motion), "--frames",
           str(args.frames), "--resolution", str(args.resolution), "--steps", str(args.steps)]
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    lines = [line for line in text.splitlines() if line.startswith("RESULT ")]
    if code or not lines:
        raise SystemExit(f"{side} failed:\n{text[-3000:]}")
    return {**json.loads(lines[-1][7:]), "process_peak_gb": usage.ru_maxrss * 1024 / GB}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=None, help="default: 128 (full), 64 (tiny)")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps (the first is not timed per step)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sides", nargs="+", choices=["personae", "bare"], default=["personae", "bare"])
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "personae-bench"))
    parser.add_argument("--json", default=None, help="default: benchmarks/results/animate-<size>.json")
    parser.add_argument("--child", choices=["personae", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--motion", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    args.resolution = args.resolution or (128 if args.size == "full" else 64)
    cache = Path(args.cache)
    model, motion = model_folder(args.size, cache), motion_folder(args.size, cache)
    runs: dict[str, list[dict]] = {side: [] for side in args.sides}
    for repeat in range(args.repeats):
        for side in runs:
            runs[side].append(run_child(args, side, model, motion))
            r = runs[side][-1]
            print(f"repeat {repeat + 1}: {side}: load {r['load_s']:.1f} s, {r['per_step_s'] or float('nan'):.2f} "
                  f"s/step, peak {r['process_peak_gb']:.2f} GB", flush=True)

    def mean(side, key):
        values = [r[key] for r in runs[side] if r.get(key) is not None]
        return sum(values) / len(values) if values else None

    keys = ["load_s", "per_step_s", "load_peak_gb", "draw_peak_gb", "process_peak_gb", "pipeline_gb"]
    rows = {side: {k: mean(side, k) for k in keys} for side in runs}
    if "personae" in rows:
        rows["personae"].update(model_gb=mean("personae", "model_gb"), held_gb=mean("personae", "held_gb"))
    print(f"\n{args.size} model, {args.resolution} px, {args.frames} frames, DDIM {args.steps} steps, cfg 7.5, "
          f"{args.repeats} repeats, threads {machine()['threads']}")
    print(f"{'run':<18}" + "".join(f"{k:>17}" for k in keys))
    for side, row in rows.items():
        print(f"{side:<18}" + "".join(f"{row[k]:17.3f}" if row[k] is not None else f"{'-':>17}" for k in keys))
    ratios = {}
    if len(rows) == 2:
        ratios = {k: rows["personae"][k] / rows["bare"][k] for k in keys if rows["personae"][k] and rows["bare"][k]}
        print("personae / bare: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
    if "personae" in rows:
        print(f"personae: the loaded model holds {rows['personae']['model_gb']:.2f} GB, with the clip's pipeline "
              f"{rows['personae']['held_gb']:.2f} GB in all")
    path = args.json or Path(__file__).parent / "results" / f"animate-{args.size}.json"
    write_json(path, {"benchmark": "animate", "size": args.size, "resolution": args.resolution,
                      "frames": args.frames, "steps": args.steps, "repeats": args.repeats,
                      "command": " ".join(sys.argv), "machine": machine(), "rows": rows, "runs": runs,
                      "ratios": ratios})
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
