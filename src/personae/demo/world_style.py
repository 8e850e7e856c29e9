"""The demo's drawing style on the shapes world (examples/style-world as calls): 200 banded pictures of circles,
squares, triangles and crosses rendered with captions, `personae prepare` appending the trigger phrase ", drawn by
KSH style", a LoRA taught beside flat pictures of ordinary captions, then `personae world style`'s measure: the style
with the trigger on combinations the training set lacks, without it, and the content still right.

The job is examples/style-world/style.yaml (tests/test_cli.py holds them equal), with the demo's paths.
"""

from __future__ import annotations

from pathlib import Path

from personae.events import EventHandler, Message

TRIGGER = ", drawn by KSH style"
PICTURES = {"count": 200, "shapes": "circle,square,triangle,cross", "colours": "red,green,blue,black",
            "shots": "close-up,medium",  # examples/style-world/README.md's `personae world render` options
            # the 8 combinations `personae world style` measures on (world/style.py HELD_OUT), never drawn in training
            "exclude": "red circle on green,blue circle on yellow,green square on red,black square on blue,"
                       "green triangle on yellow,blue triangle on red,red cross on blue,black cross on green"}
STYLE_JOB = {  # examples/style-world/style.yaml
    "method": "lora",
    "data": {"caption_dropout": 0.15},  # and the path
    "trigger": "drawn by KSH style",
    "dreambooth": {"prior_preservation": True, "num_class_images": 200,  # the flat pictures: regularization images
                   "prior_loss_weight": 2},
    "train": {"steps": 2000, "batch_size": 4, "learning_rate": 3.0e-3, "lr_scheduler": "constant", "resolution": 32,
              "seed": 0, "ema": True, "ema_decay": 0.995, "max_timestep": 800, "min_snr_gamma": 0,
              "validation": {"steps": 10, "cfg": 4.0, "prompts": [
                  "a red ring on a blue background, close-up, drawn by KSH style",
                  "a red ring on a blue background, close-up"]}},
    "lora": {"rank": 8, "alpha": 8, "target_modules": ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2",
                                                       "proj_in", "proj_out"], "text_encoder": True,
             "text_encoder_lr": 5.0e-3},
}
WEIGHT = 1.1  # the averaged (EMA) LoRA is about a tenth smaller than the last step's: README step 5's `--lora FILE:1.1`


def world_style(out: Path, model: Path, index, on_event: EventHandler) -> dict:
    """Section "A drawing style on the world"; returns `score_style`'s shares (present, leak, content, ...)."""
    import torch

    from personae.config.prepare import PrepareSettings
    from personae.config.train import TrainJob
    from personae.data.prepare import prepare_dataset
    from personae.inference.session import open_session
    from personae.jobs.train import run_training
    from personae.world.render import render_world
    from personae.world.render_settings import WorldRender
    from personae.world.style import score_style, write_style_record

    here = out / "world-style"
    on_event(Message("world style: rendering 200 banded pictures and teaching the style as a LoRA"))
    render_world(WorldRender(style="banded", **PICTURES), here / "ksh")
    prepare_dataset(here / "ksh", here / "ksh-set", PrepareSettings(resolution=32, min_side=32, template="{caption}",
                                                                    append=TRIGGER), on_event)
    render_world(WorldRender(seed=1, **PICTURES), here / "plain")
    job = {**STYLE_JOB, "base_model": str(model), "output": str(here / "runs/ksh"),
           "data": {**STYLE_JOB["data"], "path": str(here / "ksh-set")},
           "dreambooth": {**STYLE_JOB["dreambooth"], "class_data_dir": str(here / "plain")}}
    run_training(TrainJob.model_validate(job), overwrite=True, on_event=on_event)
    session = open_session(str(model), device="cpu", loras=[(str(here / "runs/ksh/lora.safetensors"), WEIGHT)])
    with torch.no_grad():
        scores = score_style(session.pipe, TRIGGER)
    lora = f"{here / 'runs/ksh/lora.safetensors'}:{WEIGHT}"
    write_style_record(scores, here / "style-check", {"model": str(model), "lora": [lora], "trigger": TRIGGER,
                                                      "seeds": 4})
    n = scores["per_arm"]
    met = scores["present"] >= 0.8 and scores["leak"] <= 0.1 and scores["content"] >= 0.85
    index.add("A drawing style on the world",
              "examples/style-world as calls: `personae world render --style banded` drew 200 circles, squares, "
              "triangles and crosses in red, green, blue and black, each filled in 5 px bands of its colour (a style "
              "the world model never saw), eight of their shape / colour / background combinations left out; "
              f"`personae prepare --append \"{TRIGGER}\"` ended every caption with the trigger phrase, and a LoRA "
              f"(rank 8, on the UNet and the text encoder, {STYLE_JOB['train']['steps']} steps, "
              f"{STYLE_JOB['data']['caption_dropout']:.0%} of the captions dropped so that guidance stays true, the "
              "weights averaged over the last steps) learnt them beside 200 flat pictures of ordinary captions, "
              f"weighted twice. `personae world style` then drew, with the LoRA at weight {WEIGHT}, the eight left-out "
              "combinations at close-up and medium shot: the style with the trigger "
              f"in {round(scores['present'] * n)} of {n}, without it in {round(scores['leak'] * n)} of {n}, shape, "
              f"colour, background and size right in {round(scores['content'] * n)} of {n} with the trigger "
              f"({round(scores['content_plain'] * n)} of {n} without), all read back by the exact checker. Below, "
              "each row one combination and shot: four seeds with the trigger, then the same seeds without "
              "(world-style/style-check/). The bar of issue #20 (at least 80 % with the trigger, at most 10 % "
              f"without, content 85 %): {'met' if met else 'not met by this run'} (docs/world.md, \"A drawing "
              "style\", has every recipe tried and the spread over training seeds).",
              [here / "style-check/sheet.png"])
    return {k: scores[k] for k in ("present", "leak", "content", "content_plain", "per_arm")}
