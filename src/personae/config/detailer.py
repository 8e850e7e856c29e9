"""ADetailer's face fix as settings: after the picture is drawn, find the faces and redraw each by inpainting.

The names, defaults and bounds are ADetailer's (Bing-su/adetailer, adetailer/args.py: `ad_model`, `ad_confidence`,
...), and so are the infotext keys ("ADetailer model", "ADetailer confidence", ...), written as ADetailer writes
them: the prompts and "mask only top k largest" only when set, the padding only when inpainting only masked.
inference/detailer.py runs the pass.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import field_validator, model_validator

from personae.config.fields import Concept, setting

_ON = "ad_model"  # every ADetailer key is written only when the face fix runs


class DetailerSettings(Concept):
    TITLE: ClassVar[str] = "face fix (ADetailer)"

    ad_model: str | None = setting(
        None, '"ADetailer model": the face detector whose faces are redrawn after the picture: mediapipe_face_full '
              "(faces at any distance), mediapipe_face_short (faces within about 2 m of the camera) or "
              "mediapipe_face_mesh (the face oval's outline as the mask); off by default", infotext="ADetailer model",
        infotext_if=_ON, metavar="MODEL")
    ad_prompt: str = setting("", '"ADetailer prompt": the faces\' own prompt; empty: --prompt; [PROMPT] in it stands '
                                 "for --prompt; [SEP] splits it into one prompt per face (the last serves the rest); "
                                 "a face whose prompt is [SKIP] is left as drawn",
                             infotext="ADetailer prompt", infotext_if=(_ON, "ad_prompt"), metavar="P")
    ad_negative_prompt: str = setting("", '"ADetailer negative prompt": the faces\' own negative prompt; empty: '
                                          "--negative ([PROMPT] and [SEP] as in --ad-prompt)",
                                      infotext="ADetailer negative prompt", infotext_if=(_ON, "ad_negative_prompt"),
                                      metavar="N")
    ad_confidence: float = setting(0.3, '"ADetailer confidence": the detector\'s lowest confidence that counts as a '
                                        "face", infotext="ADetailer confidence", infotext_if=_ON, metavar="C", ge=0.0,
                                   le=1.0)
    ad_mask_k_largest: int = setting(0, '"ADetailer mask only top k largest": redraw only the k largest faces, '
                                        "largest first; 0: every face, in the detector's order",
                                     infotext="ADetailer mask only top k largest",
                                     infotext_if=(_ON, "ad_mask_k_largest"), metavar="K", ge=0, le=100)
    ad_mask_min_ratio: float = setting(0.0, '"ADetailer mask min ratio": leave out faces whose box is a smaller '
                                            "share of the picture's area than this",
                                       infotext="ADetailer mask min ratio",
                                       infotext_if=(_ON, "ad_mask_min_ratio"), metavar="R", ge=0.0, le=1.0)
    ad_mask_max_ratio: float = setting(1.0, '"ADetailer mask max ratio": leave out faces whose box is a larger share '
                                            "of the picture's area than this", infotext="ADetailer mask max ratio",
                                       infotext_if=_ON, infotext_unless=1.0, metavar="R", ge=0.0, le=1.0)
    ad_x_offset: int = setting(0, '"ADetailer x offset": move each face\'s mask right by this many pixels (left when '
                                  "negative; what leaves one side comes back on the other, as in ADetailer)",
                               infotext="ADetailer x offset", infotext_if=(_ON, "ad_x_offset"), metavar="X",
                               ge=-4096, le=4096)
    ad_y_offset: int = setting(0, '"ADetailer y offset": move each face\'s mask up by this many pixels (down when '
                                  "negative)", infotext="ADetailer y offset", infotext_if=(_ON, "ad_y_offset"),
                               metavar="Y", ge=-4096, le=4096)
    ad_dilate_erode: int = setting(4, '"ADetailer dilate erode": grow (positive) or shrink (negative) each face\'s '
                                      "mask by a square of this many pixels", infotext="ADetailer dilate erode",
                                   infotext_if=_ON, metavar="D", ge=-128, le=128)
    ad_mask_merge_invert: Literal["None", "Merge", "Merge and Invert"] = setting(
        "None", '"ADetailer mask merge invert": Merge redraws all the faces in one pass through one mask; Merge and '
                "Invert redraws everything but the faces", infotext="ADetailer mask merge invert", infotext_if=_ON,
        infotext_unless="None")
    ad_mask_blur: int = setting(4, '"ADetailer mask blur": feathering of each face\'s mask edge, in pixels',
                                infotext="ADetailer mask blur", infotext_if=_ON, metavar="B", ge=0, le=64)
    ad_denoising_strength: float = setting(0.4, '"ADetailer denoising strength": 0 keeps the face, 1 redraws it',
                                           infotext="ADetailer denoising strength", infotext_if=_ON, metavar="S",
                                           ge=0.0, le=1.0)
    ad_inpaint_only_masked: bool = setting(True, '"ADetailer inpaint only masked": draw each face\'s region alone at '
                                                 "--width x --height and paste it back (A1111's \"Only masked\"); "
                                                 "off: the whole picture is drawn at that size",
                                           infotext="ADetailer inpaint only masked", infotext_if=_ON)
    ad_inpaint_padding: int = setting(32, '"ADetailer inpaint padding": context kept around each face\'s mask when '
                                          "inpainting only masked, in pixels", infotext="ADetailer inpaint padding",
                                      infotext_if=(_ON, "ad_inpaint_only_masked"), metavar="N", ge=0,
                                      le=2048)

    # ADetailer's "use separate ..." options: None (or "") uses the generation's own, as ADetailer's unticked box does
    ad_inpaint_width: int | None = setting(None, '"ADetailer inpaint width": draw the faces at this width in place '
                                                 "of --width (ADetailer's \"Use separate width/height\"), a multiple "
                                                 "of 8", infotext="ADetailer inpaint width",
                                           infotext_if=(_ON, "ad_inpaint_width"), metavar="W", ge=8, le=8192)
    ad_inpaint_height: int | None = setting(None, '"ADetailer inpaint height": the same for the height',
                                            infotext="ADetailer inpaint height",
                                            infotext_if=(_ON, "ad_inpaint_height"), metavar="H", ge=8, le=8192)
    ad_steps: int | None = setting(None, '"ADetailer steps": the faces\' own steps (ADetailer\'s "Use separate '
                                         'steps"); empty: --steps', infotext="ADetailer steps",
                                   infotext_if=(_ON, "ad_steps"), metavar="N", ge=1, le=1000)
    ad_cfg_scale: float | None = setting(None, '"ADetailer CFG scale": the faces\' own CFG ("Use separate CFG '
                                               'scale"); empty: --cfg', infotext="ADetailer CFG scale",
                                         infotext_if=(_ON, "ad_cfg_scale"), metavar="C", ge=0.0, le=100.0)
    ad_noise_multiplier: float | None = setting(None, '"ADetailer noise multiplier": the faces\' own noise '
                                                      'multiplier ("Use separate noise multiplier"); empty: '
                                                      "--noise-multiplier", infotext="ADetailer noise multiplier",
                                                infotext_if=(_ON, "ad_noise_multiplier"), metavar="M", ge=0.5, le=1.5)
    ad_clip_skip: int | None = setting(None, '"ADetailer CLIP skip": the faces\' own CLIP skip ("Use separate CLIP '
                                             'skip"); empty: --clip-skip', infotext="ADetailer CLIP skip",
                                       infotext_if=(_ON, "ad_clip_skip"), metavar="N", ge=1, le=12)
    ad_sampler: str = setting("", '"ADetailer sampler": the faces\' own sampler ("Use separate sampler"); empty: '
                                  "--sampler", infotext="ADetailer sampler", infotext_if=(_ON, "ad_sampler"),
                              metavar="NAME")

    @field_validator("ad_inpaint_width", "ad_inpaint_height")
    @classmethod
    def _multiple_of_8(cls, value: int | None) -> int | None:
        if value is not None and value % 8:
            raise ValueError(f"must be a multiple of 8 (the VAE works in 8-pixel cells), got {value}")
        return value

    @field_validator("ad_model")
    @classmethod
    def _none_is_off(cls, value: str | None) -> str | None:
        return None if value is None or value.strip() in ("", "None") else value.strip()  # ADetailer's "None": off

    @model_validator(mode="after")
    def _needs_model(self):
        changed = [name for name, info in DetailerSettings.model_fields.items()
                   if name != "ad_model" and getattr(self, name) != info.default]
        if changed and not self.ad_model:
            raise ValueError(f"{', '.join(changed)} belong{'s' * (len(changed) == 1)} to the face fix (ADetailer), "
                             "which is off: set ad_model too (e.g. mediapipe_face_full)")
        if (self.ad_inpaint_width is None) != (self.ad_inpaint_height is None):
            raise ValueError("ad_inpaint_width and ad_inpaint_height go together (ADetailer's \"Use separate "
                             'width/height"): set both or neither')
        return self
