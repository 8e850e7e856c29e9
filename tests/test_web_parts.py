"""The web UI's parts without a browser (issue #16): the workspace's path checks, forms generated from the settings
declarations, and the job queue (order, cancel, progress, rates, failures)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from personae.errors import UserError
from personae.events import ImageReady, Message, Progress
from personae.jobs.queue import JobQueue
from personae.web.workspace import Workspace


# -- the workspace
def test_paths_stay_inside_the_workspace(tmp_path):
    ws = Workspace(tmp_path / "work")
    (tmp_path / "outside").mkdir()
    (tmp_path / "work" / "data").mkdir()
    os.symlink(tmp_path / "outside", tmp_path / "work" / "link")
    assert ws.path("data") == ws.root / "data"
    assert ws.path("./data/") == ws.root / "data"
    for bad, why in [("../outside", "goes up"), ("data/../../outside", "goes up"), ("/etc", "absolute"),
                     ("~/x", "absolute"), ("C:\\Windows", "absolute"), ("link", "symbolic link"),
                     ("link/file.png", "symbolic link"), ("", "empty")]:
        with pytest.raises(UserError, match=why):
            ws.path(bad)
    with pytest.raises(UserError, match="does not exist"):
        ws.path("nothing", must_exist=True)


def test_uploads_keep_plain_names_only_and_never_replace_a_file(tmp_path):
    ws = Workspace(tmp_path / "work")
    src = tmp_path / "upload.tmp"
    src.write_bytes(b"x" * 100)
    folder = ws.new_folder("uploads")
    assert folder == ws.root / "uploads" / "0001" and ws.new_folder("uploads").name == "0002"
    taken = ws.take_upload(src, "me 01.png", folder)
    assert taken.read_bytes() == src.read_bytes()
    for name in ["../evil.png", "a/b.png", "..\\evil.png", "/etc/passwd", "..", ".hidden"]:
        with pytest.raises(UserError):
            ws.take_upload(src, name, folder)
    with pytest.raises(UserError, match="already exists"):
        ws.take_upload(src, "me 01.png", folder)
    with pytest.raises(UserError, match="over the"):
        ws.take_upload(src, "big.png", folder, limit_mb=50 / 2**20)
    with pytest.raises(UserError, match="outside"):
        ws.take_upload(src, "x.png", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["upload.tmp", "work"]  # nothing escaped


def test_embeddings_offered_include_a1111_cards_under_models_not_previews_or_run_images(tmp_path):
    from personae.web.tab_generate import embedding_files

    ws = Workspace(tmp_path / "work")
    for name in ("models/ksh.png", "models/ksh.preview.png", "models/old.pt", "models/sub/card.webp",
                 "runs/lora/validation/step-000100.png", "runs/lora/lora.safetensors"):
        (ws.root / name).parent.mkdir(parents=True, exist_ok=True)
        (ws.root / name).write_bytes(b"x")
    assert embedding_files(ws) == ["models/ksh.png", "models/old.pt", "models/sub/card.webp",
                                   "runs/lora/lora.safetensors"]


def test_hires_upscalers_offered_and_named_ones_found_in_the_workspace(tmp_path):
    from personae.web.tab_generate import upscaler_path, upscalers

    ws = Workspace(tmp_path / "work")
    for name in ("models/ESRGAN/4x-UltraSharp.pth", "models/RealESRGAN/RealESRGAN_x4plus.pth", "models/lora.pth"):
        (ws.root / name).parent.mkdir(parents=True, exist_ok=True)
        (ws.root / name).write_bytes(b"x")
    assert upscalers(ws) == ["latent", "image", "models/ESRGAN/4x-UltraSharp.pth",
                             "models/RealESRGAN/RealESRGAN_x4plus.pth"]
    assert upscaler_path(ws, "image") == "image"
    assert upscaler_path(ws, "models/ESRGAN/4x-UltraSharp.pth") == str(ws.root / "models/ESRGAN/4x-UltraSharp.pth")
    # a dropped A1111 PNG names them as A1111 does
    assert upscaler_path(ws, "R-ESRGAN 4x+") == str((ws.root / "models/RealESRGAN/RealESRGAN_x4plus.pth").resolve())
    assert upscaler_path(ws, "4x-UltraSharp") == str((ws.root / "models/ESRGAN/4x-UltraSharp.pth").resolve())
    with pytest.raises(UserError, match='"4x-Remacri" is not in the workspace'):
        upscaler_path(ws, "4x-Remacri")
    with pytest.raises(UserError, match="goes up out of the workspace"):
        upscaler_path(ws, "../4x.pth")
    # a dropped PNG naming one the workspace lacks fills the form with Lanczos and says so, as --from-png does
    from personae.web.tab_generate import png_upscaler

    assert png_upscaler(ws, "4x-UltraSharp") == ("4x-UltraSharp", None)
    kept, said = png_upscaler(ws, "4x-Remacri")
    assert kept == "image" and '"4x-Remacri", which is not in the workspace' in said


def test_the_workspaces_styles_and_wildcards_reach_the_settings(tmp_path):
    from types import SimpleNamespace

    from personae.web.tab_generate import settings_data, style_names

    ws = Workspace(tmp_path / "work")
    (ws.root / "models" / "m").mkdir(parents=True)
    assert style_names(ws) == []
    (ws.root / "styles.csv").write_text("name,prompt,negative_prompt\nInk,\"{prompt}, ink\",\nFilm,grain,\n")
    (ws.root / "wildcards").mkdir()
    assert style_names(ws) == ["Film", "Ink"]
    data = settings_data(SimpleNamespace(workspace=ws), {"prompt": "a cat"}, "models/m", [], 1.0, [], None, "none",
                         None, 1.0, ["Ink"])
    assert data["styles"] == ["Ink"] and data["styles_file"] == str(ws.root / "styles.csv")
    assert data["wildcards_dir"] == str(ws.root / "wildcards")


def test_the_controlnet_accordion_reaches_the_unit(tmp_path):
    """The accordion's A1111 unit settings (as the Generate button passes them) become the run's ControlNet unit."""
    from types import SimpleNamespace

    from personae.config.base import parse_settings
    from personae.config.generate import GenerateSettings
    from personae.errors import UserError
    from personae.web.tab_generate import settings_data, unit_choices

    ws = Workspace(tmp_path / "work")
    (ws.root / "models" / "m").mkdir(parents=True)
    (ws.root / "models" / "canny-controlnet").mkdir(parents=True)
    photo = tmp_path / "pose.png"
    Image.new("RGB", (64, 48), "white").save(photo)
    unit = {"resize_mode": "Just Resize", "control_mode": "My prompt is more important", "pixel_perfect": True,
            "low_vram": True, "processor_res": 256, "hr_option": "High res only", "guidance_by": "noise",
            **unit_choices(ws, "models/canny-controlnet", "low=50, high=150")}
    data = settings_data(SimpleNamespace(workspace=ws), {"prompt": "a cat", "control_end": 0.5}, "models/m", [], 1.0,
                         [], None, "canny", str(photo), 0.7, [], unit)
    settings = parse_settings(GenerateSettings, data, "the Generate form")
    ref = settings.controls[0]
    assert (ref.type, ref.weight, ref.resize_mode, ref.control_mode, ref.pixel_perfect, ref.low_vram,
            ref.processor_res, ref.hr_option, ref.guidance_by, settings.control_end) == (
        "canny", 0.7, "Just Resize", "My prompt is more important", True, True, 256, "High res only", "noise", 0.5)
    assert ref.model == str(ws.root / "models" / "canny-controlnet") and ref.options == {"low": 50.0, "high": 150.0}
    tile = "lllyasviel/control_v11f1e_sd15_tile"
    assert unit_choices(ws, tile, "") == {"model": tile}
    with pytest.raises(UserError, match='"low 50" is not KEY=NUMBER'):
        unit_choices(ws, "", "low 50")
    assert Path(ref.image).is_relative_to(ws.root / "uploads") and Path(ref.image).read_bytes() == photo.read_bytes()
    # an inpaint unit's own mask ("Control mask") is copied in as its mask; another type has no mask
    data = settings_data(SimpleNamespace(workspace=ws), {"prompt": "a cat"}, "models/m", [], 1.0, [], None,
                         "inpaint_only", str(photo), 1.0, [], {}, control_mask=str(photo))
    ref = parse_settings(GenerateSettings, data, "the Generate form").controls[0]
    assert Path(ref.mask).is_relative_to(ws.root / "uploads") and Path(ref.mask).read_bytes() == photo.read_bytes()
    with pytest.raises(UserError, match='"Control mask" is the mask of an inpaint unit; a canny unit has none'):
        settings_data(SimpleNamespace(workspace=ws), {"prompt": "a cat"}, "models/m", [], 1.0, [], None, "canny",
                      str(photo), 1.0, [], {}, control_mask=str(photo))


def test_the_inpainting_mask_reaches_the_run_and_its_fields_wait_for_one(tmp_path):
    """The img2img accordion's mask is copied into the workspace byte for byte (its transparency is the mask) and
    carries the inpainting fields; without a mask those fields (always sent by the form, or filled from a dropped
    A1111 inpainting PNG) are left out, as A1111 ignores them outside inpainting."""
    from types import SimpleNamespace

    from personae.config.base import parse_settings
    from personae.config.generate import GenerateSettings
    from personae.web.tab_generate import settings_data

    ws = Workspace(tmp_path / "work")
    (ws.root / "models" / "m").mkdir(parents=True)
    photo, mask = tmp_path / "photo.png", tmp_path / "mask.png"
    Image.new("RGB", (64, 64), "white").save(photo)
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(mask)
    fields = {"prompt": "a cat", "mask_blur": 2, "mask_invert": True, "masked_content": "fill",
              "inpaint_area": "masked", "masked_padding": 8, "soft_inpainting": True, "soft_preservation": 2.0}
    ctx = SimpleNamespace(workspace=ws)
    data = settings_data(ctx, dict(fields), "models/m", [], 1.0, [], str(photo), "none", None, 1.0, [], None,
                         str(mask))
    settings = parse_settings(GenerateSettings, data, "the Generate form")
    assert Path(settings.mask).is_relative_to(ws.root / "uploads") and Path(settings.mask).read_bytes() == \
        mask.read_bytes()
    assert (settings.mask_blur, settings.mask_invert, settings.masked_content, settings.inpaint_area,
            settings.masked_padding, settings.soft_inpainting, settings.soft_preservation) == \
        (2, True, "fill", "masked", 8, True, 2.0)
    data = settings_data(ctx, dict(fields), "models/m", [], 1.0, [], str(photo), "none", None, 1.0)
    assert "mask" not in data and not set(fields) - {"prompt"} & set(data)



def test_a_painted_mask_becomes_the_init_image_and_its_mask(tmp_path):
    """"Paint the mask" (A1111's inpaint tab): the editor's picture is copied into the workspace byte for byte as
    the init image, and its painted layers (any alpha) become a mask beside it, white where painted; a picture with
    nothing painted, or given beside an init image or a mask file, is refused in one paragraph."""
    from types import SimpleNamespace

    import numpy as np

    from personae.config.base import parse_settings
    from personae.config.generate import GenerateSettings
    from personae.web.tab_generate import settings_data

    ws = Workspace(tmp_path / "work")
    (ws.root / "models" / "m").mkdir(parents=True)
    ctx = SimpleNamespace(workspace=ws)
    picture, layer, other, empty = (tmp_path / n for n in ("background.png", "layer.png", "layer2.png", "empty.png"))
    Image.new("RGB", (64, 48), (30, 140, 200)).save(picture)
    stroke = Image.new("RGBA", (64, 48), (0, 0, 0, 0))
    stroke.paste((255, 255, 255, 128), (4, 4, 20, 12))  # a soft brush's edge counts too
    stroke.save(layer)
    second = Image.new("RGBA", (32, 24), (0, 0, 0, 0))  # a layer at another size is scaled to the picture's
    second.paste((255, 255, 255, 255), (20, 12, 24, 16))
    second.save(other)
    Image.new("RGBA", (64, 48), (0, 0, 0, 0)).save(empty)
    fields = {"prompt": "a cat", "mask_blur": 0, "masked_content": "fill"}
    paint = {"background": str(picture), "layers": [str(layer), str(other)], "composite": str(picture)}
    data = settings_data(ctx, dict(fields), "models/m", [], 1.0, [], None, "none", None, 1.0, paint=paint)
    settings = parse_settings(GenerateSettings, data, "the Generate form")
    assert Path(settings.init_image).is_relative_to(ws.root / "uploads")
    assert Path(settings.init_image).read_bytes() == picture.read_bytes()
    mask = np.asarray(Image.open(settings.mask))
    expected = np.zeros((48, 64), dtype=np.uint8)
    expected[4:12, 4:20] = 255
    expected[24:32, 40:48] = 255
    assert Path(settings.mask).is_relative_to(ws.root / "uploads") and np.array_equal(mask, expected)
    assert (settings.mask_blur, settings.masked_content) == (0, "fill")
    before = sorted(p for p in ws.root.rglob("*"))
    with pytest.raises(UserError, match="nothing painted on it"):
        settings_data(ctx, dict(fields), "models/m", [], 1.0, [], None, "none", None, 1.0,
                      paint={"background": str(picture), "layers": [str(empty)]})
    with pytest.raises(UserError, match='"Paint the mask" holds a picture, and so does "Init image"'):
        settings_data(ctx, dict(fields), "models/m", [], 1.0, [], str(picture), "none", None, 1.0, paint=paint)
    with pytest.raises(UserError, match='and so does "Inpainting mask"'):
        settings_data(ctx, dict(fields), "models/m", [], 1.0, [], None, "none", None, 1.0, [], None, str(layer),
                      paint)
    assert sorted(p for p in ws.root.rglob("*")) == before  # a refusal leaves nothing in the workspace


def test_a_mask_painted_on_a_units_picture_becomes_its_picture_and_its_mask(tmp_path):
    """"Paint the control mask": the editor's picture becomes the inpaint unit's picture (byte for byte) and what was
    painted its own mask; beside a control image or mask, without a control type, or for a unit without a mask it is
    refused in one paragraph, and nothing is left in the workspace."""
    from types import SimpleNamespace

    import numpy as np

    from personae.config.base import parse_settings
    from personae.config.generate import GenerateSettings
    from personae.web.tab_generate import settings_data

    ws = Workspace(tmp_path / "work")
    (ws.root / "models" / "m").mkdir(parents=True)
    ctx = SimpleNamespace(workspace=ws)
    picture, layer = tmp_path / "unit.png", tmp_path / "layer.png"
    Image.new("RGB", (64, 48), (200, 80, 30)).save(picture)
    stroke = Image.new("RGBA", (64, 48), (0, 0, 0, 0))
    stroke.paste((255, 255, 255, 255), (0, 0, 24, 48))
    stroke.save(layer)
    paint = {"background": str(picture), "layers": [str(layer)], "composite": str(picture)}

    def data(control_type="inpaint_only", image=None, mask=None):
        return settings_data(ctx, {"prompt": "a cat"}, "models/m", [], 1.0, [], None, control_type, image, 1.0,
                             control_mask=mask, control_paint=paint)

    before = sorted(p for p in ws.root.rglob("*"))
    for kw, said in (({"image": str(picture)}, 'and so does "Control image"'),
                     ({"mask": str(layer)}, 'and so does "Control mask"'),
                     ({"control_type": "none"}, "no control type is chosen"),
                     ({"control_type": "canny"}, '"Paint the control mask" is the mask of an inpaint unit')):
        with pytest.raises(UserError, match=said):
            data(**kw)
    assert sorted(p for p in ws.root.rglob("*")) == before
    settings = parse_settings(GenerateSettings, data(), "the Generate form")
    [unit] = settings.controls
    assert unit.type == "inpaint_only" and Path(unit.image).read_bytes() == picture.read_bytes()
    assert Path(unit.image).is_relative_to(ws.root / "uploads") and Path(unit.mask).is_relative_to(ws.root / "uploads")
    expected = np.zeros((48, 64), dtype=np.uint8)
    expected[:, :24] = 255
    assert np.array_equal(np.asarray(Image.open(unit.mask)), expected)


def test_a_workspace_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("mine")
    with pytest.raises(UserError, match="is a file"):
        Workspace(tmp_path / "f")
    assert (tmp_path / "f").read_text() == "mine"


# -- forms from the settings declarations
def test_generate_form_comes_from_the_declarations():
    import gradio as gr

    from personae.config.generate import GenerateSettings
    from personae.config.sampling import BatchSettings, RuntimeSettings, SamplingSettings
    from personae.web.forms import SettingsForm

    with gr.Blocks():
        form = SettingsForm(GenerateSettings, groups=("sampling", "batch", "runtime"), choices={"sampler": ["Euler a"]})
    c = form.components
    steps = SamplingSettings.model_fields["steps"]
    assert isinstance(c["steps"], gr.Slider) and (c["steps"].minimum, c["steps"].maximum) == (1, 1000)
    assert c["steps"].value == steps.default and c["steps"].label == "Steps"
    assert c["cfg"].label == "CFG scale" and "steers" in c["cfg"].info
    assert isinstance(c["width"], gr.Number) and c["width"].value is None  # optional: the model's native size
    assert isinstance(c["device"], gr.Dropdown) and [x[0] for x in c["device"].choices] == ["auto", "cpu", "cuda", "mps"]
    # every field of the three groups, and only those: a switch added to RuntimeSettings (--attention, --medvram...)
    # reaches the page with no UI edit
    assert set(c) == {*SamplingSettings.model_fields, *BatchSettings.model_fields, *RuntimeSettings.model_fields}
    assert {"negative", "steps", "cfg", "sampler", "clip_skip", "width", "height", "batch_size", "batch_count",
            "device", "dtype", "attention", "vae_tiling"} <= set(c)
    raw = {name: comp.value for name, comp in c.items()}
    raw.update(steps=12.0, width=0, negative="  ", batch_size=2.0)
    values = form.values(*[raw[name] for name in c])
    assert values["steps"] == 12 and isinstance(values["steps"], int) and values["batch_size"] == 2
    assert "width" not in values and "negative" not in values  # empty inputs leave the defaults


def test_a_field_added_to_a_concept_appears_in_the_form():
    """The form is generated: a new declaration shows up with its bounds and help, with no UI edit."""
    import gradio as gr

    from personae.config.fields import setting
    from personae.config.sampling import SamplingSettings
    from personae.web.forms import SettingsForm

    class Extended(SamplingSettings):
        eta: float = setting(0.0, '"Eta": noise of ancestral samplers', ge=0.0, le=1.0)

    with gr.Blocks():
        form = SettingsForm(Extended)
    assert isinstance(form.components["eta"], gr.Slider) and form.components["eta"].label == "Eta"
    assert form.components["eta"].elem_id == "field-eta"


def test_a_64_bit_seed_is_typed_as_text_and_read_exactly():
    """The browser holds numbers as doubles: a number box would round a ComfyUI seed such as 2**64 - 3."""
    import gradio as gr

    from personae.config.generate import GenerateSettings
    from personae.web.forms import SettingsForm

    with gr.Blocks():
        form = SettingsForm(GenerateSettings, names=("seed", "steps"))
    assert isinstance(form.components["seed"], gr.Textbox) and form.components["seed"].value == "-1"
    assert form.values(f" {2**64 - 3} ", 4.0) == {"seed": 2**64 - 3, "steps": 4}
    assert form.values("-1", 4.0)["seed"] == -1 and form.values("twelve", 4.0)["seed"] == "twelve"  # the schema says


def test_list_settings_read_one_reference_per_line():
    import gradio as gr

    from personae.config.generate import GenerateSettings
    from personae.web.forms import SettingsForm

    with gr.Blocks():
        form = SettingsForm(GenerateSettings, names=("loras",))
    assert form.values("a.safetensors:0.5\n\n b.safetensors") == {
        "loras": [{"path": "a.safetensors", "weight": 0.5}, {"path": "b.safetensors", "weight": 1.0}]}


# -- the job queue
def _until(ready, timeout: float = 10) -> None:
    """Waits for a queue's worker thread to reach a state (not a guessed number of seconds: a loaded machine can
    keep a thread from starting for longer)."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, "the queue's worker did not get there in time"
        time.sleep(0.005)


