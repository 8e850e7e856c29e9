"""File size at full SD-1.5 size of world-bench LoRA recipes: what a user's file of each recipe weighs.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lora_sizes.py lora "lora:variant=dora" "lora:rank=32,alpha=32"

Each argument is a `personae world bench --methods` recipe over a lora or pivotal bench recipe (world/
bench_recipes.py). Its `lora` section is put on the SD-1.5 UNet and text encoder built from the shipped
configs (zero weights: methods/lora_size.py) and exported as training exports it, with fp16 tensors
(`output_dtype: fp16`, kohya's --save_precision fp16; fp32 is twice the size). Prints a markdown table of
the kohya / LyCORIS file (`lora.safetensors`, the file users share) per recipe. About 4 GB of memory and a
few seconds per recipe. A pivotal recipe's embedding file (768 numbers per token vector) is not counted.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open

from personae.cli.main import quiet_libraries
from personae.config.train import LoraSection
from personae.methods.lora_size import sd15_lora_file
from personae.world.bench_settings import WorldBench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("recipes", nargs="+", help="bench recipes, e.g. lora or lora:variant=dora,rank=16")
    parser.add_argument("--dtype", choices=["fp16", "fp32"], default="fp16")
    args = parser.parse_args()
    quiet_libraries()
    torch.set_num_threads(1)
    dtype = {"fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    bench = WorldBench(methods=args.recipes)
    print(f"| recipe | lora section | tensors | file size at SD-1.5 ({args.dtype}) |")
    print("|---|---|---|---|")
    for recipe in args.recipes:
        lora = LoraSection.model_validate(bench.job(recipe).get("lora", {}))
        with tempfile.TemporaryDirectory() as tmp:
            path = sd15_lora_file(lora, Path(tmp), dtype)
            size = path.stat().st_size
            with safe_open(str(path), "pt") as fh:
                count = len(list(fh.keys()))
        shape = lora.model_dump(exclude_defaults=True)
        print(f"| {recipe} | {shape} | {count} | {size / 1e6:.1f} MB |", flush=True)


if __name__ == "__main__":
    main()
