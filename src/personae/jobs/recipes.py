"""Recipes: known-good generation settings for a goal, which explicit options override.

    recipe = recipe_settings("face-to-animal", "me.jpg", out_dir="out", size=(512, 512), animal="dog")
    recipe.settings, recipe.files   # GenerateSettings fields; {what: path} of the inputs it wrote

A recipe prepares its inputs at the size the images will have (the model's own, unless the user
sets one) and saves them next to the outputs, so the PNG's settings point at files that reproduce
it and the user sees what steered the picture (the face-to-animal recipe: the face crop and its
face control map). `personae generate --recipe NAME` lays the user's explicit options over the
settings and names the files. A new recipe is one function and one line in RECIPES.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from personae.data.control import detect_control
from personae.data.framing import Box, detect_faces, face_box
from personae.errors import UserError, did_you_mean
from personae.staging import atomic_file

FACE_TO_ANIMAL_PROMPT = "{animal}, close up, face portrait, looking at the camera, detailed fur, sharp focus, photo"
FACE_TO_ANIMAL_NEGATIVE = "human, person, human skin, lowres, blurry, deformed, extra eyes, text, watermark"
DETECT_SIDE = 512  # the face crop's short side at least: MediaPipe misses faces in small pictures


@dataclass
class Recipe:
    settings: dict  # GenerateSettings fields
    files: dict[str, Path] = field(default_factory=dict)  # what it wrote next to the outputs, by what it is


def fit_aspect(box: Box, aspect: float, width: int, height: int) -> Box:
    """`box` widened (or heightened) to `aspect` (width / height) around its centre, kept inside the image."""
    left, top, right, bottom = box
    w, h = right - left, bottom - top
    w, h = (max(w, h * aspect), h) if aspect >= 1 else (w, max(h, w / aspect))
    scale = min(1.0, width / w, height / h)  # the image is the limit
    w, h = w * scale, h * scale
    cx, cy = (left + right) / 2, (top + bottom) / 2
    x = int(round(min(max(cx - w / 2, 0), width - w)))
    y = int(round(min(max(cy - h / 2, 0), height - h)))
    return x, y, x + int(round(w)), y + int(round(h))


def crop_face(photo: str | Path, out: Path, size: tuple[int, int] = (512, 512), margin: float = 0.6) -> Path:
    """Save a crop around the largest face in `photo` (OpenCV Haar cascade) at `size` (width, height) pixels."""
    from personae.inference.img2img import open_image  # torch: not for the command line's help, which reads RECIPES

    image = open_image(str(photo), "init image")
    faces = detect_faces(image)
    if not faces:
        raise UserError(f"No face was found in {photo}, so the face-to-animal recipe has nothing to turn into an animal.",
                        "Use a photo where one face is clearly visible and roughly front-facing, or crop it closer.")
    box = fit_aspect(face_box(image.width, image.height, faces[0], margin), size[0] / size[1], image.width, image.height)
    crop = image.crop(box).resize(size, Image.Resampling.LANCZOS)
    with atomic_file(out) as tmp:
        crop.save(tmp, format="PNG")
    return out


def face_to_animal(photo: str | Path, out_dir: str | Path, size: tuple[int, int], animal: str = "dog") -> Recipe:
    """A person's face photo -> the same framing and expression as an animal (ControlNet face + img2img).

    The images are `size` (the model's own size unless the user chose one). The face crop is both
    the init image (colours, light) and the source of the face landmarks (framing, expression); it
    is kept at 512 px or more on its short side, where MediaPipe finds the landmarks, and its face
    map is saved at the images' size, as the ControlNet sees it. The prompt names the animal.
    DPM++ 2S a (the seed project's A1111 sampler, run as A1111 runs it: inference/ksampler.py), 20 steps, CFG 7
    and control weight 1.0 (1.0-1.25 holds the expression more firmly).
    """
    animal = " ".join(animal.split())
    if not animal:
        raise UserError("--animal is empty.", "Name an animal, e.g. --animal dog or --animal \"red fox\".")
    inputs = Path(out_dir) / "inputs"
    scale = max(1.0, DETECT_SIDE / min(size))
    crop = crop_face(photo, inputs / f"{Path(photo).stem}-face.png", (round(size[0] * scale), round(size[1] * scale)))
    control_map = detect_control("face", Image.open(crop), where=f"the face crop {crop}")
    map_path = inputs / f"{Path(photo).stem}-face-control-map.png"
    with atomic_file(map_path) as tmp:
        control_map.resize(size, Image.Resampling.BILINEAR).save(tmp, format="PNG")  # as the ControlNet sees it
    return Recipe({
        "prompt": FACE_TO_ANIMAL_PROMPT.format(animal=animal), "negative": FACE_TO_ANIMAL_NEGATIVE,
        "steps": 20, "cfg": 7.0, "sampler": "DPM++ 2S a", "init_image": str(crop), "strength": 0.8,
        "controls": [{"type": "face", "image": str(crop), "weight": 1.0}], "width": size[0], "height": size[1],
    }, {"face crop (init image and control image)": crop, "face control map": map_path})


RECIPES: dict[str, Callable[..., Recipe]] = {
    "face-to-animal": face_to_animal,
}


def recipe_settings(name: str, photo: str | Path | None, out_dir: str | Path, size: tuple[int, int],
                    **options) -> Recipe:
    """Recipe `name` for `photo`, its inputs prepared at `size` (width, height) in `out_dir`/inputs."""
    recipe = RECIPES.get(name)
    if recipe is None:
        raise UserError(f'Unknown recipe "{name}".{did_you_mean(name, RECIPES)}', "Recipes: " + ", ".join(RECIPES) + ".")
    if not photo:
        raise UserError(f'The "{name}" recipe starts from a photo.', "Pass it with --init-image PHOTO.")
    return recipe(photo, out_dir, size, **{k: v for k, v in options.items() if v is not None})