def test_jobs_run_one_at_a_time_in_order_and_a_queued_one_can_be_cancelled():
    jobs = JobQueue()
    gate, order, running = threading.Event(), [], []

    def work(name):
        def run(on_event):
            running.append(name)
            assert len(running) - len(order) == 1  # nothing else is running
            if name == "a":
                gate.wait(10)
            order.append(name)
            return name
        return run

    a, b, c = (jobs.submit("generate", n, work(n)) for n in "abc")
    _until(lambda: running == ["a"])
    snap = {t.id: t.status for t in jobs.snapshot()}
    assert snap == {a.id: "running", b.id: "queued", c.id: "queued"}
    assert "cancelled" in jobs.stop(b.id)
    gate.set()
    assert jobs.wait(c.id, 10).result == "c"
    assert order == ["a", "c"] and jobs.get(b.id).status == "cancelled" and jobs.get(a.id).result == "a"


def test_events_become_progress_rate_eta_losses_and_images(tmp_path):
    jobs = JobQueue()

    def work(on_event):
        for step in range(1, 5):
            time.sleep(0.05)
            on_event(Progress("train", step, 8, {"loss": 1.0 / step}))
        on_event(ImageReady(tmp_path / "step-4.png", 4))
        on_event(Message("half way"))
        return ["out"]

    task = jobs.wait(jobs.submit("train", "t", work).id, 10)
    assert task.status == "done" and task.percent == 100 and task.result == ["out"]
    assert task.losses == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.25)]
    assert task.images == [tmp_path / "step-4.png"] and task.messages == ["half way"]
    assert 5 < task.rate < 40 and task.eta == 0.0  # about 20 steps a second; nothing left once done


