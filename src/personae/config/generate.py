"""Settings of one text-to-image generation, shared by the CLI, job files, PNG metadata and the UI.

Composed from the concepts in sampling.py; the field declarations (types, bounds, help, A1111
names) live there, once.
"""

from __future__ import annotations

from personae.config.addons import ControlRef, EmbeddingRef, LoraRef
from personae.config.detailer import DetailerSettings
from personae.config.fields import setting
from personae.config.ip_adapter import IpAdapterSettings
from personae.config.sampling import (
    AddonSettings,
    BatchSettings,
    ControlSettings,
    HiresSettings,
    Img2ImgSettings,
    OptionSettings,
    PromptEncoding,
    PromptSettings,
    RuntimeSettings,
    SamplerParameters,
    SamplingSettings,
    SourceSettings,
    StyleSettings,
    VariationSettings,
)
from personae.config.thresholding import ThresholdingSettings

__all__ = ["GenerateSettings", "LoraRef", "EmbeddingRef", "ControlRef"]


class GenerateSettings(SourceSettings, PromptSettings, StyleSettings, SamplingSettings, BatchSettings,
                       VariationSettings, SamplerParameters, PromptEncoding, OptionSettings, AddonSettings,
                       Img2ImgSettings, HiresSettings, DetailerSettings, ThresholdingSettings, ControlSettings,
                       IpAdapterSettings, RuntimeSettings):
    """Everything that decides the pixels of a txt2img / img2img / ControlNet run."""

    version: int = setting(1, "version of this settings layout", cli=False)
