"""Training methods behind one interface (`Method`); config/methods.py is their registry."""

from __future__ import annotations

from importlib import import_module

from personae.config.methods import METHODS
from personae.methods.base import ExportFile, Method, ParamGroup


def method_class(name: str) -> type[Method]:
    """The `Method` subclass that config/methods.py registers under `name`."""
    module, cls = METHODS[name].implementation.split(":")
    return getattr(import_module(module), cls)


__all__ = ["ExportFile", "Method", "ParamGroup", "method_class"]
