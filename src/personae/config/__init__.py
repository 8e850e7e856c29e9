"""Typed settings: one pydantic schema per kind of job, versioned, unknown keys rejected.

Each setting is declared once (fields.py `setting`), in the concept it belongs to (sampling.py);
commands compose concepts (generate.py, animate.py, storyboard.py, compare.py).
"""

from personae.config.addons import ControlRef, EmbeddingRef, LoraRef
from personae.config.base import Strict, load_yaml, parse_settings
from personae.config.generate import GenerateSettings

__all__ = ["Strict", "load_yaml", "parse_settings", "GenerateSettings", "LoraRef", "EmbeddingRef", "ControlRef"]
