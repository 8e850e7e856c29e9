"""`personae prepare`: reading every kind of file, framing, captions, manifest, idempotent re-runs (issue #3)."""

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from personae.config.prepare import PrepareSettings
from personae.data import captions as cap
from personae.data.framing import face_box, make_buckets, nearest_bucket
from personae.data.prepare import prepare_dataset
from personae.errors import UserError


def _shape_image(i: int, size=(96, 80)) -> Image.Image:
    """Distinct test images: a coloured ellipse at a seeded place on a seeded background."""
    rng = np.random.default_rng(i)
    from PIL import ImageDraw

    img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 255, 3)))
    d = ImageDraw.Draw(img)
    x, y = rng.integers(0, size[0] // 2), rng.integers(0, size[1] // 2)
    d.ellipse([x, y, x + size[0] // 2, y + size[1] // 2], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    d.rectangle([int(rng.integers(0, size[0] - 20)), 0, size[0], int(rng.integers(5, size[1]))], outline="black", width=3)
    return img


@pytest.fixture
def messy_folder(tmp_path):
    src = tmp_path / "src"
    (src / "nested" / "deeper").mkdir(parents=True)
    for i in range(20):
        folder = src if i < 10 else src / "nested" / ("deeper" if i >= 15 else "")
        _shape_image(i).save(folder / f"good_{i:02d}.{'jpg' if i % 2 else 'png'}")
    (src / "zero.png").write_bytes(b"")
    buf = io.BytesIO()
    _shape_image(50, (200, 200)).save(buf, format="JPEG")
    (src / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (src / "notes.png").write_text("this is a text file, not a picture")
    Image.new("RGB", (1, 1), "red").save(src / "tiny.png")
    Image.new("CMYK", (120, 120), (0, 255, 255, 0)).save(src / "cmyk.jpg")  # pure red in CMYK
    Image.fromarray(np.full((100, 100), 32768, dtype=np.uint16)).save(src / "grey16.png")  # mid grey, 16 bit
    _shape_image(60).convert("P", palette=Image.Palette.ADAPTIVE).save(src / "palette.gif")
    rgba = Image.new("RGBA", (100, 100), (0, 0, 255, 0))  # fully transparent...
    rgba.paste(Image.new("RGBA", (50, 100), (0, 0, 255, 255)), (0, 0))  # ...except an opaque blue left half
    rgba.save(src / "alpha.png")
    upright = Image.new("RGB", (100, 200), "red")  # portrait: red top half, blue bottom half
    upright.paste(Image.new("RGB", (100, 100), "blue"), (0, 100))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    upright.rotate(90, expand=True).save(src / "phone_sideways.jpg", exif=exif.tobytes(), quality=95)
    _shape_image(70, (6000, 4000)).save(src / "huge.jpg", quality=80)
    return src


def test_every_usable_image_is_prepared_and_every_unusable_one_is_reported(messy_folder, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in messy_folder.rglob("*")}
    out = tmp_path / "out"
    result = prepare_dataset(messy_folder, out, PrepareSettings(resolution=64))
    sources = {e.source for e in result.entries}
    assert len(result.entries) == 26
    assert {f"good_{i:02d}.{'jpg' if i % 2 else 'png'}" for i in range(10)} <= sources
    assert {"cmyk.jpg", "grey16.png", "palette.gif", "alpha.png", "phone_sideways.jpg", "huge.jpg"} <= sources
    reasons = {r.path.as_posix(): r.reason for r in result.rejected}
    assert set(reasons) == {"zero.png", "truncated.jpg", "notes.png", "tiny.png"}
    assert "0 bytes" in reasons["zero.png"] and "truncated" in reasons["truncated.jpg"]
    assert "not an image" in reasons["notes.png"] and "too small" in reasons["tiny.png"]
    report = (out / "report.md").read_text()
    assert all(name in report for name in reasons)
    assert {p: p.stat().st_mtime_ns for p in messy_folder.rglob("*")} == before  # SRC untouched

    def px(name):
        entry = next(e for e in result.entries if e.source == name)
        return np.asarray(Image.open(out / entry.image).convert("RGB"), dtype=int)

    sideways = px("phone_sideways.jpg")  # upright after EXIF: red above blue
    assert sideways[2, 32, 0] > 200 and sideways[2, 32, 2] < 60
    assert sideways[61, 32, 2] > 200 and sideways[61, 32, 0] < 60
    assert np.allclose(px("cmyk.jpg")[32, 32], [255, 0, 0], atol=40)
    assert np.allclose(px("grey16.png")[32, 32], [128, 128, 128], atol=2)
    alpha = px("alpha.png")
    assert np.allclose(alpha[32, 8], [0, 0, 255], atol=3) and np.allclose(alpha[32, 56], [255, 255, 255], atol=3)
    for entry in result.entries:
        assert Image.open(out / entry.image).size == (64, 64)
        assert (out / entry.image).with_suffix(".txt").read_text().strip() == entry.caption
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == 26 and {"source", "source_sha256", "image", "caption", "crop_box", "bucket", "repeats",
                                    "token"} <= set(manifest[0])
    assert Image.open(out / "contact_sheet.png").size[0] > 0


def test_background_colour_for_transparency(messy_folder, tmp_path):
    result = prepare_dataset(messy_folder, tmp_path / "o", PrepareSettings(resolution=64, background=(0, 255, 0)))
    entry = next(e for e in result.entries if e.source == "alpha.png")
    assert np.allclose(np.asarray(Image.open(tmp_path / "o" / entry.image))[32, 56], [0, 255, 0], atol=3)


def test_rerun_is_idempotent_and_only_processes_changes(messy_folder, tmp_path):
    out = tmp_path / "out"
    prepare_dataset(messy_folder, out, PrepareSettings(resolution=64))
    stamps = {p: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    manifest = (out / "manifest.jsonl").read_text()
    again = prepare_dataset(messy_folder, out, PrepareSettings(resolution=64))
    assert again.reused == 26 and (out / "manifest.jsonl").read_text() == manifest
    assert {p: p.stat().st_mtime_ns for p in (out / "images").iterdir()} == stamps
    _shape_image(99).save(messy_folder / "good_00.png")  # one changed, one removed
    os.remove(messy_folder / "good_02.png")
    gone = next(e.image for e in again.entries if e.source == "good_02.png")
    third = prepare_dataset(messy_folder, out, PrepareSettings(resolution=64))
    assert third.reused == 24 and len(third.entries) == 25
    assert (out / gone).exists() is False and not (out / gone).with_suffix(".txt").exists()
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(
        n for e in third.entries for n in (Path(e.image).name, Path(e.image).with_suffix(".txt").name)
        + ((Path(e.image).with_suffix(".mask.png").name,) if e.mask else ()))  # a transparent source's mask
    assert [e.mask for e in third.entries].count("alpha") >= 1


def test_face_crop_keeps_the_detected_face_inside_also_off_centre(tmp_path):
    from skimage import data

    from personae.data.framing import detect_faces

    src = tmp_path / "src"
    src.mkdir()
    photo = Image.fromarray(data.astronaut())
    photo.save(src / "astronaut.png")
    padded = Image.new("RGB", (1024, 600), "gray")  # face far right of centre after padding
    padded.paste(photo, (500, 80))
    padded.save(src / "astronaut_padded.png")
    result = prepare_dataset(src, tmp_path / "out", PrepareSettings(crop="face", resolution=128, face_margin=0.5))
    for entry in result.entries:
        assert entry.face is True
        image = Image.open(src / entry.source).convert("RGB")
        fl, ft, fr, fb = detect_faces(image)[0]
        cl, ct, cr, cb = entry.crop_box
        assert cl <= fl and ct <= ft and cr >= fr and cb >= fb, (entry.source, entry.crop_box)
        assert cr - cl < min(image.size)  # a real face crop, not the centre square
    padded_entry = next(e for e in result.entries if e.source == "astronaut_padded.png")
    assert padded_entry.crop_box[0] > 500  # moved right with the face
    # the astronaut's face is at about x 175-270, y 65-160 in the original photo
    fl, ft, fr, fb = detect_faces(photo)[0]
    assert 150 < (fl + fr) / 2 < 280 and 50 < (ft + fb) / 2 < 180


def test_face_box_slides_at_the_edge_and_never_cuts_the_face():
    assert face_box(1000, 600, (900, 250, 1000, 350), margin=1.0) == (700, 150, 1000, 450)
    left, top, right, bottom = face_box(300, 300, (0, 0, 280, 280), margin=1.0)
    assert (left, top) == (0, 0) and right >= 280 and bottom >= 280


def test_no_face_falls_back_to_centre_and_is_reported(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _shape_image(1, (160, 100)).save(src / "no_face.png")
    result = prepare_dataset(src, tmp_path / "out", PrepareSettings(crop="face", resolution=64))
    assert result.entries[0].face is False and result.entries[0].crop_box == [30, 0, 130, 100]
    assert "No face found" in (tmp_path / "out" / "report.md").read_text()


def test_buckets_follow_kohya_steps_and_budget(tmp_path):
    buckets = make_buckets(512, 64)
    assert all(b.width % 64 == 0 and b.height % 64 == 0 and b.width * b.height <= 512 * 512 for b in buckets)
    assert nearest_bucket(1920, 1080, buckets).aspect == pytest.approx(16 / 9, rel=0.15)
    src = tmp_path / "src"
    src.mkdir()
    _shape_image(3, (400, 200)).save(src / "wide.png")
    _shape_image(4, (200, 400)).save(src / "tall.png")
    result = prepare_dataset(src, tmp_path / "out", PrepareSettings(crop="none", resolution=256))
    sizes = {e.source: tuple(e.bucket) for e in result.entries}
    assert sizes["wide.png"][0] > sizes["wide.png"][1] and sizes["tall.png"][0] < sizes["tall.png"][1]
    for e in result.entries:
        assert Image.open(tmp_path / "out" / e.image).size == tuple(e.bucket)


def test_folder_conventions_and_caption_templates(tmp_path):
    src = tmp_path / "src"
    for folder in ["10_sks man", "shots/close_up", "shots/full"]:
        (src / folder).mkdir(parents=True)
    _shape_image(1).save(src / "10_sks man" / "IMG_0001.png")
    _shape_image(2).save(src / "shots" / "close_up" / "girl_at_bus_stop.png")
    _shape_image(3).save(src / "shots" / "full" / "frame.png")
    (src / "shots" / "full" / "frame.txt").write_text("1girl, rain,  rain, bus_stop,")
    settings = PrepareSettings(resolution=64, folder_tokens={"close_up": "<cu_trg>", "full": "<fs_trg>"},
                               append=", drawn by KSH style", keep_tokens=1)
    result = prepare_dataset(src, tmp_path / "out", settings)
    by = {e.source: e for e in result.entries}
    kohya = by["10_sks man/IMG_0001.png"]
    assert (kohya.repeats, kohya.caption) == (10, "sks man, drawn by KSH style")
    close = by["shots/close_up/girl_at_bus_stop.png"]
    assert (close.token, close.caption, close.repeats) == ("<cu_trg>", "<cu_trg>, girl at bus stop, drawn by KSH style", 1)
    assert by["shots/full/frame.png"].caption == "<fs_trg>, 1girl, rain, bus stop, drawn by KSH style"
    assert by["shots/full/frame.png"].keep_tokens == 1


def test_caption_helpers():
    assert cap.clean_tags("a_b, c,, a_b , d") == "a b, c, d"
    # learned tokens keep their underscores (a raw folder's "..., <cu_trg>" became "<cu trg>" and the token check
    # stopped the run); kaomoji too; the rest of the tag still reads as words
    assert cap.clean_tags("a red circle, <cu_trg>") == "a red circle, <cu_trg>"
    assert cap.clean_tags("long_hair, <my_token> smiling_girl, ^_^") == "long hair, <my_token> smiling girl, ^_^"
    assert cap.clean_tags("<fs_trg>") == "<fs_trg>" and cap.clean_tags("blue_sky") == "blue sky"
    assert cap.clean_tags("A photo of a dog.") == "A photo of a dog."
    assert cap.fill_template("a photo of {trigger} {class}, {caption}", trigger="sks", class_word="dog",
                             caption="") == "a photo of sks dog"
    assert cap.kohya_folder("10_sks man") == (10, "sks man") and cap.kohya_folder("close_up") is None
    assert cap.keep_and_shuffle_split("sks, man, smiling, hat", 2) == (["sks", "man"], ["smiling", "hat"])


def test_sidecar_captions_win_unless_recaption(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _shape_image(1).save(src / "red_dress.png")
    (src / "red_dress.caption").write_text("a woman in a red dress")
    first = prepare_dataset(src, tmp_path / "a", PrepareSettings(resolution=64, trigger="sks", class_word="woman",
                                                                 template="a photo of {trigger} {class}, {caption}"))
    assert first.entries[0].caption == "a photo of sks woman, a woman in a red dress"
    second = prepare_dataset(src, tmp_path / "b", PrepareSettings(resolution=64, recaption=True))
    assert second.entries[0].caption == "red dress"


def test_near_duplicates_are_reported(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _shape_image(5, (200, 160)).save(src / "a.png")
    _shape_image(5, (200, 160)).resize((180, 144)).save(src / "a_smaller.jpg", quality=90)
    _shape_image(6, (200, 160)).save(src / "other.png")
    result = prepare_dataset(src, tmp_path / "out", PrepareSettings(resolution=64))
    assert [(a, b) for a, b, _ in result.duplicates] == [("a.png", "a_smaller.jpg")]
    assert "Near-duplicates" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.slow
def test_transformers_captioner_on_a_tiny_blip(tmp_path):
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    from personae.models.captioners import load_captioner

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + "a photo of the man dog red on grass".split()
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    torch.manual_seed(0)
    config = BlipConfig(text_config=dict(vocab_size=len(words), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                         num_attention_heads=4, max_position_embeddings=64, bos_token_id=2,
                                         sep_token_id=3, pad_token_id=0),
                        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                           num_attention_heads=4, image_size=32, patch_size=8), projection_dim=32)
    model = BlipForConditionalGeneration(config).eval()
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                              tokenizer=BertTokenizer(str(tmp_path / "vocab.txt")))
    model.save_pretrained(tmp_path / "blip")
    processor.save_pretrained(tmp_path / "blip")
    image = _shape_image(1)
    captioner = load_captioner(str(tmp_path / "blip"))
    [text] = captioner.caption([image], [tmp_path / "x.png"])
    inputs = processor(images=[image], return_tensors="pt")
    expected = processor.batch_decode(model.generate(**inputs, max_new_tokens=40, do_sample=False), skip_special_tokens=True)
    assert text == " ".join(expected[0].split()) and text
    src = tmp_path / "src"
    src.mkdir()
    image.save(src / "IMG_1.png")
    result = prepare_dataset(src, tmp_path / "out", PrepareSettings(resolution=64, captioner=str(tmp_path / "blip")),
                             load_captioner=load_captioner)
    assert result.entries[0].caption == text


def test_captioner_hub_id_offline_and_bad_inputs_are_clear(tmp_path):
    from personae.models.captioners import load_captioner

    with pytest.raises(UserError, match="--captioner"):
        load_captioner("Salesforce/blip-image-captioning-base")
    with pytest.raises(UserError, match="not a folder"):
        prepare_dataset(tmp_path / "missing", tmp_path / "out", PrepareSettings())
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no image files"):
        prepare_dataset(tmp_path / "empty", tmp_path / "out", PrepareSettings())


def test_manifest_lines_carry_a_version_and_a_damaged_line_is_named(tmp_path):
    from personae.data.dataset import examples_from_prepared
    from personae.data.prepare import MANIFEST_VERSION, load_manifest

    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        _shape_image(i).save(src / f"{i}.png")
    out = tmp_path / "set"
    prepare_dataset(src, out, PrepareSettings(resolution=64))
    path = out / "manifest.jsonl"
    lines = path.read_text().splitlines()
    assert [json.loads(line)["version"] for line in lines] == [MANIFEST_VERSION] * 3
    # a manifest written before the version field reads the same
    older = [json.loads(line) for line in lines]
    for entry in older:
        del entry["version"]
    path.write_text("".join(json.dumps(e) + "\n" for e in older))
    assert [e.caption for e in load_manifest(out)] == [json.loads(line)["caption"] for line in lines]
    for damaged, why in [('{"source": "0.png", "ima', "not a JSON object"), ('[1, 2]', "not a JSON object"),
                         ('{"source": "x.png"}', "not a manifest entry"),
                         (json.dumps({**older[1], "version": MANIFEST_VERSION + 1}), "is newer")]:
        path.write_text("\n".join([lines[0], damaged, lines[2]]) + "\n")
        with pytest.raises(UserError) as err:
            examples_from_prepared(out)
        assert f"{path}, line 2:" in str(err.value) and why in str(err.value) and "prepare" in str(err.value)
    again = prepare_dataset(src, out, PrepareSettings(resolution=64))  # a re-run rebuilds the damaged set
    assert again.reused == 0 and len(load_manifest(out)) == 3
