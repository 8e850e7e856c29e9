"""The demo's kohya section: a kohya_ss / sd-scripts training config, as its users keep it beside their images (a
`--config_file` TOML and a `--dataset_config` TOML of two subsets with their own repeats, captions as .txt files,
sample prompts with kohya's --n / --s / --l / --d options), trained by `personae train config.toml` as it is; the
LoRA it writes draws the star on backgrounds its pictures never had, read back by the exact checker.
"""

from __future__ import annotations

import json
from pathlib import Path

from personae.events import EventHandler, Message

DATASET = """[general]
caption_extension = ".txt"

[[datasets]]
resolution = 32
batch_size = 4

  [[datasets.subsets]]
  image_dir = "img/close"
  num_repeats = 2

  [[datasets.subsets]]
  image_dir = "img/medium"
  num_repeats = 1
"""
CONFIG = """pretrained_model_name_or_path = "../models/world"
dataset_config = "dataset.toml"
output_dir = "runs"
output_name = "star_kohya"
network_module = "networks.lora"
network_dim = 8
network_alpha = 8
network_args = [ "conv_dim=8", "conv_alpha=8",]
network_train_unet_only = true
learning_rate = 0.001
lr_scheduler = "constant"
optimizer_type = "AdamW"
max_train_steps = 300
seed = 0
mixed_precision = "no"
save_precision = "float"
save_model_as = "safetensors"
cache_latents = true
max_data_loader_n_workers = 0
xformers = true
sample_prompts = "prompts.txt"
sample_sampler = "ddim"
metadata_author = "the personae demo"
training_comment = "a white star; trigger: star"
"""
PROMPTS = "a white star on a blue background, close-up --n a circle --s 10 --l 4 --d 0\n"
DRAWN = ["a white star on a red background, close-up", "a white star on a yellow background, medium shot"]


def world_kohya(out: Path, model: Path, index, on_event: EventHandler) -> None:
    """Section "A kohya config, trained as it is"."""
    from personae.config.addons import LoraRef
    from personae.config.generate import GenerateSettings
    from personae.jobs.generate import run_generate
    from personae.jobs.train import load_job, run_training
    from personae.methods.lora_files import training_metadata
    from personae.staging import write_text
    from personae.world.check import agreement, check
    from personae.world.render import render_world
    from personae.world.render_settings import WorldRender
    from personae.world.scene import parse_prompt

    here = out / "world-kohya"
    on_event(Message("a kohya config with a dataset_config of two subsets, trained as it is"))
    for folder, shot, seed in (("close", "close-up", 2), ("medium", "medium", 3)):
        render_world(WorldRender(shapes="star", colours="white", backgrounds="blue,green", shots=shot, count=4,
                                 seed=seed), here / "img" / folder)
    write_text(here / "dataset.toml", DATASET)
    write_text(here / "config.toml", CONFIG)
    write_text(here / "prompts.txt", PROMPTS)
    notes: list[str] = []
    job = load_job(here / "config.toml", notes=notes)
    run_training(job, overwrite=True, on_event=on_event)
    lora = here / "runs/star_kohya/star_kohya.safetensors"
    header = training_metadata(lora)
    made = []
    for i, prompt in enumerate(DRAWN * 2):
        made += run_generate(GenerateSettings(model=str(model), prompt=prompt, seed=i, loras=[LoraRef(path=str(lora))]),
                             here / "generate", on_event)
    right = sum(agreement(check(_open(p)), parse_prompt(t))["all"] for p, t in zip(made, DRAWN * 2))
    dirs = json.loads(header["ss_dataset_dirs"])
    said = "; ".join(n.split(" (")[0] for n in notes)
    index.add("A kohya config, trained as it is",
              "`personae train world-kohya/config.toml`: the kohya_ss GUI's `--config_file` (networks.lora with "
              "conv_dim 8, the UNet only, AdamW at 1e-3, 300 steps) and its `--dataset_config` of two subsets, "
              "img/close (num_repeats 2) and img/medium (1), four white stars each with .txt captions; "
              "the sample prompt's --n / --s / --l / --d became the validation's negative prompt, steps, CFG and "
              f"seed. Keys only kohya's machinery needs were listed, not refused ({said}). The LoRA's header lists "
              "the subsets as kohya does: " + ", ".join(f"{k} {v['img_count']} images x {v['n_repeats']}"
                                                      for k, v in dirs.items())
              + f" = {header['ss_num_train_images']} per epoch, author \"{header.get('modelspec.author', '')}\". "
              f"`personae generate --lora {lora.relative_to(out)}` on red and yellow, backgrounds the pictures "
              f"never had, seeds 0-3: the exact checker reads {right} of 4 as prompted, star included.", made)


def _open(path: Path):
    from PIL import Image

    return Image.open(path)
