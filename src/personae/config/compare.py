"""The comparison suite (`personae compare SUITE.yaml`): variants x prompts x seeds, sweeps, metrics.

    version: 1
    base_model: ./tiny
    variants:
      - {label: base}
      - {label: lora, lora: ./runs/demo/lora.safetensors, weight: 0.8}
      - {label: run, run: ./runs/demo, checkpoints: [200, 400]}
    - {label: canny-0.5, controls: ["canny:pose.jpg:0.5"]}   # ControlNet units, spelled as in generate's YAML
    - {label: depth, controls: [{type: raw, image: depth.png, model: ./depth-controlnet}], control_end: 0.8}
    sweep: {weight: [0.5, 1.0], cfg: [5, 7]}     # A1111's X/Y plot: every combination
    prompts: ["a photo of {token} {class}", ...]  # or prompt_set: object | live (built in)
    token: sks
    class: dog
    seeds: [0, 1]
    references: ./prepared
    metrics: {world: {subject: star}}            # shapes-world models: the exact checker's scores
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from personae.config.addons import ControlRef, LoraRef
from personae.config.base import Strict
from personae.config.fields import retuned, setting
from personae.config.sampling import ControlSettings, RuntimeSettings, SamplingSettings
from personae.world.vocab import SHAPES

SWEEP_KEYS = ("weight", "cfg", "steps", "sampler")


def _bounds(key: str) -> tuple[float, float]:
    """The (lowest, highest) value the sampling setting `key` takes, as its declaration says."""
    meta = SamplingSettings.model_fields[key].metadata
    return (next(m.ge for m in meta if hasattr(m, "ge")), next(m.le for m in meta if hasattr(m, "le")))


def _sweep_value(key: str, value):
    """One swept value checked like the setting it replaces (a typo fails here, not after an hour of images)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if key == "sampler":
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"sweep.sampler values must be sampler names, got {value!r}")
        return value
    if key == "steps":
        low, high = _bounds(key)
        if not (number and float(value).is_integer() and low <= value <= high):
            raise ValueError(f"sweep.steps values must be whole numbers from {low} to {high}, got {value!r}")
        return int(value)
    if not number or value != value or abs(value) == float("inf"):
        raise ValueError(f"sweep.{key} values must be numbers, got {value!r}")
    if key in SamplingSettings.model_fields:  # the bounds the setting itself declares
        low, high = _bounds(key)
        if not low <= value <= high:
            raise ValueError(f"sweep.{key} values must be from {low:g} to {high:g}, got {value!r}")
    return value


class Variant(Strict):
    """One row of the comparison: the base model, or the base model plus what a run taught it."""

    label: str = setting(description="the row label in grids and the metrics table")
    model: str | None = setting(None, "another checkpoint (e.g. a DreamBooth export); default: the suite's base_model")
    lora: str | None = setting(None, "a LoRA file (kohya/A1111 or diffusers layout)")
    weight: float = setting(1.0, "the LoRA's strength")
    loras: list[LoraRef] = setting([], "more LoRAs, each with its own weight")
    embedding: str | None = setting(None, "a textual-inversion embedding file")
    token: str | None = setting(None, "what {token} becomes for this variant (default: the embedding's token, else "
                                      "the suite's)")
    run: str | None = setting(None, "a training run folder: expands to one variant per checkpoint plus the final "
                                    "export")
    checkpoints: list[int] | None = setting(None, "with run: only these steps (default: every checkpoint kept)")
    # per-variant sampling overrides: the suite's declarations, default None (= the suite's value)
    steps: int | None = retuned(SamplingSettings, "steps", None)
    cfg: float | None = retuned(SamplingSettings, "cfg", None)
    sampler: str | None = retuned(SamplingSettings, "sampler", None)
    # ControlNet units as generate spells them; None = the suite's units, [] = none for this variant
    controls: list[ControlRef] | None = retuned(ControlSettings, "controls", None)
    control_start: float | None = retuned(ControlSettings, "control_start", None)
    control_end: float | None = retuned(ControlSettings, "control_end", None)

    @model_validator(mode="after")
    def _one_source(self):
        if self.run and (self.lora or self.loras or self.embedding or self.model):
            raise ValueError(f'variant "{self.label}": `run` brings its own files; do not combine it with '
                             "model / lora / loras / embedding")
        return self


