"""Training methods behind one interface (`Method`), found by name in METHODS."""

from personae.methods.base import ExportFile, Method, ParamGroup
from personae.methods.dreambooth import DreamBoothMethod
from personae.methods.lora import LoraMethod
from personae.methods.pivotal import PivotalMethod
from personae.methods.textual_inversion import TextualInversionMethod

METHODS: dict[str, type[Method]] = {
    "lora": LoraMethod,
    "dreambooth": DreamBoothMethod,
    "textual_inversion": TextualInversionMethod,
    "pivotal": PivotalMethod,
}

__all__ = ["METHODS", "ExportFile", "Method", "ParamGroup"]
