"""IP-Adapter units: a picture whose look (a face, a subject, a style) a generation takes, without training.

A1111 users run an IP-Adapter as a ControlNet unit of the sd-webui-controlnet extension (Module
"ip-adapter_clip_sd15", Model "ip-adapter_sd15 [hash]", a weight and a guidance window); ComfyUI users as an
IPAdapter node with the same files. The files are Tencent's (h94/IP-Adapter): the adapter's image projection and
its cross-attention keys / values, and a CLIP vision model (the "image encoder") that turns the picture into what
the projection reads. inference/ip_adapter.py runs them; models/ip_adapter.py reads the files.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import model_validator

from personae.config.base import Strict
from personae.config.fields import Concept, setting

DEFAULT_IP_ADAPTER = "h94/IP-Adapter/models/ip-adapter_sd15.safetensors"
DEFAULT_IMAGE_ENCODER = "h94/IP-Adapter/models/image_encoder"


class IpAdapterRef(Strict):
    """One IP-Adapter unit: its picture, weight, adapter file, image encoder and guidance window."""

    CLI_FORM: ClassVar[str] = "IMAGE[:WEIGHT]"

    image: str = setting(description="the picture whose look is taken (a face, a subject, a style)")
    weight: float = setting(1.0, '"Control Weight": how strongly the picture acts (0: not at all); 0.5-0.8 leaves '
                                 "the prompt more to say", ge=0.0, le=2.0)
    model: str = setting(DEFAULT_IP_ADAPTER, "the IP-Adapter: a .safetensors file (ip-adapter_sd15, _light, -plus, "
                                             "-plus-face, -full-face) or a hub file owner/name/path/file.safetensors")
    image_encoder: str = setting(DEFAULT_IMAGE_ENCODER, "the CLIP vision model the adapter was trained with: a "
                                                        "transformers folder, one .safetensors file (ComfyUI's "
                                                        "clip_vision) or a hub folder owner/name/subfolder")
    guidance_start: float = setting(0.0, '"Guidance Start": the share of the steps before the picture acts', ge=0.0,
                                    le=1.0)
    guidance_end: float = setting(1.0, '"Guidance End": the share of the steps after which it stops', ge=0.0, le=1.0)

    @model_validator(mode="before")
    @classmethod
    def _one_word(cls, data):
        """In a YAML file as on the command line: `face.png:0.6` is accepted as one string."""
        return cls.from_cli(data) if isinstance(data, str) else data

    @model_validator(mode="after")
    def _window(self):
        if self.guidance_start >= self.guidance_end:
            raise ValueError(f"an IP-Adapter's guidance start ({self.guidance_start:g}) must be below its guidance end "
                             f"({self.guidance_end:g})")
        return self

    @staticmethod
    def from_cli(text: str) -> dict:
        head, found, tail = text.rpartition(":")
        if found and head and not Path(text).is_file():
            try:
                return {"image": head, "weight": float(tail)}
            except ValueError:
                pass
        return {"image": text}


class IpAdapterSettings(Concept):
    TITLE: ClassVar[str] = "IP-Adapter"

    ip_adapters: list[IpAdapterRef] = setting([], "IP-Adapter units (A1111's ControlNet units with an ip-adapter "
                                                  "model): a picture whose face, subject or style the image takes, "
                                                  "at a weight (default 1); repeat for several",
                                              flag="--ip-adapter")
