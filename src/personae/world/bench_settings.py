"""Settings of `personae world bench`: which methods teach which held-out shapes, and how.

    personae world bench --out bench --methods lora,pivotal --concepts star --seeds 1
    personae world bench --out bench --set jobs.lora.train.steps=900

Each method's training job is an ordinary `personae train` job (config/train.py) written
under `jobs.<method>` without the paths; the bench fills in the base model, the data and
the output. Defaults are the recipes the committed table (docs/world.md) was made with.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from personae.config.base import Strict
from personae.config.methods import METHODS as REGISTRY
from personae.config.methods import MethodName
from personae.world.vocab import BACKGROUNDS, COLOURS, HELD_OUT, SIZES

METHODS: tuple[str, ...] = tuple(REGISTRY)


def _default_jobs() -> dict[str, dict]:
    """The recipe per method (a `personae train` job without base_model, data.path, output): the shared train
    settings under each method's own recipe from config/methods.py."""
    train = {"batch_size": 4, "steps": 600, "learning_rate": 1e-3, "lr_scheduler": "constant", "keep_last": 1,
             "validation": {"steps": 10, "cfg": 4.0}}
    return {name: {"method": name, **spec.bench, "train": {**train, **spec.bench.get("train", {})}}
            for name, spec in REGISTRY.items()}


class Concept(Strict):
    colour: str  # the taught shape's colour (part of the subject, like a dog's fur)
    init_word: str = "circle"  # where a new token's embedding starts (textual inversion, pivotal): a trained shape


def _default_concepts() -> dict[str, Concept]:
    return {"star": Concept(colour="white", init_word="cross"), "heart": Concept(colour="black", init_word="circle")}


class EvalSettings(Strict):
    seeds_per_prompt: int = Field(8, ge=1)  # images per prompt
    steps: int = Field(25, ge=1)  # DDIM steps
    cfg: float = Field(4.0, ge=1)
    prior_samples: int = Field(64, ge=16)  # images over the 16 fixed ordinary prompts, before and after


class WorldBench(Strict):
    version: int = 1
    model: str = "world"  # "world": the shipped pretrained model; or a folder from `personae world pretrain`
    methods: list[MethodName] = list(METHODS)
    concepts: list[str] = ["star", "heart"]
    seeds: int = Field(3, ge=1)  # training seeds per (method, concept): each also draws its own images
    images: int = Field(12, ge=1)  # training images per concept (6 -> 12: same subject fidelity, prior -16 -> -2 points)
    prior_images: int = Field(64, ge=1)  # the base model's own images of ordinary captions ("{prior}" in jobs)
    train_backgrounds: list[str] = ["blue", "green"]  # backgrounds of the training images
    train_sizes: list[str] = ["close-up", "medium shot"]  # sizes of the training images (the rest are unseen)
    # The word for the subject stands where the shape's name stands in every caption the model was pretrained on
    # ("a white star on a blue background, close-up"). LoRA and DreamBooth teach the held-out shape's own word,
    # which the tokenizer knows but pretraining never used (an untrained embedding, a rare identifier); textual
    # inversion and pivotal tuning add a new token. A multi-token trigger such as "sks" (three tokens here) moves
    # every later word to positions the text encoder never saw words at, and the untaught model already loses
    # the background: none of 8 images of "a sks on a red background" had a red background.
    trigger: str = "{concept}"
    token: str = "<{concept}>"
    concept_settings: dict[str, Concept] = Field(default_factory=_default_concepts)
    jobs: dict[str, dict] = Field(default_factory=_default_jobs)  # per method: a train job without paths
    eval: EvalSettings = EvalSettings()
    workers: int = Field(2, ge=1)  # training jobs run side by side, one torch thread each
    device: Literal["cpu"] = "cpu"  # results are compared across methods at a fixed thread count

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
        for m in self.methods:
            if m not in self.jobs:
                raise ValueError(f"method {m} has no recipe under jobs.{m}")
        return self
