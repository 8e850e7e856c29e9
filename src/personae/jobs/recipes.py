"""Recipes: known-good generation settings for a goal, which explicit options override.

    data = recipe_settings("face-to-animal", "me.jpg", out_dir="out", animal="dog")

A recipe prepares its inputs (the face-to-animal recipe crops the face and saves the
crop next to the outputs, so the PNG's settings point at a file that reproduces it)
and returns GenerateSettings fields; `personae generate --recipe NAME` lays the user's
explicit options over them. A new recipe is one function and one line in RECIPES.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PIL import Image

from personae.data.framing import detect_faces, face_box
from personae.errors import UserError, did_you_mean
from personae.inference.img2img import open_image
from personae.staging import atomic_file

FACE_TO_ANIMAL_PROMPT = "{animal}, close up, face portrait, looking at the camera, detailed fur, sharp focus, photo"
FACE_TO_ANIMAL_NEGATIVE = "human, person, human skin, lowres, blurry, deformed, extra eyes, text, watermark"


def crop_face(photo: str | Path, out: Path, size: int = 512, margin: float = 0.6) -> Path:
    """Save a square crop around the largest face in `photo` (OpenCV Haar cascade), `size` px wide."""
    image = open_image(str(photo), "init image")
    faces = detect_faces(image)
    if not faces:
        raise UserError(f"No face was found in {photo}, so the face-to-animal recipe has nothing to turn into an animal.",
                        "Use a photo where one face is clearly visible and roughly front-facing, or crop it closer.")
    crop = image.crop(face_box(image.width, image.height, faces[0], margin)).resize((size, size), Image.Resampling.LANCZOS)
    with atomic_file(out) as tmp:
        crop.save(tmp, format="PNG")
    return out


def face_to_animal(photo: str | Path, out_dir: str | Path, animal: str = "dog", size: int = 512) -> dict:
    """A person's face photo -> the same framing and expression as an animal (ControlNet face + img2img).

    The face crop is both the init image (colours, light) and the source of the face
    landmarks (framing, expression); the prompt names the animal. DPM++ 2S a, 20 steps,
    CFG 7 and control weight 1.0 (1.0-1.25 holds the expression more firmly).
    """
    animal = " ".join(animal.split())
    if not animal:
        raise UserError("--animal is empty.", "Name an animal, e.g. --animal dog or --animal \"red fox\".")
    crop = crop_face(photo, Path(out_dir) / "inputs" / f"{Path(photo).stem}-face.png", size)
    return {
        "prompt": FACE_TO_ANIMAL_PROMPT.format(animal=animal), "negative": FACE_TO_ANIMAL_NEGATIVE,
        "steps": 20, "cfg": 7.0, "sampler": "DPM++ 2S a", "init_image": str(crop), "strength": 0.8,
        "controls": [{"type": "face", "image": str(crop), "weight": 1.0}],
    }


RECIPES: dict[str, Callable[..., dict]] = {
    "face-to-animal": face_to_animal,
}


def recipe_settings(name: str, photo: str | Path | None, out_dir: str | Path, **options) -> dict:
    """The GenerateSettings fields of recipe `name` for `photo` (explicit options go over them)."""
    recipe = RECIPES.get(name)
    if recipe is None:
        raise UserError(f'Unknown recipe "{name}".{did_you_mean(name, RECIPES)}', "Recipes: " + ", ".join(RECIPES) + ".")
    if not photo:
        raise UserError(f'The "{name}" recipe starts from a photo.', "Pass it with --init-image PHOTO.")
    return recipe(photo, out_dir, **{k: v for k, v in options.items() if v is not None})
