"""Training step: personae's loop vs a plain diffusers + peft loop, on the same data, model and settings.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_train.py --size full --batches 1 2 --repeats 3
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_train.py --size tiny --repeats 1 --steps 1   # smoke

The plain loop is the recipe of diffusers' example scripts: encode the latents and the captions every
step, noise, UNet, MSE, AdamW (LoRA through peft, or the whole UNet for DreamBooth). personae runs its
real `personae train` loop on a job with the same model, data, batch, LoRA shape and optimizer.

Every configuration runs in a process of its own (interleaved: repeat 1 of every configuration, then
repeat 2, ...), so the memory one leaves behind never counts against the next. Per configuration:
  - s / step: the mean over the timed steps after one warm-up step;
  - step peak RSS: the process's resident memory sampled every 20 ms during the timed steps (benchmarks/
    common.py PeakRss); the process-wide maximum (ru_maxrss of that child, from os.wait4) is recorded too,
    but includes loading, which can peak higher than training;
  - peak CUDA memory (torch.cuda.max_memory_allocated) when on a GPU;
  - personae's memory estimate for the run (training/memory.py), to set beside the measured peak.
personae's run is ended after its timed steps (no exports), as only the step is compared; with --saves it goes
on to its final save (exports written and checked, the validation grid) and that phase's peak is recorded too,
as anonymous memory (without the pages of the model files mapped while they are read), beside the estimate's
"saves" figure (printed when the saves need more than the steps; else the steps' figure stands for both).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import GB, PeakRss, cuda_peak, machine, model_folder, write_json  # noqa: E402

CONFIGS = {  # name: (loop, gradient checkpointing, caching of latents and captions, mixed precision)
    "plain": ("plain", False, False, "no"), "plain-gc": ("plain", True, False, "no"),
    "personae-nocache": ("personae", False, False, "no"), "personae": ("personae", False, True, "no"),
    "personae-nocache-gc": ("personae", True, False, "no"), "personae-gc": ("personae", True, True, "no"),
    # bf16 mixed precision: diffusers' train_text_to_image_lora.py recipe (the frozen models cast to bf16, the
    # LoRA kept fp32, the forward under autocast) against personae's train.mixed_precision: bf16
    "plain-bf16": ("plain", False, False, "bf16"), "personae-nocache-bf16": ("personae", False, False, "bf16"),
    "personae-bf16": ("personae", False, True, "bf16"), "personae-bf16-gc": ("personae", True, True, "bf16"),
    # kohya's --full_bf16: what trains is bf16 too (the plain side: the whole pipeline cast to bf16, AdamW on it)
    "plain-full-bf16": ("plain", False, False, "full_bf16"), "personae-full-bf16": ("personae", False, True, "full_bf16"),
}
PLAIN_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # diffusers' LoRA script's layers; personae's job gets the same
REFERENCE = {"personae-nocache": "plain", "personae": "plain", "personae-nocache-gc": "plain-gc",
             "personae-gc": "plain-gc", "plain-gc": "plain", "plain-bf16": "plain",
             "personae-nocache-bf16": "plain-bf16", "personae-bf16": "plain-bf16", "personae-bf16-gc": "personae-bf16",
             "plain-full-bf16": "plain", "personae-full-bf16": "plain-full-bf16"}


class Enough(Exception):
    """Raised from the event handler once the timed steps are done: the run ends there, nothing is exported."""


def eight_bit(method: str) -> bool:
    import importlib.util

    import torch

    return method == "dreambooth" and torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None


# ---------------------------------------------------------------- the child: one configuration, one process

def plain_loop(a, peak: PeakRss) -> dict:
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from peft import LoraConfig

    from personae.data.dataset import examples_from_prepared, load_pixels
    from personae.models.resolve import load_pipeline, resolve_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_pipeline(resolve_model(a.model)).to(device)
    for part in (pipe.unet, pipe.vae, pipe.text_encoder):
        part.requires_grad_(False)
    half = (a.precision == "bf16" and a.method == "lora"  # diffusers' LoRA script: the frozen models in bf16
            or a.precision == "full_bf16")  # kohya's full_bf16: everything, what trains too
    if half:
        for part in (pipe.unet, pipe.vae, pipe.text_encoder):
            part.to(dtype=torch.bfloat16)
    if a.method == "lora":
        pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=PLAIN_TARGETS, init_lora_weights="gaussian"))
        if half and a.precision == "bf16":
            from diffusers.training_utils import cast_training_params

            cast_training_params(pipe.unet, dtype=torch.float32)
    else:
        pipe.unet.requires_grad_(True)
    if a.gc:
        pipe.unet.enable_gradient_checkpointing()
    params = [p for p in pipe.unet.parameters() if p.requires_grad]
    if eight_bit(a.method):
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW8bit(params, lr=1e-5)
    else:
        optimizer = torch.optim.AdamW(params, lr=1e-4 if a.method == "lora" else 1e-6)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    examples = examples_from_prepared(Path(a.prepared))
    pixels = torch.stack([torch.from_numpy(load_pixels(e.image)) for e in examples])
    ids = pipe.tokenizer([e.caption for e in examples], padding="max_length", max_length=77, truncation=True,
                         return_tensors="pt").input_ids
    pipe.unet.train()
    stamps = []
    for step in range(a.steps + 1):
        pick = torch.arange(step * a.batch, (step + 1) * a.batch) % len(examples)
        autocast = torch.autocast(device.type, torch.bfloat16, enabled=a.precision != "no")
        with torch.no_grad(), autocast:
            latents = pipe.vae.encode(pixels[pick].to(device, pipe.vae.dtype)).latent_dist.sample()
            latents = latents.float() * pipe.vae.config.scaling_factor
            embeds = pipe.text_encoder(ids[pick].to(device))[0]
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (a.batch,), device=device)
        with autocast:
            pred = pipe.unet(noise_scheduler.add_noise(latents, noise, t), t, embeds).sample
        F.mse_loss(pred.float(), noise.float()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        if step == 0:
            peak.start()
    return {"s_per_step": (stamps[-1] - stamps[0]) / a.steps}


def personae_loop(a, peak: PeakRss) -> dict:
    from personae.config.train import TrainJob
    from personae.jobs.train import run_training

    job = TrainJob(base_model=a.model, method=a.method, data={"path": a.prepared}, output=a.out,
                   lora={"rank": 4, "alpha": 4, "target_modules": PLAIN_TARGETS},  # the plain loop's layers
                   train={"steps": a.steps + (1 if a.saves else 2), "batch_size": a.batch, "verify_exports": a.saves,
                          "learning_rate": 1e-4 if a.method == "lora" else 1e-6,
                          "optimizer": "adamw8bit" if eight_bit(a.method) else "adamw",
                          "gradient_checkpointing": a.gc, "cache_latents": "memory" if a.cached else "none",
                          "mixed_precision": "no" if a.precision == "no" else "bf16",
                          "full_bf16": a.precision == "full_bf16",
                          "cache_text_encoder_outputs": a.cached, "validation": {"steps": 1}})
    stamps, estimate, measured = [], {}, {}
    save_peak = PeakRss(anonymous=True) if a.saves else None

    def on_event(event):
        text = getattr(event, "text", "")
        if text.startswith("memory: about"):
            words = text.split()
            estimate.update(without_gc=float(words[2]), with_gc=float(words[words.index("checkpointing") + 2]))
            if "saves about" in text:
                estimate["saves"] = float(text.split("saves about ")[1].split()[0])
        if getattr(event, "stage", "") == "train":
            stamps.append(time.perf_counter())
            if len(stamps) == 1:
                peak.start()
            if len(stamps) == a.steps + 1:
                if save_peak is None:
                    raise Enough
                measured["step_peak_gb"] = peak.stop() / GB  # the last step is done: the final save follows
                save_peak.start()

    try:
        run_training(job, overwrite=True, on_event=on_event)
    except Enough:
        pass
    if save_peak is not None:
        measured.update(save_peak_gb=save_peak.stop() / GB, save_estimate_gb=estimate.get("saves"))
    gb = estimate.get("with_gc" if a.gc else "without_gc")
    return {"s_per_step": (stamps[-1] - stamps[0]) / a.steps, "estimate_gb": gb, **measured}


def child(a) -> None:
    import resource

    from personae.cli.main import quiet_libraries

    quiet_libraries()
    peak = PeakRss()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = (plain_loop if a.loop == "plain" else personae_loop)(a, peak)
    step_peak = peak.stop() / GB  # (--saves: stopped already, at the last step)
    result.update(step_peak_gb=result.get("step_peak_gb", step_peak), libraries_gb=base / GB,
                  cuda_peak_gb=(cuda_peak() or 0) / GB or None)
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------- the parent: data, model, interleaved runs

def run_child(args, name: str, method: str, batch: int, model: Path, prepared: Path, work: Path) -> dict:
    loop, gc, cache, precision = CONFIGS[name]
    cmd = [sys.executable, __file__, "--child", "--loop", loop, "--method", method, "--batch", str(batch),
           "--steps", str(args.steps), "--model", str(model), "--prepared", str(prepared), "--precision", precision,
           "--out", str(work / f"run-{name}-{method}-{batch}")] + (["--gc"] if gc else []) \
        + (["--cached"] if cache else []) + (["--saves"] if args.saves and loop == "personae" else [])
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own resource use, its max RSS among it
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    shutil.rmtree(work / f"run-{name}-{method}-{batch}", ignore_errors=True)  # its exports: GBs for a DreamBooth model
    lines = [line for line in text.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"{name} {method} batch {batch} failed:\n{text[-3000:]}")
    return {**json.loads(lines[-1][7:]), "process_peak_gb": usage.ru_maxrss * 1024 / GB}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--methods", nargs="+", choices=["lora", "dreambooth"], default=["lora", "dreambooth"])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--resolution", type=int, default=None, help="default: 256 (full), 64 (tiny)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps, after one warm-up step")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "personae-bench"),
                        help="where the model is written once and reused")
    parser.add_argument("--json", default=None, help="default: benchmarks/results/train-<size>.json")
    parser.add_argument("--saves", action="store_true",
                        help="personae's runs go on to their final save (exports checked): its peak memory too")
    # the child's own options
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--loop", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--prepared", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--gc", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="no", help=argparse.SUPPRESS)
    parser.add_argument("--cached", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    from personae.cli.main import quiet_libraries
    from personae.config.prepare import PrepareSettings
    from personae.data.prepare import prepare_dataset
    from personae.data.samples import write_sample_subject

    quiet_libraries()
    resolution = args.resolution or (256 if args.size == "full" else 64)
    cache = Path(args.cache)
    model = model_folder(args.size, cache)
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    write_sample_subject(work / "photos", count=8, size=max(128, resolution))
    prepare_dataset(work / "photos", work / "prepared", PrepareSettings(resolution=resolution))
    rows: dict[tuple, list[dict]] = {}
    for repeat in range(args.repeats):
        for method in args.methods:
            for batch in args.batches:
                for name in args.configs:
                    r = run_child(args, name, method, batch, model, work / "prepared", work)
                    rows.setdefault((method, batch, name), []).append(r)
                    print(f"repeat {repeat + 1}: {method} batch {batch} {name}: {r['s_per_step']:.3f} s/step, "
                          f"step peak {r['step_peak_gb']:.2f} GB", flush=True)
    report(args, resolution, rows)
    shutil.rmtree(work, ignore_errors=True)  # the benchmark's own folder (photos, prepared set)


def report(args, resolution: int, rows: dict) -> None:
    def mean(items, key):
        values = [r[key] for r in items if r.get(key) is not None]
        return sum(values) / len(values) if values else None

    table = []
    for (method, batch, name), items in rows.items():
        entry = {"method": method, "batch": batch, "config": name, "repeats": len(items)}
        for key in ("s_per_step", "step_peak_gb", "process_peak_gb", "libraries_gb", "cuda_peak_gb", "estimate_gb",
                    "save_peak_gb", "save_estimate_gb"):
            entry[key] = mean(items, key)
        entry["runs"] = items
        table.append(entry)
    by = {(e["method"], e["batch"], e["config"]): e for e in table}
    for e in table:
        ref = by.get((e["method"], e["batch"], REFERENCE.get(e["config"], "")))
        e["time_ratio"] = e["s_per_step"] / ref["s_per_step"] if ref else None
        e["memory_ratio"] = e["step_peak_gb"] / ref["step_peak_gb"] if ref else None
        gc_off = by.get((e["method"], e["batch"], e["config"].removesuffix("-gc"))) if e["config"].endswith("-gc") \
            else None
        e["gc_memory_ratio"] = e["step_peak_gb"] / gc_off["step_peak_gb"] if gc_off else None
        e["estimate_error"] = e["estimate_gb"] / e["step_peak_gb"] - 1 if e["estimate_gb"] else None
    print(f"\n{args.size} model, {resolution} px, {args.steps} timed steps, {args.repeats} repeats, "
          f"threads {os.environ.get('OMP_NUM_THREADS', '?')}")
    head = f"{'method':<11}{'batch':>5} {'config':<20}{'s/step':>9}{'x ref':>7}{'peak GB':>9}{'x ref':>7}" \
           f"{'gc x':>6}{'est GB':>8}{'est err':>8}"
    print(head)

    def f(v, spec):
        return format(v, spec) if v is not None else format("-", ">" + spec.lstrip("+").split(".")[0])

    for e in table:
        print(f"{e['method']:<11}{e['batch']:>5} {e['config']:<20}{f(e['s_per_step'], '9.3f')}"
              f"{f(e['time_ratio'], '7.2f')}{f(e['step_peak_gb'], '9.2f')}{f(e['memory_ratio'], '7.2f')}"
              f"{f(e['gc_memory_ratio'], '6.2f')}{f(e['estimate_gb'], '8.1f')}{f(e['estimate_error'], '+8.0%')}")
    print("x ref: personae-X over plain-X (gc over gc); gc x: with gradient checkpointing over without; est err: the "
          "estimate over the measured step peak RSS")
    saved = [e for e in table if e["save_peak_gb"] is not None]
    if saved:
        print(f"\n{'method':<11}{'batch':>5} {'config':<20}{'step GB':>9}{'save GB':>9}{'x step':>8}{'est GB':>8}"
              f"{'est err':>8}")
        for e in saved:
            est = e["save_estimate_gb"] or e["estimate_gb"]  # no saves figure: the steps' stands for both
            print(f"{e['method']:<11}{e['batch']:>5} {e['config']:<20}{f(e['step_peak_gb'], '9.2f')}"
                  f"{f(e['save_peak_gb'], '9.2f')}{f(e['save_peak_gb'] / e['step_peak_gb'], '8.2f')}"
                  f"{f(est, '8.1f')}{f(est / e['save_peak_gb'] - 1 if est else None, '+8.0%')}")
        print("save GB: the final save's peak (exports written and checked, the validation grid), anonymous memory; "
              "est: the estimate's saves figure (the steps' when it prints none)")
    path = args.json or Path(__file__).parent / "results" / f"train-{args.size}.json"
    write_json(path, {"benchmark": "train", "size": args.size, "resolution": resolution, "steps": args.steps,
                      "repeats": args.repeats, "command": " ".join(sys.argv), "machine": machine(), "rows": table})
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
