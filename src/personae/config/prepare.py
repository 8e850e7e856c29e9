"""Settings of `personae prepare` (photos or drawings -> a training set)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from personae.config.base import Strict, check_template

TEMPLATE_FIELDS = ("caption", "trigger", "class", "token", "folder")


class PrepareSettings(Strict):
    version: int = 1
    crop: Literal["center", "face", "none"] = "center"  # none: whole image in an aspect-ratio bucket
    resolution: int = Field(512, ge=32, le=4096)  # square side for center/face; bucket pixel budget N x N for none
    bucket_step: int = Field(64, ge=8, le=256)  # bucket sides move in these steps (kohya: 64)
    face_margin: float = Field(1.0, ge=0.0, le=10.0)  # context around the face, in face sizes per side
    min_side: int = Field(64, ge=1)  # smaller images are rejected
    max_aspect: float = Field(4.0, ge=1.0)  # longer/shorter beyond this is rejected
    background: tuple[int, int, int] = (255, 255, 255)  # transparent pixels become this colour
    trigger: str = ""  # the rare word that names the subject, e.g. "sks"
    class_word: str = ""  # what the subject is, e.g. "man", "dog", "drawing"
    template: str = "{folder} {token} {trigger} {class}, {caption}"  # placeholders: caption trigger class token folder
    append: str = ""  # added to every caption, e.g. ", drawn by KSH style"
    folder_tokens: dict[str, str] = {}  # subfolder name -> token, e.g. {"close_up": "<cu_trg>"}
    keep_tokens: int = Field(0, ge=0)  # first N tags stay fixed when the trainer shuffles tags
    captioner: str = "filename"  # filename | none | a BLIP-style model folder or hub id
    recaption: bool = False  # caption with the captioner even where a sidecar caption exists
    duplicate_distance: int = Field(4, ge=0, le=64)  # pHash bits within which two images count as near-duplicates

    @field_validator("template")
    @classmethod
    def _template(cls, value: str) -> str:
        return check_template(value, TEMPLATE_FIELDS)