def test_a_failing_job_reports_its_paragraph_and_the_worker_goes_on():
    jobs = JobQueue()

    def fail(on_event):
        raise UserError("The model x does not exist.", "Check the path.")

    def crash(on_event):
        raise RuntimeError("boom")

    failed = jobs.wait(jobs.submit("generate", "bad", fail).id, 10)
    crashed = jobs.wait(jobs.submit("generate", "bug", crash).id, 10)
    after = jobs.wait(jobs.submit("generate", "ok", lambda on_event: 1).id, 10)
    assert failed.status == "failed" and failed.error == "The model x does not exist. Check the path."
    assert crashed.status == "failed" and "RuntimeError: boom" in crashed.error
    assert after.status == "done" and after.result == 1


def test_the_queue_table_shows_places_in_line():
    from personae.web.panel import queue_table

    jobs = JobQueue()
    gate = threading.Event()
    first = jobs.submit("train", "long", lambda on_event: gate.wait(10))
    second = jobs.submit("generate", "fox", lambda on_event: None)
    third = jobs.submit("generate", "cat", lambda on_event: None)
    _until(lambda: jobs.get(first.id).status == "running")
    table = queue_table(jobs.snapshot())
    assert table.index(f"data-job='{first.id}'") < table.index(f"data-job='{second.id}'") \
        < table.index(f"data-job='{third.id}'")
    assert "#1 in line" in table and "#2 in line" in table and "running" in table
    gate.set()
    jobs.wait(third.id, 10)


