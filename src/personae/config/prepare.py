"""Settings of `personae prepare` (photos or drawings -> a training set), declared once: the CLI options and
their `--help` are generated from these fields (cli/options.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from personae.config.base import Strict, check_template
from personae.config.fields import setting

TEMPLATE_FIELDS = ("caption", "trigger", "class", "token", "folder")
# which caption file beside an image is read, and whether it goes through the template (a training job's data
# section takes both too, for the raw folders it prepares)
CaptionExtension = Literal["auto", ".txt", ".caption"]
Sidecars = Literal["template", "verbatim"]


class PrepareSettings(Strict):
    version: int = setting(1, "settings file version", cli=False)
    crop: Literal["center", "face", "none"] = setting("center", "framing: center crop, a crop around the face, "
                                                                "or none (whole images in aspect-ratio buckets)")
    resolution: int = setting(512, "output side in px for center / face; the bucket pixel budget N x N for none",
                              ge=32, le=4096)
    bucket_step: int = setting(64, "bucket sides move in steps of this many px (kohya: 64)", ge=8, le=256)
    face_margin: float = setting(1.0, "context around a face, in face sizes per side", ge=0.0, le=10.0)
    min_side: int = setting(64, "reject images whose shorter side is smaller", ge=1)
    max_aspect: float = setting(4.0, "reject images whose longer / shorter side ratio is above this", ge=1.0)
    background: tuple[int, int, int] = setting((255, 255, 255), "colour behind transparent pixels: a name (white, "
                                               "black, gray), #RRGGBB or R,G,B", text=True, metavar="COLOUR")
    trigger: str = setting("", 'the rare word that names the subject, e.g. "sks"')
    class_word: str = setting("", 'what the subject is, e.g. "man", "dog", "drawing"')
    template: str = setting("{folder} {token} {trigger} {class}, {caption}",
                            "caption template; placeholders: {caption} {trigger} {class} {token} {folder}")
    append: str = setting("", 'text added to every caption, e.g. ", drawn by KSH style"')
    folder_tokens: dict[str, str] = setting({}, "subfolder -> learned token, e.g. close_up=<cu_trg>,medium=<ms_trg>",
                                            text=True, metavar="DIR=TOKEN,...")
    keep_tokens: int = setting(0, "the first N tags stay fixed when the trainer shuffles tags", ge=0)
    captioner: str = setting("filename", "filename, none, wd14:FOLDER_OR_HUB_ID (a WD14-style ONNX tagger), or a "
                             "transformers image-to-text model folder / hub id (BLIP, BLIP-2, GIT, Florence-2)")
    tag_threshold: float = setting(0.35, "wd14: general tags at least this likely go into the caption (kohya: 0.35)",
                                   ge=0.0, le=1.0)
    character_threshold: float = setting(0.85, "wd14: character tags at least this likely (kohya: 0.85)",
                                         ge=0.0, le=1.0)
    undesired_tags: str = setting("", 'wd14: tags never written, comma-separated, e.g. "simple background, 1girl"')
    max_tags: int = setting(0, "wd14: at most this many tags per caption, most likely first (0: no limit)", ge=0)
    rating_tags: bool = setting(False, "wd14: put the rating tag (general, sensitive, questionable, explicit) first")
    keep_underscores: bool = setting(False, "keep underscores in tags (long_hair) instead of spaces; kaomoji such "
                                            "as ^_^ always keep theirs")
    caption_task: Literal["<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>"] = setting(
        "<DETAILED_CAPTION>", "Florence-2: the task prompt; DETAILED gives 1-3 sentences that fit the 77 tokens "
                              "the text encoder reads, MORE_DETAILED a paragraph past them, CAPTION a phrase",
        metavar="TASK")
    recaption: bool = setting(False, "caption with the captioner even where a sidecar .txt exists")
    caption_extension: CaptionExtension = setting(
        "auto", "the caption file read beside an image: auto (x.txt, else x.caption), or only .txt or only .caption "
                "(kohya --caption_extension)")
    sidecars: Sidecars = setting(
        "template", "template: a sidecar caption fills {caption} like a captioner's text; verbatim: a sidecar .txt is "
                    "the caption as written, as kohya's sd-scripts reads it (template, trigger and append then "
                    "caption only the images without one; a 10_sks dog folder's \"sks dog\" via {folder})")
    duplicate_distance: int = setting(4, "pHash bits within which two images count as near-duplicates",
                                      ge=0, le=64)

    @field_validator("template")
    @classmethod
    def _template(cls, value: str) -> str:
        return check_template(value, TEMPLATE_FIELDS)

    @field_validator("background", mode="before")
    @classmethod
    def _colour(cls, value):
        """A colour as written on the command line or in YAML: a CSS name, #RRGGBB, or R,G,B."""
        if not isinstance(value, str):
            return value
        from PIL import ImageColor

        parts = [p.strip() for p in value.split(",")]
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            return tuple(int(p) for p in parts)
        try:
            return ImageColor.getrgb(value.strip())[:3]
        except ValueError:
            pass
        raise ValueError(f'"{value}" is not a colour (try white, black, gray, #808080 or 128,128,128)')

    @field_validator("folder_tokens", mode="before")
    @classmethod
    def _pairs(cls, value):
        """`close_up=<cu_trg>,medium=<ms_trg>` as written on the command line, or a mapping."""
        if not isinstance(value, str):
            return value
        pairs = {}
        for item in filter(None, (p.strip() for p in value.split(","))):
            if "=" not in item:
                raise ValueError(f'"{item}" is not folder=token')
            folder, token = item.split("=", 1)
            pairs[folder.strip()] = token.strip()
        return pairs

    @field_validator("background")
    @classmethod
    def _channels(cls, value):
        if any(not 0 <= c <= 255 for c in value):
            raise ValueError(f"each colour channel is 0-255, got {value}")
        return value
