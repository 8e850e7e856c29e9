"""The web UI's Prepare, Storyboard, Compare, Animate and World tabs, without a browser: the functions their
buttons call (uploads into the workspace, settings files kept inside it, captions written as `personae
captions` writes them) and real jobs on the tiny model through the job queue."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from personae.errors import UserError
from personae.events import ignore
from personae.web.workspace import Workspace


def _images(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((96, 96, 3)) * 255).astype(np.uint8)).save(folder / f"red cat {i}.png")
    return folder


@pytest.fixture
def ws(tmp_path):
    return Workspace(tmp_path / "ws")


def _prepared(ws, tmp_path) -> Path:
    from personae.config.prepare import PrepareSettings
    from personae.web.tab_prepare import dataset_folder, prepare, source_folder

    uploads = sorted(_images(tmp_path / "phone").iterdir())
    src = source_folder(ws, [str(p) for p in uploads], None)
    assert src == ws.root / "uploads" / "0001" and sorted(p.name for p in src.iterdir()) == [p.name for p in uploads]
    out = dataset_folder(ws, "cat")
    settings = PrepareSettings(trigger="sks", class_word="cat", resolution=64, template="{trigger} {class}, {caption}")
    line = prepare(src, out, settings, ignore)
    assert line.startswith("3 images") and (out / "contact_sheet.png").is_file()
    return out


def test_prepare_then_edit_a_caption_inline_writes_the_caption_file_and_the_manifest(ws, tmp_path):
    from personae.web.tab_prepare import caption_rows, save_captions

    out = _prepared(ws, tmp_path)
    rows = caption_rows(out)
    assert len(rows) == 3 and all(r[1].startswith("sks cat") for r in rows)
    name = rows[1][0]
    rows[1][1] = "sks cat, sitting on a chair"
    import pandas as pd

    assert save_captions(out, pd.DataFrame(rows, columns=["image", "caption"])).startswith("Saved: changed 1 of 3")
    assert (out / name).with_suffix(".txt").read_text().strip() == "sks cat, sitting on a chair"
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {e["image"]: e["caption"] for e in manifest}[name] == "sks cat, sitting on a chair"
    assert caption_rows(out)[1][1] == "sks cat, sitting on a chair"


def test_captions_of_a_folder_personae_did_not_make_are_never_written(ws, tmp_path):
    from personae.web.tab_prepare import caption_rows, save_captions

    mine = _images(ws.root / "mine", 1)
    (mine / "red cat 0.txt").write_text("my own caption\n")
    rows = caption_rows(mine)
    rows[0][1] = "changed"
    with pytest.raises(UserError, match="not a `personae prepare` output"):
        save_captions(mine, rows)
    assert (mine / "red cat 0.txt").read_text() == "my own caption\n"


def test_prepare_inputs_outside_the_workspace_are_refused(ws, tmp_path):
    from personae.web.tab_prepare import captioner_in_workspace, dataset_folder, source_folder

    outside = _images(tmp_path / "outside", 1)
    for bad in (str(outside), "../outside", "uploads/../../outside"):
        with pytest.raises(UserError):
            source_folder(ws, None, bad)
    for bad in ("a/b", "../x", "/tmp/x"):
        with pytest.raises(UserError):
            dataset_folder(ws, bad)
    with pytest.raises(UserError, match="absolute"):
        captioner_in_workspace(ws, f"wd14:{outside}")
    (ws.root / "models" / "tagger").mkdir(parents=True)
    assert captioner_in_workspace(ws, "wd14:models/tagger") == f"wd14:{ws.root / 'models' / 'tagger'}"
    assert captioner_in_workspace(ws, "filename") == "filename"
    assert captioner_in_workspace(ws, "models/tagger") == str(ws.root / "models" / "tagger")
    with pytest.raises(UserError, match="absolute"):
        captioner_in_workspace(ws, str(outside))


def test_a_scenes_file_or_suite_naming_a_file_out_of_the_workspace_is_refused(ws, tmp_path, tiny_model):
    from personae.web.tab_more import compare_suite, storyboard_settings

    scenes = ("version: 1\nmodel: {model}\nsteps: 2\nwidth: 64\nheight: 64\n"
              "scenes:\n  - {{number: 1, description: a cat, shot: full}}\n")
    with pytest.raises(UserError, match="outside the workspace"):
        storyboard_settings(ws, scenes.format(model=tiny_model[0]), None, {})  # an absolute path elsewhere
    with pytest.raises(UserError, match="goes up out of the workspace"):
        storyboard_settings(ws, scenes.format(model="../tiny"), None, {})
    suite = f"version: 1\nbase_model: models/tiny\nvariants:\n  - {{label: l, lora: {tiny_model[1]}}}\n"
    with pytest.raises(UserError, match="outside the workspace"):
        compare_suite(ws, suite, None, {})
    with pytest.raises(UserError, match="does not exist in the workspace"):
        compare_suite(ws, "", "suites/none.yaml", {})
    with pytest.raises(UserError, match="not valid YAML"):
        compare_suite(ws, "a: [", None, {})


def test_unmoved_form_values_do_not_override_the_file(ws):
    import gradio as gr

    from personae.config.compare import CompareSuite
    from personae.web.forms import SettingsForm
    from personae.web.jobfiles import changed

    with gr.Blocks():
        form = SettingsForm(CompareSuite, groups=("sampling",))
    defaults = [c.value for c in form.inputs]
    assert changed(form, defaults) == {}
    moved = list(defaults)
    moved[list(form.components).index("steps")] = 7
    assert changed(form, moved) == {"steps": 7}


def test_world_tab_bench_settings_are_the_commands(ws):
    from personae.web.tab_world import SMALL, bench_for

    bench = bench_for("pivotal", "heart", 12, {"images": 4, "workers": 1}, {"steps": 3, "seeds_per_prompt": 2})
    assert (bench.methods, bench.concepts, bench.seeds, bench.images) == (["pivotal"], ["heart"], 1, 4)
    assert bench.jobs["pivotal"]["train"]["steps"] == 12 and bench.eval.steps == 3 and bench.eval.seeds_per_prompt == 2
    assert bench.jobs["lora"]["train"]["steps"] == 600  # the other recipes as declared
    with pytest.raises(UserError):
        bench_for("lora", "square", 10, {}, {})  # not a held-out shape
    assert SMALL["workers"] == 1


def test_storyboard_typed_in_the_page_runs_on_the_tiny_model_through_the_queue(ws, tiny_model):
    import shutil

    from personae.jobs.queue import JobQueue
    from personae.jobs.storyboard import run_storyboard
    from personae.web.tab_more import storyboard_settings

    shutil.copytree(tiny_model[0], ws.root / "models" / "tiny")
    text = ("version: 1\nmodel: models/tiny\nsteps: 2\nwidth: 64\nheight: 64\nseed: 0\nscenes:\n"
            "  - {number: 1, description: a cat on a roof, dialogue: hi, shot: close-up, angle: eye level}\n"
            "  - {number: 2, description: a red house, shot: full, angle: high angle}\n")
    settings = storyboard_settings(ws, text, None, {"steps": 1})
    assert settings.model == str(ws.root / "models" / "tiny") and settings.steps == 1  # the form's value wins
    assert (ws.root / "uploads" / "storyboard" / "0001" / "scenes.yaml").is_file()
    out = ws.new_folder("outputs/storyboard")
    jobs = JobQueue()
    task = jobs.wait(jobs.submit("storyboard", "2 scenes", lambda on_event: run_storyboard(settings, out,
                                                                                           on_event=on_event)).id, 300)
    assert task.status == "done", task.error
    assert (out / "sheet.png").is_file() and (out / "sheet.pdf").read_bytes().startswith(b"%PDF")
    assert np.asarray(Image.open(out / "sheet.png")).std() > 5


def test_animate_form_values_become_the_commands_settings(ws, tiny_model):
    from personae.config.animate import AnimateSettings
    from personae.config.base import parse_settings
    from personae.web.tab_animate import animate_data

    (ws.root / "models" / "motion").mkdir(parents=True)
    data = animate_data(ws, {"prompt": "a cat", "frames": 4}, "models/motion", "models/motion", [], 1.0, [])
    settings = parse_settings(AnimateSettings, data, "the Animate form")
    assert settings.motion_adapter == str(ws.root / "models" / "motion") and settings.frames == 4
    with pytest.raises(UserError):
        animate_data(ws, {"prompt": "a cat"}, "models/motion", "models/motion", ["../lora.safetensors"], 1.0, [])
    with pytest.raises(UserError):
        animate_data(ws, {"prompt": "a cat"}, str(tiny_model[0]), "models/motion", [], 1.0, [])


def test_the_animate_forms_controlnet_unit_becomes_the_clips(ws, tmp_path):
    """The Animate tab's ControlNet accordion: a folder of frames in the workspace, or an uploaded video, with its
    ControlNet, weight and Control Mode, becomes the clip's unit; none, a missing source or a folder outside the
    workspace is said plainly."""
    from personae.config.animate import AnimateSettings
    from personae.config.base import parse_settings
    from personae.web.tab_animate import animate_data, control_unit

    (ws.root / "models" / "motion").mkdir(parents=True)
    (ws.root / "models" / "pose-net").mkdir(parents=True)
    (ws.root / "uploads" / "dance").mkdir(parents=True)
    unit = control_unit(ws, "pose", None, "uploads/dance", "models/pose-net", 0.6, "My prompt is more important")
    data = animate_data(ws, {"prompt": "a dancer", "frames": 4, "control_end": 0.8}, "models/motion",
                        "models/motion", [], 1.0, [], unit)
    settings = parse_settings(AnimateSettings, data, "the Animate form")
    (ref,) = settings.controls
    assert ref.image == str(ws.root / "uploads" / "dance") and ref.model == str(ws.root / "models" / "pose-net")
    assert (ref.type, ref.weight, ref.control_mode, settings.control_end) == ("pose", 0.6,
                                                                            "My prompt is more important", 0.8)
    video = str(ws.root / "uploads" / "walk.gif")
    assert control_unit(ws, "canny", video, "", "", 1.0, "Balanced") == {
        "type": "canny", "image": video, "weight": 1.0, "control_mode": "Balanced"}  # the type's default ControlNet
    assert control_unit(ws, "canny", video, "", "", 1.0, "Balanced", "low=40, high=90")["options"] == {
        "low": 40.0, "high": 90.0}  # the preprocessor's options, as on the Generate tab
    assert control_unit(ws, "none", video, "uploads/dance", "", 1.0, "Balanced") is None
    assert animate_data(ws, {"prompt": "a"}, "models/motion", "models/motion", [], 1.0, [])["controls"] == []
    with pytest.raises(UserError, match="needs its control frames"):
        control_unit(ws, "pose", None, " ", "", 1.0, "Balanced")
    with pytest.raises(UserError):
        control_unit(ws, "pose", None, "../elsewhere", "", 1.0, "Balanced")


def test_the_animate_tab_saves_a_webp_and_a_webm_when_asked(ws, tiny_model, motion_dir):
    """The tab's "Also save as" WebP / WebM: the job writes them beside the GIF and the MP4 it shows, each with the
    clip's settings, "Display loop number" among them (a field of the form's motion group)."""
    import shutil

    from personae.config.animate import AnimateSettings
    from personae.config.base import parse_settings
    from personae.jobs.queue import JobQueue
    from personae.media.video import read_clip_comment
    from personae.web.app import build
    from personae.web.tab_animate import animate_data, animate_work

    shutil.copytree(tiny_model[0], ws.root / "models" / "tiny")
    shutil.copytree(motion_dir, ws.root / "models" / "motion")
    data = animate_data(ws, {"prompt": "a cat", "frames": 4, "context": 4, "context_stride": 2, "steps": 1,
                             "width": 32, "height": 32, "loop_number": 2}, "models/tiny", "models/motion", [], 1.0, [])
    settings = parse_settings(AnimateSettings, data, "the Animate form")
    out = ws.new_folder("outputs/animate")
    jobs = JobQueue()
    task = jobs.wait(jobs.submit("animate", "a cat", animate_work(settings, out, ["WebP", "WebM"])).id, 300)
    assert task.status == "done", task.error
    assert [Path(p).name for p in task.result] == ["clip.gif", "clip.mp4"]
    comments = {name: read_clip_comment(out / name) for name in ("clip.gif", "clip.mp4", "clip.webp", "clip.webm")}
    assert len(set(comments.values())) == 1 and "Loop number: 2" in comments["clip.webp"]
    with Image.open(out / "clip.webp") as webp:
        assert webp.n_frames == 4 and webp.info["loop"] == 2
    shown = {getattr(block, "elem_id", None) for block in build(ws, JobQueue()).blocks.values()}
    assert {"animate-loop-number", "animate-also"} <= shown


def test_the_animate_tabs_start_from_a_picture_or_frames(ws, tiny_model, motion_dir, tmp_path):
    """"Start from a clip or a picture": a folder of frames in the workspace wins over an upload; one picture with a
    last frame is animated as A1111's img2gif (its latent power and scale in the clip's settings); a last frame alone,
    or a folder outside the workspace, is said plainly."""
    import shutil

    from personae.config.animate import AnimateSettings
    from personae.config.base import parse_settings
    from personae.jobs.queue import JobQueue
    from personae.media.png import parse_parameters
    from personae.media.video import read_clip_comment
    from personae.web.app import build
    from personae.web.tab_animate import animate_data, animate_work, start_from

    shutil.copytree(tiny_model[0], ws.root / "models" / "tiny")
    shutil.copytree(motion_dir, ws.root / "models" / "motion")
    (ws.root / "uploads" / "frames").mkdir(parents=True)
    first, last = ws.root / "uploads" / "first.png", ws.root / "uploads" / "last.png"
    Image.new("RGB", (32, 32), (200, 40, 40)).save(first)
    Image.new("RGB", (32, 32), (40, 40, 200)).save(last)
    assert start_from(ws, str(first), "uploads/frames", None) == {"init_image": str(ws.root / "uploads" / "frames")}
    assert start_from(ws, None, "", None) == {}
    with pytest.raises(UserError, match="clip from one picture ends at"):
        start_from(ws, None, " ", str(last))
    with pytest.raises(UserError):
        start_from(ws, None, "../elsewhere", None)
    data = animate_data(ws, {"prompt": "a cat", "frames": 4, "context": 4, "context_stride": 2, "steps": 2,
                             "width": 32, "height": 32, "strength": 0.6, "latent_scale": 4.0}, "models/tiny",
                        "models/motion", [], 1.0, [])
    data.update(start_from(ws, str(first), "", str(last)))
    settings = parse_settings(AnimateSettings, data, "the Animate form")
    out = ws.new_folder("outputs/animate")
    jobs = JobQueue()
    task = jobs.wait(jobs.submit("animate", "a cat", animate_work(settings, out)).id, 300)
    assert task.status == "done", task.error
    params = parse_parameters(read_clip_comment(out / "clip.gif"))[2]
    assert (params["Denoising strength"], params["Latent scale"], params["Latent scale last"]) == ("0.6", "4", "32")
    shown = {getattr(block, "elem_id", None) for block in build(ws, JobQueue()).blocks.values()}
    assert {"animate-init-file", "animate-init-folder", "animate-last-file", "animate-strength",
            "animate-latent-power", "animate-latent-scale"} <= shown


def test_earlier_results_are_listed_from_disk_after_a_restart(ws, tmp_path):
    """Animate, Storyboard and Compare list their earlier outputs from the workspace (newest first), so a restarted
    UI still shows them; a folder without its result, or a link out of the workspace, is not listed."""
    from personae.web.tab_animate import show_clip
    from personae.web.tab_more import show_board, show_comparison

    root = ws.root
    for n, files in ((1, ("clip.gif", "clip.mp4")), (2, ("clip.gif",)), (10, ("clip.gif", "clip.mp4"))):
        folder = root / "outputs/animate" / f"{n:04d}"
        folder.mkdir(parents=True)
        for name in files:
            (folder / name).write_bytes(b"x")
    (root / "outputs/animate/notes").mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for name in ("clip.gif", "clip.mp4"):
        (outside / name).write_bytes(b"x")
    (root / "outputs/animate/0011").symlink_to(outside)
    assert ws.outputs("animate", ("clip.gif", "clip.mp4")) == ["outputs/animate/0010", "outputs/animate/0001"]
    status, mp4, gif = show_clip(ws, "outputs/animate/0010")
    assert "outputs/animate/0010" in status and Path(mp4).name == "clip.mp4" and Path(gif).name == "clip.gif"
    assert Path(mp4).parent == root / "outputs/animate/0010"
    with pytest.raises(UserError):
        show_clip(ws, "outputs/animate/0011")  # the link leads out of the workspace
    board = root / "outputs/storyboard/0003"
    board.mkdir(parents=True)
    (board / "sheet.png").write_bytes(b"x")
    assert ws.outputs("storyboard", ("sheet.png",)) == ["outputs/storyboard/0003"]
    assert show_board(ws, "outputs/storyboard/0003")[1:] == (str(board / "sheet.png"), None)  # no PDF written
    comparison = root / "outputs/compare/0001"
    (comparison / "grids").mkdir(parents=True)
    (comparison / "report.html").write_text("<html></html>")
    (comparison / "grids/seed-0.png").write_bytes(b"x")
    status, frame, grids = show_comparison(ws, ws.outputs("compare", ("report.html",))[0])
    assert "report.html" in frame and grids == [str(comparison / "grids/seed-0.png")]
    assert ws.outputs("generate", ("x.png",)) == [] and show_clip(ws, None) == ("", None, None)
    from personae.web.jobfiles import shown

    status, mp4, gif = shown(show_clip, ws, "../elsewhere")  # a value typed past the list: said, not raised
    assert status.startswith("**Not shown:**") and mp4 is None and gif is None


def test_extras_and_merge_forms_become_the_commands_settings_and_run_through_the_queue(ws, tiny_model, tmp_path):
    """The Extras tab (A1111's Extras: `personae upscale`) and the Merge tab (its Checkpoint Merger: `personae
    merge`): pictures and models from the workspace or uploads, results in new workspace folders."""
    import shutil
    from types import SimpleNamespace

    import torch
    from safetensors.torch import save_file

    from personae.jobs.merge import run_merge
    from personae.jobs.queue import JobQueue
    from personae.jobs.upscale import run_upscale
    from personae.models.upscalers import CompactNet
    from personae.web.tab_extras import merge_request, upscale_request

    ctx = SimpleNamespace(workspace=ws, jobs=JobQueue())
    (ws.root / "models" / "RealESRGAN").mkdir(parents=True)
    save_file(CompactNet(3, 3, 4, 1, 2).state_dict(), str(ws.root / "models/RealESRGAN/RealESRGAN_x2plus.safetensors"))
    photo = _images(tmp_path / "mine", 1) / "red cat 0.png"
    sources, settings = upscale_request(ctx, [str(photo)], "", "R-ESRGAN 2x+", {"scale": 2.0})
    assert Path(sources[0]).parent.parent == ws.root / "uploads" / "extras"  # the upload copied into the workspace
    assert settings.upscaler == str((ws.root / "models/RealESRGAN/RealESRGAN_x2plus.safetensors").resolve())
    out = ws.new_folder("outputs/upscale")
    task = ctx.jobs.wait(ctx.jobs.submit("upscale", "1", lambda on_event: run_upscale(sources, out, settings,
                                                                                      on_event)).id, 120)
    assert task.status == "done", task.error
    assert Image.open(out / "red cat 0.png").size == (192, 192)
    (ws.root / "models" / "ESRGAN").mkdir()
    torch.save(CompactNet(3, 3, 4, 1, 2).state_dict(), ws.root / "models/ESRGAN/4x-Old.pth")
    pickled, unticked = upscale_request(ctx, [], ws.relative(out), "models/ESRGAN/4x-Old.pth", {"scale": 2.0})
    with pytest.raises(UserError, match="is a pickle file"):  # the form's allow-pickle box decides, as --allow-pickle
        run_upscale(pickled, ws.new_folder("outputs/upscale"), unticked)
    ticked = upscale_request(ctx, [], ws.relative(out), "4x-Old", {"scale": 2.0, "allow_pickle": True})[1]
    assert ticked.allow_pickle and ticked.upscaler.endswith("4x-Old.pth")
    for args, message in ((([], "", "R-ESRGAN 2x+"), "No pictures"), (([str(photo)], "", "image"), "No upscaler"),
                          (([], "../mine", "R-ESRGAN 2x+"), "goes up out of the workspace")):
        with pytest.raises(UserError, match=message):
            upscale_request(ctx, *args, {})
    shutil.copytree(tiny_model[0], ws.root / "models" / "tiny")
    models, target, merge = merge_request(ws, ["models/tiny", "", ""], [], 1.0, "", "tiny-half",
                                          {"method": "none", "half": True})
    assert models == [str(ws.root / "models" / "tiny")] and target == ws.root / "models" / "tiny-half" and merge.half
    task = ctx.jobs.wait(ctx.jobs.submit("merge", "m", lambda on_event: run_merge(models, target, merge,
                                                                                  on_event=on_event)).id, 120)
    assert task.status == "done", task.error
    assert (target / "model_index.json").is_file()
    from personae.web.tab_generate import models as listed

    assert "models/tiny-half" in listed(ws)  # the Generate tab offers the result
    for args, message in (("tiny-half", "already exists"), ("../x", "not a plain name"), ("", "not a plain name")):
        with pytest.raises(UserError, match=message):
            merge_request(ws, ["models/tiny"], [], 1.0, "", args, {"method": "none", "half": True})
    # the boxes a method does not use are ignored; one it needs must be filled
    models, _, merge = merge_request(ws, ["models/tiny", "models/tiny-half", "models/tiny"], [], 1.0, "", "mix", {})
    assert merge.method == "weighted-sum" and len(models) == 2
    with pytest.raises(UserError, match="add-difference needs model C"):
        merge_request(ws, ["models/tiny", "models/tiny-half", ""], [], 1.0, "", "mix", {"method": "add-difference"})
    # the form's allow-pickle box, as --allow-pickle: a .ckpt model or LoRA is read only when it is ticked
    assert not merge.allow_pickle
    assert merge_request(ws, ["models/tiny", "", ""], [], 1.0, "", "mix", {"method": "none",
                                                                           "allow_pickle": True})[2].allow_pickle
    # a LoRA extracted from a fine-tuned model (here the fp16 copy: its rounding is the difference) into models/Lora
    from personae.jobs.extract import run_extract
    from personae.web.tab_extras import extract_request

    tuned, lora, extract = extract_request(ws, "models/tiny-half", "models/tiny", "half-diff", {"rank": 2})
    assert lora == ws.root / "models/Lora/half-diff.safetensors" and extract.base == str(ws.root / "models" / "tiny")
    task = ctx.jobs.wait(ctx.jobs.submit("merge", "x", lambda on_event: run_extract(tuned, lora, extract,
                                                                                    on_event=on_event)).id, 120)
    assert task.status == "done", task.error
    from personae.web.tab_generate import LORA_SUFFIXES

    assert "models/Lora/half-diff.safetensors" in ws.files(LORA_SUFFIXES)  # the Generate tab offers it
    for args, message in ((("models/tiny-half", "", "x"), "needs the fine-tuned model"),
                          (("models/tiny-half", "models/tiny", "half-diff"), "already exists"),
                          (("models/tiny-half", "models/tiny", "a/b"), "not a plain name")):
        with pytest.raises(UserError, match=message):
            extract_request(ws, *args, {})


def test_the_generate_and_animate_tabs_show_the_sampler_parameters(ws):
    """A1111's sampler parameters and prompt encoding are concepts images and clips share: both tabs show each. The
    Generate tab shows Dynamic Thresholding's and Soft inpainting's settings too."""
    from personae.config.sampling import PromptEncoding, SamplerParameters
    from personae.config.thresholding import ThresholdingSettings
    from personae.jobs.queue import JobQueue
    from personae.web.app import build

    shown = {getattr(block, "elem_id", None) for block in build(ws, JobQueue()).blocks.values()}
    for name in [*SamplerParameters.model_fields, *PromptEncoding.model_fields]:
        assert {f"field-{name.replace('_', '-')}", f"animate-{name.replace('_', '-')}"} <= shown, name
    for name in [*ThresholdingSettings.model_fields, "soft_inpainting", "soft_difference_threshold", "tiling",
                 "token_merging", "hires_token_merging"]:
        assert f"field-{name.replace('_', '-')}" in shown, name


def test_a_dropped_clips_settings_the_animate_form_cannot_hold_are_named():
    """A frame's JSON holds every setting; those the form has no field for (LoRAs, a picture to start from,
    ControlNet units) are named in a warning instead of being dropped silently; empty ones are not named."""
    from personae.web.tab_animate import stored_elsewhere

    data = {"model": "/m", "motion_adapter": "/a", "version": 1, "prompt": "a cat", "steps": 4,
            "loras": [{"path": "/l.safetensors", "weight": 1.0}], "init_image": "/first.png", "last_frame": None,
            "controls": [], "embeddings": [{"path": "/e.pt"}]}
    assert stored_elsewhere(data, {"prompt", "steps"}) == ["embeddings", "init_image", "loras"]
