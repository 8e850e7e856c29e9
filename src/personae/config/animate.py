"""Settings of one AnimateDiff clip: the generate concepts a clip takes, plus motion, frames and timing.

Defaults are the ones that worked for animated portraits (issue #5): DDIM, clip skip 2,
25 steps (25-45 is the useful range; more steps mostly sharpen), CFG 7.5, 16 frames at
8 fps (the motion modules were trained on 16-frame clips).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import model_validator
from pydantic.fields import FieldInfo

from personae.config.addons import ControlRef
from personae.config.fields import Concept, retuned, setting
from personae.config.prompt_travel import parse_travel
from personae.config.sampling import (
    AddonSettings,
    BatchSettings,
    ControlSettings,
    Img2ImgSettings,
    PromptEncoding,
    PromptSettings,
    RuntimeSettings,
    SamplerParameters,
    SamplingSettings,
    SourceSettings,
    StyleSettings,
)

# generate's settings that a clip does not take (one clip from text per run)
NOT_FOR_CLIPS = (*BatchSettings.model_fields,
                 *(name for name in Img2ImgSettings.model_fields if name not in ("init_image", "strength")))


class MotionSettings(Concept):
    TITLE: ClassVar[str] = "motion"

    motion_adapter: str = setting(description="the AnimateDiff motion adapter: a diffusers folder, one .safetensors "
                                              "motion module, or a hub id", metavar="PATH_OR_ID")
    frames: int = setting(16, "clip length in frames; longer than --context runs in overlapping windows",
                          infotext="Frames", ge=1, le=1024)
    fps: float = setting(8.0, "playback speed (frames per second) of the clip", infotext="FPS", gt=0, le=120)
    loop_number: int = setting(0, '"Display loop number": how many times a GIF or WebP plays; 0: forever',
                               infotext="Loop number", infotext_unless=0, ge=0, le=65535)
    motion_scale: float = setting(1.0, "motion module strength: 0 = frames drawn independently, 1 = as trained",
                                  infotext="Motion scale", ge=0.0, le=5.0)
    context: int = setting(16, "frames the motion module sees at once (AnimateDiff v1-v3 trained on 16)", ge=2, le=256)
    context_stride: int = setting(4, "window step for clips longer than --context (FreeNoise)", ge=1, le=256)

    @model_validator(mode="after")
    def _windows_overlap(self):
        if self.context_stride >= self.context:
            raise ValueError(f"context_stride ({self.context_stride}) must be smaller than context ({self.context}), "
                             "so that windows overlap")
        return self


class FreeInitSettings(Concept):
    """A1111's AnimateDiff "FreeInit" (inference/freeinit.py), with the extension's defaults."""

    TITLE: ClassVar[str] = "FreeInit"

    freeinit: bool = setting(False, '"FreeInit": draw the clip again from the low frequencies of the last pass and '
                                    "the high ones of its first noise, for a steadier clip, at --freeinit-iters "
                                    "times the time", infotext="FreeInit", infotext_unless=False)
    freeinit_iters: int = setting(3, "FreeInit's passes, the first one included", infotext="FreeInit iterations",
                                  infotext_if="freeinit", ge=2, le=10)
    freeinit_filter: Literal["butterworth", "gaussian", "ideal", "box"] = setting(
        "butterworth", "FreeInit's low-pass filter (butterworth: of order 4)", infotext="FreeInit filter",
        infotext_if="freeinit")
    freeinit_ds: float = setting(0.25, "FreeInit's spatial stop frequency d_s (0-1: how much of the last pass's "
                                       "layout is kept)", infotext="FreeInit d_s", infotext_if="freeinit", ge=0.0,
                                 le=1.0)
    freeinit_dt: float = setting(0.25, "FreeInit's temporal stop frequency d_t (0-1)", infotext="FreeInit d_t",
                                 infotext_if="freeinit", ge=0.0, le=1.0)


class PictureStartSettings(Concept):
    """A1111's AnimateDiff img2img from one picture ("img2gif", inference/picture_start.py): frame i starts from
    1 - i**power / scale of the picture's latent (the rest noise) before the denoising strength's noise, so the
    clip begins at the picture and leaves it as it goes; an optional last frame the clip ends at the same way."""

    TITLE: ClassVar[str] = "clip from a picture"

    latent_power: float = setting(1.0, '"Latent power": with one --init-image picture, frame i keeps 1 - i**power / '
                                       "scale of it (the rest noise)", infotext="Latent power",
                                  infotext_if="init_image", ge=0.0, le=10.0)
    latent_scale: float = setting(32.0, '"Latent scale": the scale of that fall; larger keeps more of the picture',
                                  infotext="Latent scale", infotext_if="init_image", gt=0.0, le=1e9)
    last_frame: str | None = setting(None, '"Optional last frame": a picture the clip ends at, as --init-image '
                                           "begins it (--latent-power-last, --latent-scale-last)", metavar="IMG")
    latent_power_last: float = setting(1.0, '"Latent power" of the last frame, counted back from the end',
                                       infotext="Latent power last", infotext_if="last_frame", ge=0.0, le=10.0)
    latent_scale_last: float = setting(32.0, '"Latent scale" of the last frame', infotext="Latent scale last",
                                       infotext_if="last_frame", gt=0.0, le=1e9)


class AnimateSettings(SourceSettings, PromptSettings, StyleSettings, SamplingSettings, SamplerParameters,
                      PromptEncoding, MotionSettings, FreeInitSettings, ControlSettings, PictureStartSettings,
                      AddonSettings, RuntimeSettings):
    """Everything that decides the frames of one clip (the shared settings mean the same as for generate)."""

    version: int = setting(1, "version of this settings layout", cli=False)
    prompt: str = FieldInfo.merge_field_infos(
        PromptSettings.model_fields["prompt"],
        description=PromptSettings.model_fields["prompt"].description + '; prompt travel, as A1111\'s AnimateDiff: '
        'lines "FRAME: prompt" (frames from 0, ascending) between optional head and tail lines, each frame drawn '
        "between the keyframes around it")
    init_image: str | None = FieldInfo.merge_field_infos(
        Img2ImgSettings.model_fields["init_image"],
        description="a clip to start from, as A1111's AnimateDiff img2img / video source: a folder of its frames (in "
        'name order) or a GIF / WebP / MP4 / WebM ("Denoising strength" --strength decides how much is redrawn); '
        "or one picture the clip starts at (A1111's img2gif: --latent-power, --latent-scale)")
    strength: float = FieldInfo.merge_field_infos(Img2ImgSettings.model_fields["strength"])
    controls: list[ControlRef] = FieldInfo.merge_field_infos(
        ControlSettings.model_fields["controls"],
        description=ControlSettings.model_fields["controls"].description + "; for a clip the image is a folder of "
        "its frames (in name order), a GIF / WebP / MP4 / WebM of them, or one picture for every frame")
    steps: int = retuned(SamplingSettings, "steps", 25)
    cfg: float = retuned(SamplingSettings, "cfg", 7.5)
    sampler: str = retuned(SamplingSettings, "sampler", "DDIM")
    clip_skip: int = retuned(SamplingSettings, "clip_skip", 2)

    @model_validator(mode="before")
    @classmethod
    def _one_clip_from_text(cls, data):
        # said plainly instead of "unknown key": these are generate's settings, not typos
        unsupported = [name for name in NOT_FOR_CLIPS if isinstance(data, dict) and name in data]
        if unsupported:
            raise ValueError(f"{', '.join(unsupported)} cannot be used for animation (one clip from text per run)")
        return data

    @model_validator(mode="after")
    def _last_frame_after_a_first(self):
        if self.last_frame and not self.init_image:
            raise ValueError("last_frame is the picture a clip from a picture ends at: it needs init_image, the "
                             "picture it starts from")
        return self

    @model_validator(mode="after")
    def _keyframes_within_the_clip(self):
        parse_travel(self.prompt, self.frames, "prompt")  # prompt travel's keyframes: read, on frames of the clip
        return self
