"""Settings of `personae world bench`: which methods teach which held-out shapes, and how.

    personae world bench --out bench --methods lora,pivotal --concepts star --seeds 1
    personae world bench --out bench --set jobs.lora.train.steps=900

Each method's training job is an ordinary `personae train` job (config/train.py) written
under `jobs.<method>` without the paths; the bench fills in the base model, the data and
the output. Defaults are the recipes the committed table (docs/world.md) was made with.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import Field, model_validator

from personae.config.base import Strict
from personae.config.fields import setting
from personae.config.methods import METHODS as REGISTRY
from personae.world.bench_recipes import parse_recipe, recipe_job, safe_name, sweep_labels
from personae.world.vocab import BACKGROUNDS, COLOURS, HELD_OUT, SIZES

METHODS: tuple[str, ...] = tuple(REGISTRY)


def _default_jobs() -> dict[str, dict]:
    """The recipe per method (a `personae train` job without base_model, data.path, output): the shared train
    settings under each method's own recipe from config/methods.py."""
    # min-SNR off: the committed table (docs/world.md) was measured without it; recipes turn it on
    # (lora:min_snr_gamma=5), as `personae train` does by default for the LoRA family
    train = {"batch_size": 4, "steps": 600, "learning_rate": 1e-3, "lr_scheduler": "constant", "keep_last": 1,
             "min_snr_gamma": 0, "validation": {"steps": 10, "cfg": 4.0}}
    return {name: {"method": name, **spec.bench, "train": {**train, **spec.bench.get("train", {})}}
            for name, spec in REGISTRY.items()}


class Concept(Strict):
    colour: str = setting(description="the taught shape's colour (part of the subject, like a dog's fur)")
    init_word: str = setting("circle", "a trained shape where a new token's embedding starts (textual inversion, "
                                       "pivotal)")


def _default_concepts() -> dict[str, Concept]:
    return {"star": Concept(colour="white", init_word="cross"), "heart": Concept(colour="black", init_word="circle")}


class EvalSettings(Strict):
    seeds_per_prompt: int = setting(8, "images per evaluation prompt", ge=1)
    steps: int = setting(25, "DDIM steps of the evaluation images", ge=1)
    cfg: float = setting(4.0, "CFG scale of the evaluation images", ge=1)
    prior_samples: int = setting(64, "images over the 16 fixed ordinary prompts, before and after training", ge=16)


class WorldBench(Strict):
    version: int = setting(1, "settings file version")
    model: str = setting("world", "`world` (the shipped pretrained model) or a `personae world pretrain` folder")
    methods: list[str] = setting(list(METHODS), "the methods compared: a method, or a recipe METHOD:KEY=VALUE,... "
                                                "over its jobs entry, e.g. lora:variant=dora,rank=8 (world/"
                                                "bench_recipes.py)")
    sweep: dict[str, list] = setting({}, "a grid run over every method: KEY: [values], e.g. {lora.rank: [4, 8, 16], "
                                         "lora.variant: [lora, dora]}; the table is also written sorted by subject "
                                         "fidelity (sweep.md, sweep.json)")
    concepts: list[str] = setting(["star", "heart"], "the held-out shapes taught")
    seeds: int = setting(3, "training seeds per (method, concept): each also draws its own images", ge=1)
    # 6 -> 12 images: the same subject fidelity, prior change -16 -> -2 points
    images: int = setting(12, "training images per concept", ge=1)
    prior_images: int = setting(64, 'the base model\'s own images of ordinary captions ("{prior}" in jobs)', ge=1)
    train_backgrounds: list[str] = setting(["blue", "green"], "backgrounds of the training images")
    train_sizes: list[str] = setting(["close-up", "medium shot"], "sizes of the training images (the rest are unseen)")
    # The word for the subject stands where the shape's name stands in every caption the model was pretrained on
    # ("a white star on a blue background, close-up"). LoRA and DreamBooth teach the held-out shape's own word,
    # which the tokenizer knows but pretraining never used (an untrained embedding, a rare identifier); textual
    # inversion and pivotal tuning add a new token. A multi-token trigger such as "sks" (three tokens here) moves
    # every later word to positions the text encoder never saw words at, and the untaught model already loses
    # the background: none of 8 images of "a sks on a red background" had a red background.
    trigger: str = setting("{concept}", "the subject's word in captions (LoRA, DreamBooth)")
    token: str = setting("<{concept}>", "the new token (textual inversion, pivotal)")
    concept_settings: dict[str, Concept] = Field(default_factory=_default_concepts,
                                                 description="per concept: colour and init_word")
    jobs: dict[str, dict] = Field(default_factory=_default_jobs, description="per method: a `personae train` job "
                                  "without base_model, data.path and output (e.g. jobs.lora.train.steps)")
    eval: EvalSettings = setting(EvalSettings(), "how each trained model is scored")
    workers: int = setting(2, "training jobs run side by side, one torch thread each", ge=1)
    device: Literal["cpu"] = setting("cpu", "results are compared across methods at a fixed thread count")

    @model_validator(mode="after")
    def _known(self):
        for c in self.concepts:
            if c not in HELD_OUT:
                raise ValueError(f"concept {c!r} is not a held-out shape ({', '.join(HELD_OUT)}): "
                                 "the pretrained model has seen the others")
            if c not in self.concept_settings:
                raise ValueError(f"concept {c!r} has no entry under concept_settings (its colour)")
        for c, spec in self.concept_settings.items():
            if spec.colour not in COLOURS:
                raise ValueError(f"concept_settings.{c}.colour {spec.colour!r} is not one of {', '.join(COLOURS)}")
        for b in self.train_backgrounds:
            if b not in BACKGROUNDS:
                raise ValueError(f"train_backgrounds: {b!r} is not one of {', '.join(BACKGROUNDS)}")
        for s in self.train_sizes:
            if s not in SIZES:
                raise ValueError(f"train_sizes: {s!r} is not one of {', '.join(SIZES)}")
        names = [safe_name(label) for label in self.labels]
        if len(set(names)) < len(names):
            twice = next(label for label, name in zip(self.labels, names) if names.count(name) > 1)
            raise ValueError(f"two methods or recipes would share the run folder of {twice!r}: give each once")
        for label in self.labels:
            method = label.partition(":")[0].strip()
            if method not in self.jobs:
                raise ValueError(f"method {method} has no recipe under jobs.{method} (methods: "
                                 f"{', '.join(self.jobs)})")
            _check_job(label, self.job(label))
        return self

    @property
    def labels(self) -> list[str]:
        """What runs: every method or recipe, once per point of the sweep's grid."""
        return sweep_labels(self.methods, self.sweep)

    def job(self, label: str) -> dict:
        """The train job (without paths) of a method or recipe label."""
        if ":" not in label:
            return self.jobs[label]
        method, pairs = parse_recipe(label)
        return recipe_job(self.jobs[method], pairs)


def _check_job(label: str, recipe: dict) -> None:
    """A recipe's train job must be one (paths and placeholders filled with stand-ins), said before anything runs."""
    from pydantic import ValidationError

    from personae.config.train import TrainJob

    text = json.dumps(recipe).replace("{token}", "<x>").replace("{init}", "x").replace("{prior}", "prior")
    try:
        TrainJob.model_validate({**json.loads(text), "base_model": "m", "data": {**recipe.get("data", {}),
                                                                                  "path": "d"}, "output": "o"})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ValueError(f"{label}: {where}: {first['msg']}") from None
