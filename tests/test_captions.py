"""Captions are right the first time (issue #17): learned tokens must be in the captions, edited captions train,
junk captions are flagged, and `personae captions` edits them in bulk. No model is needed here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from personae.config.prepare import PrepareSettings
from personae.config.train import TrainJob
from personae.data.prepare import prepare_dataset
from personae.data.samples import write_sample_subject
from personae.errors import UserError


def _ti_job(tmp_path: Path, data: Path, token: str, method: str = "textual_inversion") -> TrainJob:
    return TrainJob(base_model=str(tmp_path / "no-model-needed"), method=method, data={"path": str(data)},
                    output=str(tmp_path / "run"), **{method: {"tokens": [{"token": token, "init_word": "woman"}]}})


@pytest.fixture
def subject(tmp_path):
    """Six star images whose sidecar captions say "a photo of sks star on a ... background"."""
    src = tmp_path / "src"
    write_sample_subject(src, count=6, size=64)
    return src


# --- item 1: a learned token in no caption stops the run before it starts ---

@pytest.mark.parametrize("method", ["textual_inversion", "pivotal"])
@pytest.mark.parametrize("prepared", [True, False], ids=["prepared-set", "raw-folder"])
def test_a_token_in_no_caption_stops_training_before_the_run_folder_exists(subject, tmp_path, method, prepared):
    from personae.jobs.train import run_training

    data = subject
    if prepared:
        data = tmp_path / "prepared"
        prepare_dataset(subject, data, PrepareSettings(resolution=64, trigger="sks"))
    job = _ti_job(tmp_path, data, "<me>", method)
    with pytest.raises(UserError) as err:
        run_training(job)
    text = str(err.value)
    assert '"<me>"' in text and "6 of 6" in text and "sks star" in text  # the token, the count, an example
    assert "--trigger <me>" in text and "{token}" in text and "--append" in text  # the fixes
    assert not (tmp_path / "run").exists()


def test_a_token_in_the_captions_passes_the_check(subject, tmp_path):
    from personae.training.setup import check_tokens, preflight

    data = tmp_path / "prepared"
    prepare_dataset(subject, data, PrepareSettings(resolution=64, trigger="<me>"))
    job = _ti_job(tmp_path, data, "<me>")
    with pytest.raises(UserError) as err:  # the next check: the (absent) base model
        preflight(job)
    assert "<me>" not in str(err.value) and "no-model-needed" in str(err.value)
    check_tokens(job, ["a photo of <me> star", "a star"], data)  # one caption with it is enough


# --- item 2: captions on disk are the truth ---

def test_training_reads_edited_sidecar_captions_and_says_how_many(subject, tmp_path):
    from personae.data.dataset import examples_from_prepared
    from personae.events import Message

    out = tmp_path / "prepared"
    prepare_dataset(subject, out, PrepareSettings(resolution=64))
    first = sorted((out / "images").glob("*.txt"))[0]
    first.write_text("a photo of sks star, edited by hand\n")  # what a kohya user or a tagging tool does
    events = []
    examples = examples_from_prepared(out, events.append)
    by_image = {e.image.with_suffix(".txt"): e.caption for e in examples}
    assert by_image[first] == "a photo of sks star, edited by hand"
    assert all(c.startswith("a photo of sks star on a") for p, c in by_image.items() if p != first)
    said = [e.text for e in events if isinstance(e, Message)]
    assert len(said) == 1 and "1 of 6 captions come from edited .txt files" in said[0]


def test_prepare_again_recaptions_an_image_whose_source_sidecar_changed(subject, tmp_path):
    out = tmp_path / "prepared"
    prepare_dataset(subject, out, PrepareSettings(resolution=64))
    (subject / "star_02.txt").write_text("a drawing of sks star, new caption\n")  # the image itself is unchanged
    result = prepare_dataset(subject, out, PrepareSettings(resolution=64))
    assert result.reused == 5
    entry = next(e for e in result.entries if e.source == "star_02.png")
    assert entry.caption == "a drawing of sks star, new caption"
    assert (out / entry.image).with_suffix(".txt").read_text().strip() == entry.caption
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert next(m for m in manifest if m["source"] == "star_02.png")["caption"] == entry.caption
    assert prepare_dataset(subject, out, PrepareSettings(resolution=64)).reused == 6  # then unchanged again


def test_prepare_again_keeps_a_caption_edited_in_the_set_and_the_manifest_follows_it(subject, tmp_path):
    out = tmp_path / "prepared"
    first = prepare_dataset(subject, out, PrepareSettings(resolution=64)).entries[0]
    (out / first.image).with_suffix(".txt").write_text("my own words\n")
    result = prepare_dataset(subject, out, PrepareSettings(resolution=64))
    assert result.reused == 6
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    line = next(m for m in manifest if m["image"] == first.image)
    assert line["caption"] == "my own words" and line["caption_from"] == "edited"


# --- item 5: every prepare option combination ends in a result or one clear message ---

RISKY_PREPARE_OPTIONS = [
    ["--crop", "none", "--resolution", "32"],  # the bucket step (64) larger than the resolution: was a traceback
    ["--crop", "none", "--resolution", "32", "--bucket-step", "256"],
    ["--crop", "none", "--resolution", "48", "--bucket-step", "32"],
    ["--crop", "none", "--resolution", "33", "--bucket-step", "8"],
    ["--crop", "none", "--resolution", "64", "--max-aspect", "1"],
    ["--crop", "none", "--resolution", "32", "--bucket-step", "16", "--min-side", "1"],
    ["--crop", "face", "--resolution", "32", "--face-margin", "0"],
    ["--crop", "center", "--resolution", "31"],
    ["--resolution", "32", "--min-side", "100000"],  # every image rejected
    ["--resolution", "32", "--template", "{caption"],
    ["--resolution", "32", "--template", "{nope}"],
    ["--resolution", "32", "--template", ""],
    ["--resolution", "32", "--template", "{trigger}", "--trigger", "{caption}"],
    ["--resolution", "32", "--append", ",,, ;"],
    ["--resolution", "32", "--captioner", "none", "--template", "{caption}"],
    ["--resolution", "32", "--captioner", "./no-such-captioner"],
    ["--resolution", "32", "--keep-tokens", "-1"],
    ["--resolution", "32", "--bucket-step", "0"],
    ["--resolution", "32", "--folder-tokens", "close_up"],
    ["--resolution", "32", "--background", "not-a-colour"],
]


@pytest.mark.parametrize("options", RISKY_PREPARE_OPTIONS, ids=lambda o: " ".join(o))
def test_risky_prepare_options_end_in_a_result_or_a_clear_message(subject, tmp_path, capsys, options):
    from personae.cli.main import main

    try:
        code = main(["prepare", str(subject), str(tmp_path / "out"), "--quiet", *options])
    except SystemExit as exc:  # argparse's one-line usage error
        code = exc.code
    err = capsys.readouterr().err
    assert code in (0, 2), err
    assert "Traceback" not in err and "this is a bug" not in err, err
    if code == 2:
        assert "error" in err.lower()


def test_a_bucket_step_larger_than_the_resolution_is_named_with_the_fix(subject, tmp_path, capsys):
    from personae.cli.main import main

    assert main(["prepare", str(subject), str(tmp_path / "out"), "--quiet", "--crop", "none", "--resolution", "32"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--bucket-step 64 gives no bucket" in err and "e.g. --bucket-step 16" in err
    assert not (tmp_path / "out").exists()
    assert main(["prepare", str(subject), str(tmp_path / "out"), "--quiet", "--crop", "none", "--resolution", "32",
                 "--bucket-step", "16"]) == 0


# --- item 3 (data side): camera-style names give no caption; junk captions are flagged ---

@pytest.mark.parametrize("name", ["IMG_1234.jpg", "DSC_0001.JPG", "DSCN0001.jpg", "PXL_20240101_123456789.MP.jpg",
                                  "DCIM_0001.jpg", "12345.png", "20240101_123456.jpg", "IMG-20240101-WA0001.jpg",
                                  "WhatsApp Image 2024-01-01 at 10.00.00 (1).jpeg", "IMG_E1234.JPG",
                                  "Screenshot 2024-01-01 at 10.00.00.png", "Copy of IMG_1234.jpg", "GOPR0001.JPG",
                                  "IMG_20240101_123456_HDR.jpg", "image0.jpeg", "P1000123.JPG"])
def test_camera_style_file_names_give_no_caption(name):
    from personae.data.captioners import FilenameCaptioner

    assert FilenameCaptioner().caption([None], [Path(name)]) == [""]


@pytest.mark.parametrize("name,caption", [("red_dress-03.jpg", "red dress"), ("photo of my dog.jpg", "photo of my dog"),
                                          ("cat-on-sofa (2).jpg", "cat on sofa"), ("Eva at the beach.png", "eva at the beach")])
def test_descriptive_file_names_still_give_their_words(name, caption):
    from personae.data.captioners import FilenameCaptioner

    assert FilenameCaptioner().caption([None], [Path(name)]) == [caption]


def test_report_and_contact_sheet_flag_empty_duplicate_and_file_name_captions(tmp_path):
    from personae.media.sheet import MARK_RED

    src = tmp_path / "src"
    src.mkdir()
    for i, name in enumerate(["IMG_1234", "DSC_0001", "red_dress-03", "beach", "park"]):
        Image.new("RGB", (64, 64), (40 * i, 120, 200 - 30 * i)).save(src / f"{name}.png")
    (src / "beach.txt").write_text("a woman on a beach\n")
    (src / "park.txt").write_text("a woman on a beach\n")  # the same caption twice
    out = tmp_path / "out"
    prepare_dataset(src, out, PrepareSettings(resolution=64, trigger="sks"))
    report = (out / "report.md").read_text()
    assert ("- captions: 2 from sidecar files, 1 from file names, 2 empty (template only), 2 duplicated "
            "(the same text on 4 images)") in report
    rows = {line.split("|")[1].strip(" `"): line.split("|")[3].strip() for line in report.splitlines()
            if line.startswith("| `")}
    assert rows["IMG_1234.png"] == "empty, duplicate" and rows["DSC_0001.png"] == "empty, duplicate"
    assert rows["red_dress-03.png"] == "from file name"
    assert rows["beach.png"] == rows["park.png"] == "duplicate"
    # the contact sheet: a red band over every flagged thumbnail (all five here), none on an unflagged one
    sheet = Image.open(out / "contact_sheet.png").convert("RGB")
    assert all(sheet.getpixel((5 + col * 170 + 150, 7)) == MARK_RED for col in range(5))
    (src / "red_dress-03.txt").write_text("a red dress on a hanger\n")
    prepare_dataset(src, out, PrepareSettings(resolution=64, trigger="sks"))
    sheet = Image.open(out / "contact_sheet.png").convert("RGB")
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    column = [e["source"] for e in entries].index("red_dress-03.png")
    assert sheet.getpixel((5 + column * 170 + 150, 7)) != MARK_RED
    # an edit with `personae captions` (or the web UI's editor) redraws the sheet: "park" is no longer a duplicate
    from personae.data.caption_editor import load_captions, set_captions

    names = {Path(item.name).stem.rsplit("-", 1)[0]: item.name for item in load_captions(out).items}
    set_captions(load_captions(out), {names["park"]: "sks, a woman in a park"})
    sheet = Image.open(out / "contact_sheet.png").convert("RGB")
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    flagged = {e["source"]: sheet.getpixel((5 + i * 170 + 150, 7)) == MARK_RED for i, e in enumerate(entries)}
    assert flagged == {"IMG_1234.png": True, "DSC_0001.png": True, "red_dress-03.png": False, "beach.png": False,
                       "park.png": False}


# --- `personae captions DIR`: list, search and edit in bulk ---

@pytest.mark.parametrize("caption,edit,expected", [
    ("a man, long_hair, smiling", {"replace": ("man", "woman")}, "a woman, long_hair, smiling"),
    ("a man, long_hair, smiling", {"remove_tags": ("Long Hair",)}, "a man, smiling"),  # any case, "_" = space
    ("a man, long_hair, smiling", {"remove_tags": ("hair",)}, "a man, long_hair, smiling"),  # whole tags only
    ("a man, sks, smiling", {"prepend": ("sks",)}, "sks, a man, smiling"),  # moved to the front, not doubled
    ("a man, smiling", {"append": ("drawn by KSH style",)}, "a man, smiling, drawn by KSH style"),
    ("a photo of a man", {"prepend": ("sks man",)}, "sks man, a photo of a man"),  # a sentence is one tag
    ("blurry, a man", {"replace": ("man", "dog"), "remove_tags": ("blurry",), "prepend": ("sks",),
                       "append": ("outdoors",)}, "sks, a dog, outdoors"),
    ("blurry", {"remove_tags": ("blurry",)}, ""),
])
def test_caption_edits_follow_kohya_tag_semantics(caption, edit, expected):
    from personae.data.caption_editor import CaptionEdit, edit_caption

    assert edit_caption(caption, CaptionEdit(**edit)) == expected


def _cli(capsys, *argv) -> tuple[int, str, str]:
    from personae.cli.main import main

    code = main(["captions", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def _manifest_captions(out: Path) -> dict[str, str]:
    return {m["image"]: m["caption"] for m in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}


def test_captions_lists_and_searches_a_prepared_set(subject, tmp_path, capsys):
    out = tmp_path / "prepared"
    prepare_dataset(subject, out, PrepareSettings(resolution=64))
    code, text, _ = _cli(capsys, out)
    assert code == 0 and text.count("a photo of sks star on a") == 6 and "6 images in" in text
    code, text, _ = _cli(capsys, out, "--search", "BLUE")
    assert code == 0 and text.count(": a photo of sks star on a blue background") == 1 and "(1 contain 'BLUE')" in text


def test_captions_edits_a_prepared_set_and_its_manifest_follows(subject, tmp_path, capsys):
    from personae.data.dataset import examples_from_prepared

    out = tmp_path / "prepared"
    prepare_dataset(subject, out, PrepareSettings(resolution=64))
    before = {p: p.read_text() for p in (out / "images").glob("*.txt")}
    manifest_before = (out / "manifest.jsonl").read_text()
    code, text, _ = _cli(capsys, out, "--prepend", "<me>", "--replace", "a photo of", "a drawing of", "--dry-run")
    assert code == 0 and "would change 6 of 6 captions" in text and "+ <me>, a drawing of sks star" in text
    assert {p: p.read_text() for p in (out / "images").glob("*.txt")} == before  # a dry run writes nothing
    assert (out / "manifest.jsonl").read_text() == manifest_before

    code, text, _ = _cli(capsys, out, "--search", "red background", "--append", "red")
    assert code == 0 and "changed 1 of 1 captions containing 'red background'" in text
    code, text, _ = _cli(capsys, out, "--prepend", "<me>", "--replace", "a photo of", "a drawing of")
    assert code == 0 and "changed 6 of 6 captions" in text
    on_disk = {p.relative_to(out).with_suffix(".png").as_posix(): p.read_text().strip()
               for p in (out / "images").glob("*.txt")}
    assert _manifest_captions(out) == on_disk  # the manifest follows the caption files
    assert sorted(on_disk.values())[0] == "<me>, a drawing of sks star on a blue background"
    assert sum(c.endswith(", red") for c in on_disk.values()) == 1
    assert {e.caption for e in examples_from_prepared(out)} == set(on_disk.values())
    code, text, _ = _cli(capsys, out, "--remove-tag", "red")
    assert code == 0 and "changed 1 of 6 captions" in text
    assert not any(c.endswith(", red") for c in _manifest_captions(out).values())


def test_captions_never_writes_into_a_folder_personae_did_not_make(tmp_path, capsys):
    """A folder of the user's images and .txt files is read, searched and dry-run; an edit there is refused with
    the way out (prepare it, edit the prepared set), and every file stays as it was."""
    src = tmp_path / "drawings"
    (src / "10_ksh").mkdir(parents=True)
    for name in ("a", "b", "10_ksh/c"):
        Image.new("RGB", (64, 64), "white").save(src / f"{name}.png")
    (src / "a.txt").write_text("pencil, cat\n")
    (src / "10_ksh/c.caption").write_text("pencil, dog\n")
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("pencil, bird\n")
    Image.new("RGB", (64, 64), "white").save(src / "d.png")
    (src / "d.txt").symlink_to(elsewhere)
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    code, text, _ = _cli(capsys, src, "--remove-tag", "pencil", "--append", "drawn by KSH style", "--dry-run")
    assert code == 0 and "b.png: not edited: no caption file" in text and "d.png: not edited: its caption file is a link" in text
    assert "cat, drawn by KSH style" in text and "dog, drawn by KSH style" in text
    code, _, err = _cli(capsys, src, "--remove-tag", "pencil", "--append", "drawn by KSH style")
    err = " ".join(err.split())
    assert code == 2 and "is not a `personae prepare` output" in err and "personae prepare" in err and "Traceback" not in err
    assert {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} == before and elsewhere.read_text() == "pencil, bird\n"
    assert sorted(p.name for p in src.iterdir()) == ["10_ksh", "a.png", "a.txt", "b.png", "d.png", "d.txt"]


@pytest.mark.parametrize("argv", [["--remove-tag", "a, b"], ["--prepend", " "], ["--replace", "", "x"]])
def test_captions_bad_options_are_clear_messages(subject, capsys, argv):
    code, _, err = _cli(capsys, subject, *argv)
    assert code == 2 and "error" in err.lower() and "Traceback" not in err


def test_captions_of_a_missing_folder_is_a_clear_message(tmp_path, capsys):
    code, _, err = _cli(capsys, tmp_path / "nope")
    assert code == 2 and "is not a folder" in " ".join(err.split()), err  # the paragraph wraps at 100 columns


def test_a_raw_folder_caption_with_braces_is_text_not_a_template(tmp_path):
    from personae.training.setup import check_tokens, raw_folder_settings

    src = tmp_path / "raw"
    src.mkdir()
    Image.new("RGB", (64, 64), "white").save(src / "IMG_0001.png")
    job = _ti_job(tmp_path, src, "<me>")
    job.data.caption = "a photo of <me> {wearing} a hat"
    from personae.data.prepare import planned_captions

    assert planned_captions(src, raw_folder_settings(job)) == ["a photo of <me> {wearing} a hat"]
    check_tokens(job, planned_captions(src, raw_folder_settings(job)), src)


def test_the_report_lists_a_bounded_number_of_flagged_captions(subject, tmp_path, monkeypatch):
    import personae.data.prepare as prepare

    monkeypatch.setattr(prepare, "REPORT_ROWS", 2)
    prepare_dataset(subject, tmp_path / "out", PrepareSettings(resolution=64, captioner="none", recaption=True))
    report = (tmp_path / "out" / "report.md").read_text()
    assert "6 empty (template only)" in report  # the counts cover every image
    assert report.count("| empty, duplicate |") == 2 and "| ... | 4 more (see `manifest.jsonl`) | |" in report


def test_a_job_trigger_in_no_caption_is_warned_about(subject, tmp_path):
    from personae.events import Message
    from personae.training.setup import load_examples

    data = tmp_path / "prepared"
    prepare_dataset(subject, data, PrepareSettings(resolution=64))
    job = TrainJob(base_model="x", method="lora", data={"path": str(data)}, output=str(tmp_path / "run"),
                   trigger="ohwx")
    events = []
    load_examples(job, tmp_path / "run", events.append)
    warned = [e.text for e in events if isinstance(e, Message) and e.level == "warning"]
    assert len(warned) == 1 and 'trigger "ohwx" appears in none of the 6 training captions' in warned[0]
    events.clear()
    load_examples(job.model_copy(update={"trigger": "sks"}), tmp_path / "run", events.append)
    assert not events