class WorldMetricSettings(Strict):
    """The shapes world's exact checker as a metric: what the taught token stands for."""

    subject: str = setting(description="the shape {token} stands for (the taught subject), e.g. star; every prompt is "
                                       "read as 'a COLOUR SHAPE on a BACKGROUND background[, SIZE]'")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value):
        return {"subject": value} if isinstance(value, str) else value  # `world: star`

    @field_validator("subject")
    @classmethod
    def _a_shape(cls, value: str) -> str:
        if value not in SHAPES:
            raise ValueError(f"{value!r} is not a shape of the shapes world ({', '.join(SHAPES)})")
        return value


class MetricSettings(Strict):
    """Which metrics to compute, and where their models come from (local folder or hub id)."""

    pixel: bool = setting(True, "1 - mean absolute difference to the nearest reference (offline, always)")
    ssim: bool = setting(True, "best SSIM against the references (offline, always)")
    diversity: bool = setting(True, "mean pairwise distance between seeds of one prompt (offline, always)")
    clip: str | None = setting("openai/clip-vit-base-patch32", "CLIP-I and CLIP-T (DreamBooth paper); null to skip")
    dino: str | None = setting("facebook/dino-vits16", "DINO ViT-S/16 subject fidelity; null to skip")
    face: bool = setting(False, "face identity (needs the `face` extra: dlib-bin + face-recognition-models)")
    world: WorldMetricSettings | None = setting(None, "shapes-world models only: subject fidelity, prompt fidelity "
                                                      "and prior, read by the exact checker; {subject: star} (or just "
                                                      "star) when {token} stands for a star; null to skip")


class CompareSuite(SamplingSettings, ControlSettings, RuntimeSettings):
    """A comparison suite: variants x prompts x seeds, with the sampling, ControlNet and runtime settings every image
    shares (a variant may replace the ControlNet units and the guidance window)."""

    model_config = ConfigDict(populate_by_name=True)

    version: int = setting(1, "version of this file's layout", cli=False)
    base_model: str = setting(description="the base model: a diffusers folder, single-file checkpoint or hub id")
    variants: list[Variant] = Field(default_factory=lambda: [Variant(label="base")],
                                    description="the rows: the base model, LoRAs, embeddings, runs")
    sweep: dict[str, list] = setting({}, "weight / cfg / steps / sampler -> values; every combination per variant "
                                         "(A1111's X/Y plot)")
    prompts: list[str] = setting([], "prompts with {token} and {class}; empty: the built-in prompt_set")
    prompt_set: Literal["object", "live"] = setting("object", "the built-in DreamBooth-style suite when prompts is "
                                                              "empty")
    token: str = setting("sks", "the trigger word put in for {token}")
    class_word: str = Field("", alias="class", description="the class noun put in for {class} (dog, man, backpack)")
    seeds: list[int] = setting([0, 1, 2, 3], "the seeds every prompt is drawn with", min_length=1)
    references: str | None = setting(None, "folder of reference images (the training set, e.g. a prepared folder)")
    metrics: MetricSettings = setting(MetricSettings(), "which metrics to compute")

    @field_validator("sweep")
    @classmethod
    def _sweep_keys(cls, value: dict) -> dict:
        for key, values in value.items():
            if key not in SWEEP_KEYS:
                raise ValueError(f'cannot sweep "{key}"; sweepable: {", ".join(SWEEP_KEYS)}')
            if not isinstance(values, list) or not values:
                raise ValueError(f'sweep.{key} must be a non-empty list of values')
            value[key] = [_sweep_value(key, v) for v in values]
        return value

    @field_validator("variants")
    @classmethod
    def _unique_labels(cls, value: list[Variant]) -> list[Variant]:
        labels = [v.label for v in value]
        repeated = sorted({l for l in labels if labels.count(l) > 1})
        if repeated:
            raise ValueError(f"variant labels must be unique; repeated: {repeated}")
        return value
