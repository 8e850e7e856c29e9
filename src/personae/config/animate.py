"""Settings of one AnimateDiff clip: the generate settings plus motion, frames and timing.

Defaults are the ones that worked for animated portraits (issue #5): DDIM, clip skip 2,
25 steps (25-45 is the useful range; more steps mostly sharpen), CFG 7.5, 16 frames at
8 fps (the motion modules were trained on 16-frame clips).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from personae.config.generate import GenerateSettings


class AnimateSettings(GenerateSettings):
    """Everything that decides the frames of one clip (GenerateSettings' fields mean the same here)."""

    motion_adapter: str  # AnimateDiff motion adapter: diffusers folder, one .safetensors file, or hub id
    frames: int = Field(16, ge=1, le=1024)  # clip length; longer than `context` runs in overlapping windows
    fps: float = Field(8.0, gt=0, le=120)  # playback speed (frames per second) of the GIF / MP4
    motion_scale: float = Field(1.0, ge=0.0, le=5.0)  # motion module strength: 0 = frames drawn independently, 1 = as trained
    context: int = Field(16, ge=2, le=256)  # frames the motion module sees at once (AnimateDiff v1-v3 trained on 16)
    context_stride: int = Field(4, ge=1, le=256)  # window step for clips longer than `context` (FreeNoise)
    steps: int = Field(25, ge=1, le=1000)
    cfg: float = Field(7.5, ge=0.0, le=100.0)
    sampler: str = "DDIM"
    clip_skip: int = Field(2, ge=1, le=12)

    @model_validator(mode="after")
    def _one_clip_from_text(self):
        # batch and img2img fields come with GenerateSettings; a clip is one video from text
        unsupported = [name for name, default in (("batch_size", 1), ("batch_count", 1), ("init_image", None),
                                                   ("mask", None), ("controls", [])) if getattr(self, name) != default]
        if unsupported:
            raise ValueError(f"{', '.join(unsupported)} cannot be used for animation (one clip from text per run)")
        if self.context_stride >= self.context:
            raise ValueError(f"context_stride ({self.context_stride}) must be smaller than context ({self.context}), "
                             "so that windows overlap")
        return self
