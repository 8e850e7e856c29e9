"""Face identity similarity for people: dlib's 128-d face embedding, offline.

The weights ship in `face-recognition-models` and the detector in `dlib-bin` (the `face`
extra). Per image: 1 - the mean embedding distance between the largest face found and the
faces of the reference images (dlib's usual "same person" threshold is a distance of 0.6,
i.e. a similarity above 0.4). An image without a face scores None ("no face found"), it
does not fail the comparison.
"""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image

from personae.evaluation.metric import Metric, Unavailable

INSTALL = 'pip install "personae[face]" (dlib-bin, face-recognition-models, setuptools<81)'


class FaceIdentity(Metric):
    name, title, needs_references = "face", "face identity ↑", True

    def __init__(self):
        try:
            import dlib
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # face_recognition_models imports pkg_resources
                import face_recognition_models as models
        except ImportError:
            raise Unavailable(f"the face extra is not installed: {INSTALL}") from None
        self.detector = dlib.get_frontal_face_detector()
        self.landmarks = dlib.shape_predictor(models.pose_predictor_model_location())
        self.encoder = dlib.face_recognition_model_v1(models.face_recognition_model_location())

    def embedding(self, image: Image.Image) -> np.ndarray | None:
        """The 128-d embedding of the largest face, or None when no face is found."""
        pixels = np.asarray(image.convert("RGB"))
        upsample = 1 if min(image.size) >= 160 else 2  # small images: look for smaller faces
        faces = self.detector(pixels, upsample)
        if not faces:
            return None
        face = max(faces, key=lambda r: r.width() * r.height())
        return np.asarray(self.encoder.compute_face_descriptor(pixels, self.landmarks(pixels, face)))

    def score(self, samples, references):
        refs = [e for e in (self.embedding(r) for r in references) if e is not None]
        if not refs:
            return [None] * len(samples)
        refs = np.stack(refs)
        out = []
        for s in samples:
            e = self.embedding(s.image)
            out.append(None if e is None else float(1 - np.linalg.norm(refs - e[None], axis=1).mean()))
        return out
