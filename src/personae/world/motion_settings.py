"""Settings of `personae world motion OUT`: defaults are the run measured in docs/world.md ("World motion").

    personae world motion ./world-motion --set steps=300 --set seed=1

A diffusers `MotionAdapter` sized to the world UNet (its channels, one motion module per UNet layer and one in
the middle block, a 32-position table) learns, on the frozen world model, rendered 16-frame clips of one shape
moving left, right, up, down, growing or still (world/clips.py). Same settings and thread count, same weights.

The motion words are not world tokens, and the frozen UNet barely reads them (docs/world.md, "Measured"); `lora`
trains, jointly with the motion modules and at a lower rate, a LoRA on the image UNet's cross-attention key and value
projections (AnimateDiff v3's "domain adapter" place), so the UNet learns to read what the caption says of motion.
It ships beside the adapter as a kohya LoRA (`personae animate --lora OUT/motion-lora.safetensors`). `words` learns
one embedding per motion phrase on a leash, shipped as A1111 embeddings in OUT/motion-words/ (`--embedding FILE`).
Neither meets the direction bar yet (docs/world.md, "Teaching the UNet to read the motion words").
"""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from personae.config.base import Strict
from personae.config.fields import setting

LORA_FILE = "motion-lora.safetensors"  # the LoRA's kohya file, in the adapter's folder
WORDS_DIR = "motion-words"  # the motion words' embeddings (one A1111 file per phrase), in the adapter's folder


class MotionEvalSection(Strict):
    every: int = setting(0, "measure every N steps (and always at the end); 0: only at the end", ge=0)
    clips: int = setting(32, "held-out 16-frame clips measured (at motion scale 1, then again at 0)", ge=1)
    long_clips: int = setting(12, "held-out 32-frame clips measured in context windows of 16 (0: none)", ge=0)
    steps: int = setting(25, "sampling steps (`personae animate`'s sampler, DDIM)", ge=1)
    cfg: float = setting(4.0, "CFG scale (the world's evaluation setting)", ge=1)


class MotionLoraSection(Strict):
    rank: int = setting(8, "rank of the LoRA on the image UNet's cross-attention (0: no LoRA, the motion modules "
                           "alone)", ge=0)
    alpha: float = setting(8.0, "LoRA alpha (scale = alpha / rank)", gt=0)
    target_modules: list[str] = setting(["attn2.to_k", "attn2.to_v"], "the image UNet's layers it adapts (last "
                                        "parts of their names; the motion modules' own layers are never adapted)",
                                        min_length=1)
    learning_rate: float = setting(1e-3, "the LoRA's learning rate (the motion modules' is `learning_rate`)", gt=0)


class MotionWordsSection(Strict):
    learning_rate: float = setting(0.0, "learn one embedding per motion phrase (\"moving left\" ... \"still\" become "
                                        "tokens, shipped as A1111 embeddings) at this rate (session 15's adapter: "
                                        "5e-3; not with the condition); 0: the words stay as the tokenizer splits "
                                        "them", ge=0)
    max_norm: float = setting(1.0, "after every step each learnt vector is held to this many times the mean norm of "
                                   "the world words' trained embeddings", gt=0)


class MotionConditionSection(Strict):
    learning_rate: float = setting(2e-3, "learn a motion condition (inference/motion_condition.py: the caption's "
                                        "motion read from its words by a learnt vector per token, given to every "
                                        "motion module as a track that grows with the frame) at this rate, shipped as "
                                        "OUT/motion-condition.safetensors; 0: none", ge=0)
    head_weight: float = setting(1.0, "weight of the head's loss (its reading against the clip's true motion) beside "
                                      "the denoising loss", ge=0)
    from_timestep: int = setting(200, "the condition acts only while the timestep is at least this, in training and "
                                      "sampling (stored in the file): the noisy steps set the motion, the last ones "
                                      "draw the subject as the adapter alone does, which keeps a taught subject's "
                                      "shape (0: every step, session 22)", ge=0, le=1000)


class WorldMotion(Strict):
    version: int = setting(1, "settings file version")
    seed: int = setting(0, "clips, noise and the motion modules' weights: everything random derives from it")
    threads: int = setting(1, "torch threads (the command sets them); weights are bit-reproducible at a fixed count",
                           ge=1)
    base: str = setting("world-zero-snr", "the frozen model the motion modules learn on: `world-zero-snr` (the shipped "
                                          "model's zero-terminal-SNR fine-tune, `personae model world-zero-snr`: on it "
                                          "the caption, not the noise, decides where a clip goes), `world` (the "
                                          "shipped model) or a model folder (`personae world pretrain` or `personae "
                                          "world zero-snr`)")
    dataset_size: int = setting(1536, "rendered clips, VAE-encoded once and trained on", ge=4)
    frames: int = setting(16, "frames per training clip (AnimateDiff's 16)", ge=2, le=32)
    heads: int = setting(4, "attention heads of each motion module (they divide every level's channels)", ge=1)
    max_seq_length: int = setting(32, "frame positions in the motion modules' table: the longest context window",
                                  ge=2)
    steps: int = setting(1500, "optimizer steps", ge=1)
    batch_size: int = setting(4, "clips per step", ge=1)
    learning_rate: float = setting(2e-3, "the motion modules' learning rate", gt=0)
    lr_scheduler: Literal["constant", "constant_with_warmup", "cosine"] = setting("cosine", "learning-rate schedule")
    warmup_steps: int = setting(50, "steps of linear warm-up", ge=0)
    max_grad_norm: float = setting(1.0, "clip the gradient norm to this (0: no clipping)", ge=0)
    caption_dropout: float = setting(0.1, "share of clips trained with the empty caption (for CFG)", ge=0, le=1)
    time_budget_minutes: float | None = setting(30, "stop training when the run reaches this", gt=0)
    lora: MotionLoraSection = setting(MotionLoraSection(), "a LoRA that teaches the frozen UNet to read the motion "
                                                           "words, trained with the motion modules")
    words: MotionWordsSection = setting(MotionWordsSection(), "learnt motion-word embeddings on a leash, trained "
                                                              "with the motion modules")
    condition: MotionConditionSection = setting(MotionConditionSection(), "a motion condition read from the "
                                                                          "caption, trained with the motion modules")
    eval: MotionEvalSection = setting(MotionEvalSection(), "the measurements")

    @model_validator(mode="after")
    def _words_or_condition(self):
        if self.condition.learning_rate and self.words.learning_rate:
            raise ValueError("condition.learning_rate needs words.learning_rate=0: the learnt motion words are tokens "
                             "added to the tokenizer, which the condition's head does not read")
        return self
