"""data.masked_loss (issue #18): prepare finds each image's mask (alpha channel, a NAME.mask.png sidecar, the face
box of a face crop), the trainer weights its loss by it, and an image without one stops the run before it starts.
The loss itself is checked against a hand computation in test_training_step.py."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from personae.config.prepare import PrepareSettings
from personae.data.dataset import examples_from_prepared
from personae.data.prepare import load_manifest, prepare_dataset
from personae.errors import UserError


def _disc(size: int, box: tuple[int, int, int, int]) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    cx, cy, rx, ry = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, (box[2] - box[0]) / 2, (box[3] - box[1]) / 2
    return (((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1).astype(np.uint8) * 255


def _sources(src):
    """cutout.png: a subject on transparency; photo.jpg + photo.mask.png; plain.png without a mask."""
    src.mkdir()
    rng = np.random.default_rng(0)
    rgb = (rng.random((96, 128, 3)) * 255).astype(np.uint8)
    alpha = _disc(128, (20, 10, 100, 90))[:96]
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(src / "cutout.png")
    Image.fromarray(rgb).save(src / "photo.jpg")
    Image.fromarray(_disc(128, (40, 0, 128, 96))[:96]).save(src / "photo.mask.png")
    Image.fromarray(rgb).save(src / "plain.png")
    return alpha, np.asarray(Image.open(src / "photo.mask.png"))


def test_prepare_keeps_alpha_and_sidecar_masks_beside_the_images(tmp_path):
    alpha, sidecar = _sources(tmp_path / "src")
    result = prepare_dataset(tmp_path / "src", tmp_path / "out", PrepareSettings(resolution=64))
    entries = {e.source: e for e in result.entries}
    assert set(entries) == {"cutout.png", "photo.jpg", "plain.png"}  # the mask is no training image
    assert {s: e.mask for s, e in entries.items()} == {"cutout.png": "alpha", "photo.jpg": "sidecar", "plain.png": ""}
    for source, expected in (("cutout.png", alpha), ("photo.jpg", sidecar)):
        e = entries[source]
        mask = np.asarray(Image.open(tmp_path / "out" / e.image.replace(".png", ".mask.png")))
        framed = Image.fromarray(expected).crop(tuple(e.crop_box)).resize((64, 64), Image.Resampling.BILINEAR)
        assert mask.shape == (64, 64) and np.array_equal(mask, np.asarray(framed))
        assert 0.2 < (mask > 127).mean() < 0.9  # the subject, not the whole frame
    assert not (tmp_path / "out" / entries["plain.png"].image.replace(".png", ".mask.png")).exists()
    # the trainer's examples point at them; a re-run reuses them; an edited sidecar mask re-prepares its image
    examples = {e.image.name: e.mask for e in examples_from_prepared(tmp_path / "out")}
    assert sum(m is not None for m in examples.values()) == 2
    again = prepare_dataset(tmp_path / "src", tmp_path / "out", PrepareSettings(resolution=64))
    assert again.reused == 3 and {e.mask for e in load_manifest(tmp_path / "out")} == {"alpha", "sidecar", ""}
    Image.fromarray(255 - sidecar).save(tmp_path / "src/photo.mask.png")
    third = prepare_dataset(tmp_path / "src", tmp_path / "out", PrepareSettings(resolution=64))
    assert third.reused == 2
    e = next(e for e in third.entries if e.source == "photo.jpg")
    mask = np.asarray(Image.open(tmp_path / "out" / e.image.replace(".png", ".mask.png")))
    framed = Image.fromarray(255 - sidecar).crop(tuple(e.crop_box)).resize((64, 64), Image.Resampling.BILINEAR)
    assert np.array_equal(mask, np.asarray(framed))


def test_a_face_crop_masks_the_face_box(tmp_path):
    from skimage import data

    from personae.data.framing import detect_faces

    (tmp_path / "src").mkdir()
    photo = Image.fromarray(data.astronaut())
    photo.save(tmp_path / "src/astronaut.png")
    [e] = prepare_dataset(tmp_path / "src", tmp_path / "out", PrepareSettings(crop="face", resolution=128,
                                                                              face_margin=0.5)).entries
    assert e.face is True and e.mask == "face"
    mask = np.asarray(Image.open(tmp_path / "out" / e.image.replace(".png", ".mask.png"))) > 127
    fl, ft, fr, fb = detect_faces(photo)[0]
    cl, ct, cr, _ = e.crop_box
    scale = 128 / (cr - cl)
    rows = slice(int((ft - ct) * scale) + 2, int((fb - ct) * scale) - 2)
    inside = mask[rows, int((fl - cl) * scale) + 2:int((fr - cl) * scale) - 2]
    assert inside.all() and mask.sum() == pytest.approx(((fr - fl) * scale) * ((fb - ft) * scale), rel=0.1)


def test_a_mask_of_another_size_is_named(tmp_path):
    _sources(tmp_path / "src")
    Image.new("L", (10, 10), 255).save(tmp_path / "src/photo.mask.png")
    with pytest.raises(UserError, match="photo.mask.png is 10x10 px") as err:
        prepare_dataset(tmp_path / "src", tmp_path / "out", PrepareSettings(resolution=64))
    assert "\n" not in str(err.value)


def _job(tmp_path, tiny_model, data, name, masked=True):
    from personae.config.train import TrainJob

    return TrainJob(base_model=str(tiny_model[0]), method="lora", data={"path": str(data), "masked_loss": masked},
                    output=str(tmp_path / name), train={"steps": 2, "batch_size": 2, "learning_rate": 1e-3,
                                                        "verify_exports": False, "validation": {"steps": 1}})


def test_masked_training_reads_the_masks_and_refuses_an_image_without_one(tmp_path, tiny_model):
    """An image without a mask stops a masked run before its folder is made (naming the image); white masks
    train exactly as no mask; the set's own masks give another loss."""
    from personae.jobs.train import run_training

    _sources(tmp_path / "src")
    out = tmp_path / "out"
    prepare_dataset(tmp_path / "src", out, PrepareSettings(resolution=64, trigger="sks"))
    with pytest.raises(UserError, match="1 of 3 training images .* have no mask: .*plain-[0-9a-f]+.png") as err:
        run_training(_job(tmp_path, tiny_model, out, "refused"))
    assert "\n" not in str(err.value) and not (tmp_path / "refused").exists()
    plain = next(e for e in load_manifest(out) if e.source == "plain.png")
    Image.new("L", (64, 64), 255).save(out / plain.image.replace(".png", ".mask.png"))  # as a user adds one
    masked = run_training(_job(tmp_path, tiny_model, out, "masked")).losses
    unmasked = run_training(_job(tmp_path, tiny_model, out, "unmasked", masked=False)).losses
    for e in load_manifest(out):  # every mask white: the loss of no mask at all
        Image.new("L", (64, 64), 255).save(out / e.image.replace(".png", ".mask.png"))
    white = run_training(_job(tmp_path, tiny_model, out, "white")).losses
    assert white == pytest.approx(unmasked, rel=1e-6) and masked[0] != pytest.approx(unmasked[0], rel=1e-3)


