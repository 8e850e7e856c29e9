"""Typed settings: one pydantic schema per kind of job, versioned, unknown keys rejected."""

from personae.config.base import Strict, load_yaml, parse_settings
from personae.config.generate import EmbeddingRef, GenerateSettings, LoraRef

__all__ = ["Strict", "load_yaml", "parse_settings", "GenerateSettings", "LoraRef", "EmbeddingRef"]
