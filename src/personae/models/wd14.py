"""WD14-style taggers (SmilingWolf's wd-v1-4-* and wd-*-tagger-v3, the ones kohya's tag_images_by_wd14_tagger.py,
A1111's and ComfyUI's taggers run): `model.onnx` + `selected_tags.csv` in a folder or a hub repo, run with
onnxruntime on the CPU. An ONNX file is a graph of standard operators, not code: nothing from it is executed.

    tagger = WD14Tagger.load("./wd-vit-tagger-v3", general_threshold=0.35)
    tagger.caption([image], [path])  # ["1girl, solo, red hair, ..."]

The input is what the taggers were trained on: the image on white, padded to a white square, resized to the model's
side (read from the ONNX input shape), BGR, 0-255, float32, NHWC. The output is one sigmoid probability per CSV row.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from personae.data.captions import KAOMOJI
from personae.errors import UserError
from personae.hub import from_cache_or_hub, is_hub_id

FILES = ("model.onnx", "selected_tags.csv")
RATING, GENERAL, CHARACTER = 9, 0, 4  # selected_tags.csv categories


@dataclass(frozen=True)
class Tag:
    name: str
    category: int


@dataclass
class TagChoice:
    """Which tags become the caption (kohya's tagger options, same defaults apart from underscores)."""

    general_threshold: float = 0.35
    character_threshold: float = 0.85
    underscores_to_spaces: bool = True  # kaomoji such as ^_^ keep theirs
    rating: bool = False  # put the most likely rating tag (general, sensitive, questionable, explicit) first
    undesired: set[str] = field(default_factory=set)  # written either way (long_hair or long hair)
    max_tags: int = 0  # 0: no limit

    def caption(self, tags: list[Tag], probs: np.ndarray) -> str:
        """General and character tags over their thresholds, most likely first, joined with ", "."""
        undesired = {t.strip().replace(" ", "_") for t in self.undesired}
        picked = []
        for i in np.argsort(-probs, kind="stable"):
            tag, p = tags[i], float(probs[i])
            threshold = {GENERAL: self.general_threshold, CHARACTER: self.character_threshold}.get(tag.category)
            if threshold is not None and p >= threshold and tag.name not in undesired:
                picked.append(tag.name)
        if self.max_tags:
            picked = picked[:self.max_tags]
        ratings = [i for i, t in enumerate(tags) if t.category == RATING]
        if self.rating and ratings:
            picked.insert(0, tags[max(ratings, key=lambda i: probs[i])].name)
        return ", ".join(self._spelled(name) for name in picked)

    def _spelled(self, name: str) -> str:
        return name.replace("_", " ") if self.underscores_to_spaces and name not in KAOMOJI else name


def read_tags(path: Path) -> list[Tag]:
    """selected_tags.csv (tag_id,name,category,count) -> its tags in row order (row i = model output i)."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        return [Tag(row["name"], int(row["category"])) for row in rows]
    except (KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not a tagger's tag list ({type(exc).__name__}: {exc}).",
                        "It should be the selected_tags.csv that came with the model, with the columns "
                        "tag_id,name,category,count; download it again from the tagger's repository.") from None


def tagger_files(spec: str) -> tuple[Path, Path]:
    """(model.onnx, selected_tags.csv) of a folder, or of a hub repo (downloaded once, then from the cache)."""
    if not spec.strip():
        raise UserError("--captioner wd14: names no tagger.",
                        "Write the tagger's folder or hub id after the colon, e.g. wd14:./wd-vit-tagger-v3.")
    folder = Path(spec).expanduser()
    if folder.is_dir():
        for name in FILES:
            if not (folder / name).is_file():
                raise UserError(f"The tagger folder {folder} has no {name}.",
                                f"A WD14-style tagger folder holds {' and '.join(FILES)}: download both from the "
                                "tagger's repository (e.g. SmilingWolf/wd-vit-tagger-v3) into it.")
        return folder / FILES[0], folder / FILES[1]
    if not is_hub_id(spec):
        raise UserError(f'The tagger "{spec}" was not found.',
                        f"Pass --captioner wd14:FOLDER (a folder with {' and '.join(FILES)}) or a hub id such as "
                        "wd14:SmilingWolf/wd-vit-tagger-v3.")
    from huggingface_hub import hf_hub_download

    hint = "pass its folder with --captioner wd14:./folder, or use the offline default --captioner filename."
    return from_cache_or_hub(spec, "the tagger", hint, lambda cached: tuple(
        Path(hf_hub_download(spec, name, local_files_only=cached)) for name in FILES))


def to_input(image: Image.Image, side: int) -> np.ndarray:
    """A picture as the taggers saw their training data: on white, padded to a white square, side x side, BGR."""
    image = image.convert("RGBA")
    flat = Image.new("RGB", image.size, (255, 255, 255))
    flat.paste(image, mask=image.getchannel("A"))
    square = Image.new("RGB", (max(image.size),) * 2, (255, 255, 255))
    square.paste(flat, ((square.width - image.width) // 2, (square.height - image.height) // 2))
    shrink = square.width > side
    square = square.resize((side, side), Image.Resampling.BOX if shrink else Image.Resampling.BICUBIC)
    return np.asarray(square, dtype=np.float32)[:, :, ::-1]


class WD14Tagger:
    """A WD14-style ONNX tagger as a captioner (`name`, `caption(images, paths)`)."""

    def __init__(self, model: Path, tags: list[Tag], choice: TagChoice, name: str):
        import onnxruntime as ort

        self.name, self.tags, self.choice = name, tags, choice
        try:
            self.session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types for a bad file
            raise UserError(f"{model} could not be opened as an ONNX model ({str(exc).splitlines()[0]}).",
                            "Download model.onnx again from the tagger's repository.") from None
        shape = self.session.get_inputs()[0].shape  # [batch, side, side, 3]
        if len(shape) != 4 or not isinstance(shape[1], int) or shape[3] != 3:
            raise UserError(f"{model} takes input of shape {shape}, not [batch, side, side, 3] as a WD14 tagger does.",
                            "Use a WD14-style tagger (e.g. SmilingWolf/wd-vit-tagger-v3).")
        self.side = shape[1]
        out = self.session.get_outputs()[0].shape
        if isinstance(out[-1], int):
            self._check_size(out[-1], model)
        self._model = model

    @classmethod
    def load(cls, spec: str, choice: TagChoice | None = None) -> WD14Tagger:
        model, tags_csv = tagger_files(spec)
        return cls(model, read_tags(tags_csv), choice or TagChoice(), name=f"wd14:{spec}")

    def _check_size(self, outputs: int, model: Path) -> None:
        if outputs != len(self.tags):
            raise UserError(f"{model} gives {outputs} tag probabilities but its selected_tags.csv lists "
                            f"{len(self.tags)} tags: the two files come from different taggers.",
                            "Download model.onnx and selected_tags.csv together from the same tagger repository.")

    def probabilities(self, images: list[Image.Image]) -> np.ndarray:
        batch = np.stack([to_input(image, self.side) for image in images])
        session_input = self.session.get_inputs()[0].name
        probs = np.concatenate([self.session.run(None, {session_input: row[None]})[0] for row in batch])
        self._check_size(probs.shape[-1], self._model)
        return probs

    def caption(self, images, paths):
        return [self.choice.caption(self.tags, p) for p in self.probabilities(images)]