def test_auto_masks_a_set_only_when_every_image_has_its_mask_and_says_so(tmp_path, tiny_model):
    """data.masked_loss: auto: a set with one unmasked image trains as off (with a warning naming it),
    the same set with every mask trains as on (and says so); true / false in old job files read as on / off."""
    from personae.config.train import TrainJob
    from personae.events import Message
    from personae.jobs.train import run_training

    _sources(tmp_path / "src")
    out = tmp_path / "out"
    prepare_dataset(tmp_path / "src", out, PrepareSettings(resolution=64, trigger="sks"))
    assert _job(tmp_path, tiny_model, out, "x", masked=True).data.masked_loss == "on"
    assert TrainJob(base_model="m", method="lora", data={"path": "d"}, output="o").data.masked_loss == "off"  # the default

    def run(name, masked):
        said = []
        losses = run_training(_job(tmp_path, tiny_model, out, name, masked),
                              on_event=lambda e: said.append(e) if isinstance(e, Message) else None).losses
        return losses, [m.text for m in said if m.text.startswith("masked loss")]

    auto, said = run("auto-partial", "auto")
    off, quiet = run("off", "off")
    assert auto == off and quiet == []
    assert len(said) == 1 and said[0].startswith("masked loss off: 1 of 3 training images have no mask") \
        and "plain-" in said[0]
    plain = next(e for e in load_manifest(out) if e.source == "plain.png")
    Image.fromarray(_disc(64, (8, 8, 56, 56))).save(out / plain.image.replace(".png", ".mask.png"))
    auto, said = run("auto-full", "auto")
    on, _ = run("on", "on")
    assert auto == on and auto[0] != pytest.approx(off[0], rel=1e-3)
    assert said == ["masked loss on: each of the 3 training images has a mask (the loss reads only its white part; "
                    "data.masked_loss: off trains on whole images)"]