# -- serving
def test_auth_and_the_warning_for_a_ui_reachable_from_the_network(tmp_path):
    from personae.web.app import exposure_warning, parse_auth

    ws = Workspace(tmp_path / "work")
    assert parse_auth(None) is None and parse_auth("me:se:cret") == ("me", "se:cret")
    for bad in ("me", ":x", "me:"):
        with pytest.raises(UserError, match="USER:PASSWORD"):
            parse_auth(bad)
    assert exposure_warning("127.0.0.1", 7860, None, ws) is None
    assert exposure_warning("0.0.0.0", 7860, ("me", "x"), ws) is None
    warning = exposure_warning("0.0.0.0", 7861, None, ws)
    assert "without --auth" in warning and "7861" in warning and str(ws.root) in warning


def test_with_auth_nothing_is_served_before_login(tmp_path):
    import socket
    import urllib.error
    import urllib.request

    from personae.web.app import serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "note.txt").write_text("private")
    app, url = serve(str(tmp_path / "work"), port=port, auth="me:secret", block=False)
    try:
        for path in ("config", f"gradio_api/file={tmp_path / 'work' / 'note.txt'}"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(url + path).read()
            assert refused.value.code in (401, 403)
        assert not app.share  # no share link unless asked
    finally:
        app.close()


def test_the_readme_shows_the_generate_and_train_tabs():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    for name in ("ui-generate.png", "ui-train.png"):
        assert f"](docs/images/{name})" in readme
        assert (root / "docs" / "images" / name).stat().st_size > 10_000  # a real screenshot, taken by test_web_ui


def test_shutdown_cancels_the_queue_and_stops_a_running_training_job_with_its_stop_command():
    """The UI's exit: queued jobs cancelled, the running training job sent "stop" (its handle's command, which
    saves a checkpoint) and waited for. The handle here is a stand-in for jobs.runner's, registered as the queue
    registers a real one."""
    jobs = JobQueue()
    stopped = threading.Event()

    class Handle:
        def stop(self):
            stopped.set()

    def training(on_event):
        with jobs._lock:
            jobs._handles[task.id] = Handle()
        assert stopped.wait(10)
        on_event(Progress("train", 3, 10))
        return "checkpoint at 3"

    task = jobs.submit("train", "long", training)
    later = jobs.submit("generate", "after", lambda on_event: 1)
    _until(lambda: task.id in jobs._handles)  # running, its stop command registered
    ended = jobs.shutdown(timeout=10)
    assert [t.id for t in ended] == [task.id] and ended[0].status == "done" and ended[0].result == "checkpoint at 3"
    assert jobs.get(later.id).status == "cancelled"


def test_a_pasted_kohya_config_becomes_a_run_under_runs(tmp_path):
    from types import SimpleNamespace

    from personae.web.tab_train import job_data

    ws = Workspace(tmp_path / "work")
    (ws.root / "models" / "m").mkdir(parents=True)
    (ws.root / "uploads" / "img" / "10_sks man").mkdir(parents=True)
    kohya = ('pretrained_model_name_or_path = "models/m"\ntrain_data_dir = "uploads/img"\noutput_dir = "/elsewhere"\n'
             'output_name = "sks_man"\ncaption_extension = ".txt"\nnetwork_dim = 16\nxformers = true\n')
    data = job_data(SimpleNamespace(workspace=ws), {}, "", "lora", "", "", "", "", kohya)
    assert data["output"] == str(ws.root / "runs" / "sks_man") and data["lora"]["rank"] == 16
    assert data["base_model"] == str(ws.root / "models" / "m") and data["data"]["path"] == str(ws.root / "uploads/img")
    with pytest.raises(UserError, match="sdxl = True"):
        job_data(SimpleNamespace(workspace=ws), {}, "", "lora", "", "", "", "", kohya + "sdxl = true\n")
    # kohya's network_weights: the LoRA to go on from, found in the workspace; one outside it is refused
    (ws.root / "models" / "old.safetensors").write_bytes(b"")
    data = job_data(SimpleNamespace(workspace=ws), {}, "", "lora", "", "", "", "",
                    kohya + 'network_weights = "models/old.safetensors"\n')
    assert data["lora"]["init_from"] == str(ws.root / "models" / "old.safetensors") and "rank" not in data["lora"]
    for where, why in [("/etc/old.safetensors", "absolute"), ("models/gone.safetensors", "does not exist")]:
        with pytest.raises(UserError, match=why):
            job_data(SimpleNamespace(workspace=ws), {}, "", "lora", "", "", "", "",
                     kohya + f'network_weights = "{where}"\n')


def test_a_pasted_kohya_dataset_config_reads_only_inside_the_workspace(tmp_path):
    from types import SimpleNamespace

    from PIL import Image

    from personae.web.tab_train import job_data

    ws = Workspace(tmp_path / "work")
    (ws.root / "models" / "m").mkdir(parents=True)
    for folder in ("uploads/me", "uploads/reg"):
        (ws.root / folder).mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(ws.root / "uploads/reg/r.png")
    (ws.root / "uploads/dataset.toml").write_text('[general]\ncaption_extension = ".txt"\n[[datasets]]\n'
                                                  '[[datasets.subsets]]\nimage_dir = "uploads/me"\nnum_repeats = 5\n'
                                                  '[[datasets.subsets]]\nimage_dir = "uploads/reg"\nis_reg = true\n')
    kohya = 'pretrained_model_name_or_path = "models/m"\noutput_name = "me"\ndataset_config = "{}"\n'
    data = job_data(SimpleNamespace(workspace=ws), {}, "", "lora", "", "", "", "", kohya.format("uploads/dataset.toml"))
    assert data["data"]["subsets"] == [{"path": str(ws.root / "uploads/me"), "repeats": 5}]
    assert data["dreambooth"]["class_data_dir"] == str(ws.root / "uploads/reg")
    outside = tmp_path / "dataset.toml"
    outside.write_text((ws.root / "uploads/dataset.toml").read_text())
    with pytest.raises(UserError, match="absolute"):
        job_data(SimpleNamespace(workspace=ws), {}, "", "lora", "", "", "", "", kohya.format(outside))


def test_a_pasted_job_is_read_as_a_job_file_and_kept_in_the_workspace(tmp_path):
    from types import SimpleNamespace

    from personae.web.tab_train import job_data

    ws = Workspace(tmp_path / "work")
    (ws.root / "models" / "m").mkdir(parents=True)
    (ws.root / "uploads" / "me").mkdir(parents=True)
    ctx = SimpleNamespace(workspace=ws)
    job = "base_model: models/m\nmethod: lora\ndata: {path: uploads/me}\noutput: runs/a\n"
    data = job_data(ctx, {}, "", "lora", "", "", "", "", job)
    assert data["base_model"] == str(ws.root / "models" / "m") and data["output"] == str(ws.root / "runs" / "a")
    assert data["data"]["path"] == str(ws.root / "uploads" / "me")
    for bad, why in [("method: [", "not valid YAML"), ("- a list", "not a YAML mapping"),
                     (job.replace("runs/a", "../a"), "goes up"), (job.replace("runs/a", "outputs/a"), "not under runs/"),
                     (job.replace("uploads/me", "/etc"), "absolute")]:
        with pytest.raises(UserError, match=why):
            job_data(ctx, {}, "", "lora", "", "", "", "", bad)


def test_the_ip_adapter_accordion_reaches_the_unit_and_a_pngs_unit_fills_it(tmp_path):
    """The accordion's picture is copied into the workspace and its fields become the run's IP-Adapter unit (files
    in the workspace or hub paths); no picture, no unit; a dropped A1111 PNG's IP-Adapter unit fills the fields."""
    from types import SimpleNamespace

    from personae.config.base import parse_settings
    from personae.config.generate import GenerateSettings
    from personae.media.png import save_png
    from personae.web.ip_adapter_panel import adapter_files, ip_unit, png_updates

    ws = Workspace(tmp_path / "work")
    (ws.root / "models" / "ipadapter").mkdir(parents=True)
    (ws.root / "models" / "ipadapter" / "ip-adapter-plus_sd15.safetensors").write_bytes(b"x")
    photo = tmp_path / "face.png"
    Image.new("RGB", (64, 48), "white").save(photo)
    ctx = SimpleNamespace(workspace=ws)
    assert adapter_files(ws) == ["models/ipadapter/ip-adapter-plus_sd15.safetensors"]
    assert ip_unit(ctx, None, 1.0, "", "", 0.0, 1.0) == []
    units = ip_unit(ctx, str(photo), 0.6, "models/ipadapter/ip-adapter-plus_sd15.safetensors",
                    "h94/IP-Adapter/models/image_encoder", 0.1, 0.8)
    data = {"model": "m", "prompt": "p", "ip_adapters": units}
    ref = parse_settings(GenerateSettings, data, "the form").ip_adapters[0]
    assert (ref.weight, ref.guidance_start, ref.guidance_end, ref.image_encoder) == (
        0.6, 0.1, 0.8, "h94/IP-Adapter/models/image_encoder")
    assert ref.model == str(ws.root / "models" / "ipadapter" / "ip-adapter-plus_sd15.safetensors")
    assert Path(ref.image).is_relative_to(ws.root / "uploads") and Path(ref.image).read_bytes() == photo.read_bytes()
    with pytest.raises(UserError, match="neither in the workspace nor a hub id"):
        ip_unit(ctx, str(photo), 1.0, "./nope.safetensors", "", 0.0, 1.0)
    save_png(Image.new("RGB", (64, 64)), tmp_path / "a1111.png", (
        'a cat\nSteps: 3, Seed: 2, Size: 64x64, ControlNet 0: "Module: ip-adapter_clip_sd15, Model: '
        'ip-adapter-plus_sd15 [0a36c98f], Weight: 0.6, Guidance Start: 0.1, Guidance End: 0.8"'))
    weight, model, encoder, start, end = png_updates(ws, tmp_path / "a1111.png", {})
    assert (weight, model, start, end) == (0.6, "h94/IP-Adapter/models/ip-adapter-plus_sd15.safetensors", 0.1, 0.8)
    assert not isinstance(encoder, str)  # the PNG names no encoder: the field is left as it is (a Gradio skip)
