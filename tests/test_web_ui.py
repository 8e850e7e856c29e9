"""`personae ui` in a real browser (issue #16): Debian's chromium driven by Playwright against the UI served on a free
loopback port over a workspace holding the tiny model. Screenshots of every tab land in test-artifacts/ui/."""

from __future__ import annotations

import socket
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "ui"
TABS = ["Generate", "Train", "Prepare", "Animate", "Storyboard", "Compare", "Extras", "Merge", "Runs", "World"]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def workspace(tiny_model, tmp_path_factory):
    import shutil

    ws = tmp_path_factory.mktemp("ui") / "work"
    shutil.copytree(tiny_model[0], ws / "models" / "tiny")
    faces = ws / "uploads" / "faces"
    faces.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(faces / f"face{i}.png")
    (ws.parent / "secret.txt").write_text("outside the workspace\n")
    return ws


@pytest.fixture(scope="module")
def server(workspace):
    from personae.web.app import serve

    app, url = serve(str(workspace), port=_free_port(), block=False)
    yield app, url
    app.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                              args=["--no-sandbox", "--disable-background-networking", "--disable-gpu"])
        yield b
        b.close()


def _open(browser, url):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(url)
    page.wait_for_selector("#generate-button", timeout=60_000)
    return page


def _dropped(browser, url, png, prompt: str):
    """A fresh page with `png` dropped on its PNG box, once the form holds the PNG's prompt (asserted)."""
    page = _open(browser, url)
    page.locator("#png-drop input[type=file]").set_input_files(str(png))
    deadline = time.time() + 30
    while page.locator("#field-prompt textarea").input_value() != prompt and time.time() < deadline:
        page.wait_for_timeout(250)
    assert page.locator("#field-prompt textarea").input_value() == prompt
    return page


def _tab(page, name):
    page.get_by_role("tab", name=name, exact=True).click()
    page.wait_for_timeout(300)


def _set(page, elem_id, value):
    """Type `value` into the field and leave it; typed again if the page does not show it (once, on a loaded
    machine, a training form's resolution reached the job as its default: session 46's full run)."""
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    for _ in range(3):
        box.fill(str(value))
        box.press("Tab")
        page.wait_for_timeout(100)
        if box.input_value() == str(value):
            return
    assert box.input_value() == str(value), f"#{elem_id} shows {box.input_value()!r}, not {value!r}"


def _wait_text(page, selector, text, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        content = page.inner_text(selector)
        if text in content:
            return content
        page.wait_for_timeout(250)
    raise AssertionError(f"{text!r} never appeared in {selector}: {page.inner_text(selector)!r}")


def _job_row(page, job_id):
    return page.locator(f"#personae-queue tr[data-job='{job_id}']")


def _status(page, job_id):
    row = _job_row(page, job_id)
    return row.get_attribute("data-status") if row.count() else None


def _wait_status(page, job_id, statuses, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if _status(page, job_id) in statuses:
            return _status(page, job_id)
        page.wait_for_timeout(250)
    raise AssertionError(f"job {job_id} never reached {statuses}: {_status(page, job_id)}")


def _step(page, job_id) -> int:
    """The step a job's row shows ("12/3000 train" -> 12; 0 before the first)."""
    row = _job_row(page, job_id)
    words = row.inner_text().split() if row.count() else []
    numbers = [int(w.split("/")[0]) for w in words if "/" in w and w.split("/")[0].isdigit()]
    return numbers[0] if numbers else 0


def _wait_step(page, job_id, above, timeout=600) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if _status(page, job_id) == "running" and _step(page, job_id) > above:
            return _step(page, job_id)
        page.wait_for_timeout(300)
    raise AssertionError(f"job {job_id} never passed step {above}: {_job_row(page, job_id).inner_text()}")


def _job_id(text):
    import re

    return int(re.search(r"job (\d+)", text).group(1))


def _start_training(page, run, steps, save_every):
    _tab(page, "Train")
    page.locator("#train-data input").fill("uploads/faces")
    page.locator("#train-data input").press("Enter")
    _set(page, "train-run", run)
    page.get_by_text("Training settings").click()
    _set(page, "train-steps", steps)
    _set(page, "train-resolution", 32)
    _set(page, "train-save-every", save_every)
    page.get_by_text("Data settings").click()
    _set(page, "train-data-caption", "a photo of sks person")
    page.click("#train-start")
    return _job_id(_wait_text(page, "#train-status", "Queued as job"))


def test_generate_shows_an_image_that_is_not_blank(server, browser, workspace):
    before = set((workspace / "outputs").rglob("*.png"))
    page = _open(browser, server[1])
    _set(page, "field-prompt", "a photo of a cat")
    _set(page, "field-seed", 7)
    _set(page, "field-steps", 4)
    page.click("#generate-button")
    _wait_text(page, "#generate-status", "done", timeout=120)
    src = page.locator("#generate-gallery img").first.get_attribute("src")
    with urllib.request.urlopen(src if src.startswith("http") else server[1].rstrip("/") + src) as r:
        import io

        pixels = np.asarray(Image.open(io.BytesIO(r.read())).convert("RGB"), dtype=np.float32)
    assert pixels.std() > 5 and pixels.shape[0] >= 32  # a picture, not a blank or single-colour square
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "generate.png"))
    page.close()
    # dropping that PNG on a fresh page fills the form from the settings it carries
    [made] = set((workspace / "outputs").rglob("*.png")) - before
    page = _dropped(browser, server[1], made, "a photo of a cat")
    assert page.locator("#field-seed input, #field-seed textarea").first.input_value() == "7"
    assert page.locator("#field-steps input[type=number]").input_value() == "4"
    page.close()


def test_a_comfyui_png_dropped_fills_the_form_with_its_64_bit_seed(server, browser, tmp_path):
    """A ComfyUI picture's graph fills the form as an A1111 one does; a seed above 2**53 arrives exactly (a number
    box would round it in the browser) and what ComfyUI draws differently is said."""
    from test_comfy_png import comfy_png, default_graph

    seed = 2**64 - 3
    graph = default_graph(seed=seed, steps=5, sampler_name="dpmpp_2m", scheduler="karras", cfg=6.5)
    graph["6"]["inputs"]["text"] = "a (red:1.2) fox"
    graph["5"]["inputs"]["batch_size"] = 2
    png = comfy_png(tmp_path / "ComfyUI_00001_.png", graph)
    page = _dropped(browser, server[1], png, "a (red:1.2) fox")
    assert page.locator("#field-seed input, #field-seed textarea").first.input_value() == str(seed)
    assert page.locator("#field-steps input[type=number]").input_value() == "5"
    assert page.locator("#field-sampler input").input_value() == "DPM++ 2M Karras"
    assert page.locator("#field-emphasis input").input_value() == "ComfyUI"  # its (red:1.2) weighted as ComfyUI's
    _wait_text(page, "body", "ComfyUI draws the whole batch's starting noise from one seed", timeout=30)
    page.close()


def test_an_a1111_animatediff_gif_dropped_on_the_animate_tab_fills_its_form(server, browser, tmp_path):
    """A clip's settings fill the Animate form as `personae animate --from-png` reads them: the travelling prompt's
    lines, the extension's frames, fps, loop number, context and FreeInit; what it does not do is said."""
    from personae.media.video import write_gif

    prompt = "a cat\n0: red\n9: blue"
    comment = (f"{prompt}\nNegative prompt: ugly\nSteps: 7, Sampler: Euler, CFG scale: 5, Seed: 42, Size: 48x32, "
               "Model: v1-5, AnimateDiff: \"model: mm_sd_v15_v2.ckpt, video_length: 24, fps: 12, loop_number: 2, "
               "closed_loop: R-P, batch_size: 16, stride: 1, overlap: -1, interp: FILM, interp_x: 10, "
               "freeinit_enable: True\", Version: v1.9.4")
    gif = write_gif([Image.new("RGB", (48, 32), (i * 40, 0, 0)) for i in range(3)], tmp_path / "00001-42.gif", 12,
                    comment)
    page = _open(browser, server[1])
    _tab(page, "Animate")
    page.locator("#animate-drop input[type=file]").set_input_files(str(gif))
    deadline = time.time() + 30
    while page.locator("#animate-prompt textarea").input_value() != prompt and time.time() < deadline:
        page.wait_for_timeout(250)
    assert page.locator("#animate-prompt textarea").input_value() == prompt
    for accordion in ("Sampling", "FreeInit"):  # closed, so their fields are drawn once opened
        page.locator(".label-wrap:visible", has_text=accordion).first.click()
    values = {name: page.locator(f"#animate-{name} input").first.input_value()
              for name in ("frames", "fps", "loop-number", "context", "steps", "seed", "width", "sampler")}
    assert values == {"frames": "24", "fps": "12", "loop-number": "2", "context": "16", "steps": "7", "seed": "42",
                      "width": "48", "sampler": "Euler"}, values
    assert page.locator("#animate-freeinit input").is_checked()
    _wait_text(page, "body", "frame interpolation FILM", timeout=30)
    page.close()


def test_an_a1111_png_with_a_controlnet_unit_fills_the_unit_and_says_its_picture_is_missing(server, browser,
                                                                                              tmp_path):
    """A1111's "ControlNet 0" unit dropped: the ControlNet accordion takes its type, weight, modes, resolution, pixel
    perfect, Low VRAM, Hires-Fix Option, model and thresholds; the picture the unit read is not in a PNG, which is
    said."""
    info = PngInfo()
    info.add_text("parameters", "a red fox\nNegative prompt: \nSteps: 5, Sampler: Euler a, CFG scale: 7, Seed: 3, "
                                'Size: 64x64, ControlNet 0: "Module: canny, Model: control_v11p_sd15_canny [d14c016b], '
                                "Weight: 0.65, Resize Mode: Resize and Fill, Low Vram: True, Processor Res: 768, "
                                "Threshold A: 100, Threshold B: 200, Guidance Start: 0, Guidance End: 1, Pixel "
                                'Perfect: True, Control Mode: ControlNet is more important, Hr Option: Low res only"')
    png = tmp_path / "a1111-controlnet.png"
    Image.new("RGB", (64, 64)).save(png, pnginfo=info)
    page = _dropped(browser, server[1], png, "a red fox")
    _wait_text(page, "body", "no picture: pass it with --control", timeout=30)
    page.get_by_text("ControlNet", exact=True).first.click()
    assert page.locator("#field-control-mode input[value='ControlNet is more important']").is_checked()
    assert page.locator("#field-control-resize input[value='Resize and Fill']").is_checked()
    assert page.locator("#field-pixel-perfect input[type=checkbox]").is_checked()
    assert page.locator("#field-control-low-vram input[type=checkbox]").is_checked()
    assert page.locator("#field-control-res input[type=number]").input_value() == "768"
    assert page.locator("#field-control-hr-option input[value='Low res only']").is_checked()
    # its model by lllyasviel's hub id, its Threshold A / B as canny's options
    assert page.locator("#field-controlnet input").first.input_value() == "lllyasviel/control_v11p_sd15_canny"
    assert page.locator("#field-control-options textarea, #field-control-options input").first.input_value() == \
        "low=100, high=200"
    page.close()


def test_a_controlnet_unit_with_its_model_and_options_runs_from_the_generate_tab(server, browser, workspace,
                                                                                 tmp_path):
    """personae's own PNG with a canny unit dropped: the accordion takes its ControlNet (a folder in the workspace)
    and its thresholds; with the control image dropped, Generate draws with that ControlNet at those thresholds."""
    from personae.config.generate import GenerateSettings
    from personae.jobs.generate import run_generate
    from personae.media.png import read_png_text
    from personae.models.controlnet import write_tiny_controlnet

    net = write_tiny_controlnet(workspace / "models" / "edges-cn", base=workspace / "models" / "tiny", seed=0)
    photo = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(3).random((48, 64, 3)) * 255).astype(np.uint8)).save(photo)
    unit = {"type": "canny", "image": str(photo), "model": str(net), "options": {"low": 50, "high": 150}}
    [png] = run_generate(GenerateSettings(model=str(workspace / "models" / "tiny"), prompt="a cat by its edges",
                                          steps=3, width=64, height=64, seed=2, controls=[unit]), tmp_path / "made")
    page = _dropped(browser, server[1], png, "a cat by its edges")
    page.get_by_text("ControlNet", exact=True).first.click()
    assert page.locator("#field-controlnet input").first.input_value() == "models/edges-cn"  # the workspace's path
    assert page.locator("#field-control-options textarea, #field-control-options input").first.input_value() == \
        "low=50, high=150"
    page.locator("#field-control-image input[type=file]").set_input_files(str(photo))
    page.wait_for_selector("#field-control-image img", timeout=30_000)
    made = _generated(page, workspace)
    text = read_png_text(made)["parameters"]
    assert "Module: canny, Model: edges-cn, Weight: 1" in text and "Threshold A: 50, Threshold B: 150" in text, text
    page.close()


def test_an_ip_adapter_unit_runs_from_the_generate_tab(server, browser, workspace, tmp_path):
    """personae's own PNG with an IP-Adapter unit dropped: the accordion takes its adapter and encoder (files in the
    workspace) and its weight and window; with the picture dropped, Generate draws with them."""
    from personae.config.generate import GenerateSettings
    from personae.jobs.generate import run_generate
    from personae.media.png import read_png_text
    from personae.models.ip_adapter import write_tiny_ip_adapter

    ipa = write_tiny_ip_adapter(workspace / "models" / "ipadapter", base=workspace / "models" / "tiny")
    photo = tmp_path / "face.png"
    Image.fromarray((np.random.default_rng(4).random((40, 48, 3)) * 255).astype(np.uint8)).save(photo)
    unit = {"image": str(photo), "weight": 0.7, "guidance_end": 0.8,
            "model": str(ipa / "ip-adapter-plus_sd15.safetensors"), "image_encoder": str(ipa / "image_encoder")}
    [png] = run_generate(GenerateSettings(model=str(workspace / "models" / "tiny"), prompt="a cat like the picture",
                                          steps=3, width=64, height=64, seed=2, ip_adapters=[unit]), tmp_path / "made")
    page = _dropped(browser, server[1], png, "a cat like the picture")
    page.get_by_text("IP-Adapter", exact=True).first.click()
    assert page.locator("#field-ip-adapter-model input").first.input_value() == \
        "models/ipadapter/ip-adapter-plus_sd15.safetensors"
    assert page.locator("#field-ip-adapter-encoder input").first.input_value() == "models/ipadapter/image_encoder"
    assert page.locator("#field-ip-adapter-weight input[type=number]").first.input_value() == "0.7"
    page.locator("#field-ip-adapter-image input[type=file]").set_input_files(str(photo))
    page.wait_for_selector("#field-ip-adapter-image img", timeout=30_000)
    text = read_png_text(_generated(page, workspace))["parameters"]
    assert "Module: ip-adapter_clip_sd15, Model: ip-adapter-plus_sd15 [" in text and "Weight: 0.7," in text, text
    assert "Guidance End: 0.8," in text, text
    page.close()


def _inpaint_only_dropped(browser, server, workspace, tmp_path, net_name: str, seed: int, prompt: str, box):
    """personae's PNG of an inpaint_only unit (a tiny ControlNet `net_name` in the workspace, a random photo, its
    mask white in `box`) dropped on the page, the ControlNet accordion open and holding the unit's ControlNet; the
    page, the photo and the mask."""
    from personae.config.generate import GenerateSettings
    from personae.jobs.generate import run_generate
    from personae.models.controlnet import write_tiny_controlnet

    net = write_tiny_controlnet(workspace / "models" / net_name, base=workspace / "models" / "tiny", seed=0)
    photo, mask = tmp_path / "photo.png", tmp_path / "mask.png"
    Image.fromarray((np.random.default_rng(seed).random((64, 64, 3)) * 255).astype(np.uint8)).save(photo)
    white = Image.new("L", (64, 64), 0)
    white.paste(255, box)
    white.save(mask)
    unit = {"type": "inpaint_only", "image": str(photo), "mask": str(mask), "model": str(net)}
    [png] = run_generate(GenerateSettings(model=str(workspace / "models" / "tiny"), prompt=prompt, steps=3, width=64,
                                          height=64, seed=2, controls=[unit]), tmp_path / "made")
    page = _dropped(browser, server[1], png, prompt)
    page.get_by_text("ControlNet", exact=True).first.click()
    assert page.locator("#field-controlnet input").first.input_value() == f"models/{net_name}"
    return page, photo, mask


def test_an_inpaint_only_unit_with_its_control_mask_keeps_its_picture_outside_the_mask(server, browser, workspace,
                                                                                       tmp_path):
    """personae's PNG of an inpaint_only unit dropped (the accordion takes its type and ControlNet), its picture on
    "Control image" and its mask on "Control mask": txt2img keeps the picture's unmasked part pixel for pixel."""
    from personae.media.png import read_png_text

    page, photo, mask = _inpaint_only_dropped(browser, server, workspace, tmp_path, "inpaint-cn", 4,
                                              "a cat beside the photo", (0, 0, 32, 64))
    page.locator("#field-control-image input[type=file]").set_input_files(str(photo))
    page.locator("#field-control-mask input[type=file]").set_input_files(str(mask))
    page.wait_for_selector("#field-control-image img", timeout=30_000)
    page.wait_for_selector("#field-control-mask img", timeout=30_000)
    made = _generated(page, workspace)
    assert 'Module: inpaint_only, Model: inpaint-cn' in read_png_text(made)["parameters"]
    got, kept = np.asarray(Image.open(made).convert("RGB")), np.asarray(Image.open(photo))
    assert np.array_equal(got[:, 38:], kept[:, 38:]) and (got[:, :26] != kept[:, :26]).mean() > 0.9
    page.close()


def _stroke(page, editor: str, x: float = 0.1) -> None:
    """A brush stroke with the mouse down the picture in the ImageMask `editor` (its picture sits centred in the
    canvas, square), at `x` of its width, until the page says it was painted."""
    canvas = page.locator(f"#{editor} canvas").first
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    side = min(box["width"], box["height"]) * 0.8
    left, top = box["x"] + (box["width"] - side) / 2, box["y"] + (box["height"] - side) / 2
    page.mouse.move(left + side * x, top + side * 0.1)
    page.mouse.down()
    for k in range(1, 17):
        page.mouse.move(left + side * x, top + side * (0.1 + 0.05 * k), steps=3)
    page.mouse.up()


def test_a_mask_painted_on_an_inpaint_units_picture_keeps_the_rest_of_it(server, browser, workspace, tmp_path):
    """A1111's ControlNet unit with a mask painted on its picture: personae's PNG of an inpaint_only unit dropped,
    the unit's picture dropped on "Paint the control mask", a stroke down its left part, Generate: the picture made
    keeps the unit's picture right of the stroke pixel for pixel and redraws what was painted."""
    from personae.media.png import read_png_text

    page, photo, _ = _inpaint_only_dropped(browser, server, workspace, tmp_path, "paint-cn", 5, "a cat painted in",
                                           (0, 0, 64, 64))
    page.locator("#field-control-paint canvas").first.wait_for(state="visible", timeout=30_000)
    page.wait_for_timeout(1000)
    page.locator("#field-control-paint input[type=file]").set_input_files(str(photo))
    _wait_text(page, "#control-paint-info", "Nothing painted yet on the picture (64x64)", timeout=30)
    _stroke(page, "field-control-paint")
    _wait_text(page, "#control-paint-info", "Painted:", timeout=30)
    made = _generated(page, workspace)
    assert "Module: inpaint_only, Model: paint-cn" in read_png_text(made)["parameters"]
    [painted_file] = (workspace / "uploads" / "control").rglob("painted-mask.png")
    painted = np.asarray(Image.open(painted_file)) > 0
    assert 0 < painted[:, :32].sum() and painted[:, 32:].sum() == 0, painted.sum()
    got, kept = np.asarray(Image.open(made).convert("RGB")), np.asarray(Image.open(photo))
    assert np.array_equal(got[:, 44:], kept[:, 44:]) and (got[painted] != kept[painted]).mean() > 0.9
    page.close()


def test_a_comfyui_png_with_a_controlnet_window_fills_it_by_noise_level(server, browser, tmp_path):
    """A ComfyUI graph's ControlNetApplyAdvanced dropped: the accordion takes its window, counted by noise level as
    ComfyUI counts it, and the picture ComfyUI read is asked for."""
    from test_comfy_png import comfy_png, controlnet_graph, default_graph

    graph = controlnet_graph(default_graph(steps=6), strength=0.75, end=0.4)
    graph["6"]["inputs"]["text"] = "a blue heron"
    graph["21"]["inputs"]["image"] = "edges.png"
    png = comfy_png(tmp_path / "comfy-controlnet.png", graph)
    page = _dropped(browser, server[1], png, "a blue heron")
    _wait_text(page, "body", 'ComfyUI read "edges.png"', timeout=30)
    page.get_by_text("ControlNet", exact=True).first.click()
    assert page.locator("#field-control-guidance-by input[value='noise']").is_checked()
    assert page.locator("#field-control-end input[type=number]").input_value() == "0.4"
    page.close()


def _generated(page, workspace) -> Path:
    """Generate; the one picture this job made."""
    before = set((workspace / "outputs").rglob("*.png"))
    page.wait_for_timeout(1500)  # the status's first tick (it shows the last job done) before this job is queued
    page.click("#generate-button")
    job = _job_id(_wait_text(page, "#generate-status", "Queued as job", timeout=30))
    _wait_text(page, "#generate-status", f"Job {job} done", timeout=120)  # not an earlier test's job
    [made] = set((workspace / "outputs").rglob("*.png")) - before
    return made


def _inpainted(page, workspace) -> Path:
    """Generate at strength 1 without mask blur; the one picture this job made."""
    _set(page, "field-strength", 1)
    _set(page, "field-mask-blur", 0)
    return _generated(page, workspace)

def test_inpainting_from_the_img2img_accordion_keeps_the_unmasked_half(server, browser, workspace, tmp_path):
    """An init image and a mask dropped in the img2img accordion: the picture made keeps the mask's black half pixel
    for pixel and redraws the white half."""
    init, mask = tmp_path / "init.png", tmp_path / "mask.png"
    Image.new("RGB", (64, 64), (30, 140, 200)).save(init)
    white = Image.new("L", (64, 64), 0)
    white.paste(255, (0, 0, 32, 64))
    white.save(mask)
    page = _open(browser, server[1])
    _set(page, "field-prompt", "a red fox, inpainted")
    _set(page, "field-steps", 3)
    page.get_by_text("img2img", exact=True).first.click()
    page.locator("#field-init-image input[type=file]").set_input_files(str(init))
    page.locator("#field-mask input[type=file]").set_input_files(str(mask))
    page.wait_for_selector("#field-init-image img", timeout=30_000)
    _wait_text(page, "#field-mask", ".png", timeout=30)  # the uploaded file listed (name and size)
    made = _inpainted(page, workspace)
    got, kept = np.asarray(Image.open(made).convert("RGB"), dtype=np.int16), np.asarray(Image.open(init), np.int16)
    assert np.abs(got[:, 40:] - kept[:, 40:]).max() <= 1 and np.abs(got[:, :24] - kept[:, :24]).mean() > 10
    page.close()


def test_a_mask_painted_on_the_picture_redraws_only_what_was_painted(server, browser, workspace, tmp_path):
    """A1111's inpaint tab: the picture dropped on "Paint the mask", a brush stroke drawn over its left part with the
    mouse, Generate: the picture made redraws the painted part and keeps the far right pixel for pixel."""
    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64), (30, 140, 200)).save(init)
    page = _open(browser, server[1])
    _set(page, "field-prompt", "a red fox, painted over")
    _set(page, "field-steps", 3)
    page.get_by_text("img2img", exact=True).first.click()
    page.locator("#field-paint canvas").first.wait_for(state="visible", timeout=30_000)  # the editor is mounted
    page.wait_for_timeout(1000)
    page.locator("#field-paint input[type=file]").set_input_files(str(init))
    _wait_text(page, "#paint-info", "Nothing painted yet on the picture (64x64)", timeout=30)
    _stroke(page, "field-paint")  # down its left fifth, well inside it
    # the editor's value reaches the server as it changes; the page says what a run will read
    _wait_text(page, "#paint-info", "Painted:", timeout=30)
    made = _inpainted(page, workspace)
    got, kept = np.asarray(Image.open(made).convert("RGB"), dtype=np.int16), np.asarray(Image.open(init), np.int16)
    [mask_file] = (workspace / "uploads" / "mask").rglob("painted-mask.png")
    painted = np.asarray(Image.open(mask_file)) > 0
    assert 0 < painted[:, :32].sum() and painted[:, 40:].sum() == 0, painted.sum()  # the stroke, where it was drawn
    assert np.abs(got[:, 48:] - kept[:, 48:]).max() <= 1 and np.abs(got[painted] - kept[painted]).mean() > 10
    page.close()

def test_training_progress_reaches_100_percent_with_a_validation_image(server, browser, workspace):
    page = _open(browser, server[1])
    job = _start_training(page, "short", steps=6, save_every=3)
    assert _wait_status(page, job, ("done", "failed")) == "done", page.inner_text("#personae-queue")
    _wait_text(page, "#train-progress", "100%")
    page.wait_for_selector("#train-samples img", timeout=30_000)
    assert (workspace / "runs" / "short" / "validation").is_dir()
    page.screenshot(path=str(ARTIFACTS / "train.png"))
    page.close()


def test_queue_order_stop_and_resume_while_generating(server, browser, workspace):
    """A long training job, two generate requests behind it: the queue shows their places, the page keeps
    answering; Stop leaves a checkpoint and the two generations run; Resume continues from the stopped step."""
    page = _open(browser, server[1])
    train = _start_training(page, "long", steps=3000, save_every=1000)
    _wait_status(page, train, ("running",))
    _tab(page, "Generate")
    _set(page, "field-prompt", "a red fox")
    _set(page, "field-steps", 2)
    page.click("#generate-button")
    first = _job_id(_wait_text(page, "#generate-status", "Queued as job"))
    page.click("#generate-button")
    deadline = time.time() + 30
    while _job_id(page.inner_text("#generate-status")) == first and time.time() < deadline:
        page.wait_for_timeout(200)
    second = _job_id(page.inner_text("#generate-status"))
    assert second == first + 1
    row1, row2 = _job_row(page, first), _job_row(page, second)
    row1.wait_for(timeout=10_000)
    row2.wait_for(timeout=10_000)
    assert "#1 in line" in row1.inner_text() and "#2 in line" in row2.inner_text()
    t = time.time()
    _tab(page, "Runs")  # the page answers while the worker trains
    _tab(page, "Generate")
    assert time.time() - t < 10
    _wait_text(page, f"#personae-queue tr[data-job='{train}']", "train", timeout=10)
    _tab(page, "Train")
    _wait_step(page, train, 20)  # let it do some steps
    page.click("#train-stop")
    assert _wait_status(page, train, ("stopped",), timeout=120) == "stopped"
    from personae.runs import list_checkpoints

    checkpoints = list_checkpoints(workspace / "runs" / "long")
    assert checkpoints, "Stop left no checkpoint"
    stopped_at = checkpoints[-1][0]
    assert _wait_status(page, first, ("done",), timeout=120) == "done"
    assert _wait_status(page, second, ("done",), timeout=120) == "done"
    _set(page, "train-run", "long")
    page.click("#train-resume")
    resumed = _job_id(_wait_text(page, "#train-status", "resume"))
    _wait_step(page, resumed, stopped_at)  # continued from the checkpoint (its first progress is past it)
    # closing the tab and opening the page again shows the running job with live progress
    page.close()
    page = _open(browser, server[1])
    _tab(page, "Train")
    first_seen = _wait_text(page, "#train-progress", "running", timeout=20)
    page.wait_for_timeout(2500)
    assert page.inner_text("#train-progress") != first_seen  # live: the step moved on
    page.click("#train-stop")
    assert _wait_status(page, resumed, ("stopped",), timeout=120) == "stopped"
    page.close()


def test_paths_out_of_the_workspace_are_refused(server, browser, workspace):
    page = _open(browser, server[1])
    _tab(page, "Train")
    page.locator("#train-data input").fill("../")
    page.locator("#train-data input").press("Enter")
    _set(page, "train-run", "escape")
    page.click("#train-start")
    assert "out of the workspace" in _wait_text(page, "#train-status", "Not started")
    # an upload whose name climbs out: nothing lands outside the workspace, and the file is refused or renamed
    _tab(page, "Generate")
    page.get_by_text("img2img", exact=True).click()
    png = (workspace / "uploads" / "faces" / "face0.png").read_bytes()
    page.locator("#field-init-image input[type=file]").set_input_files(
        files=[{"name": "../../escaped.png", "mimeType": "image/png", "buffer": png}])
    page.wait_for_timeout(1500)
    _set(page, "field-prompt", "x")
    _set(page, "field-steps", 2)
    page.click("#generate-button")
    _wait_text(page, "#generate-status", "job", timeout=30)
    # Gradio keeps only the last part of an uploaded file's name; the UI copies it into a new uploads/ folder
    found = sorted(workspace.parent.parent.rglob("escaped.png"))
    assert found and all(workspace in p.parents for p in found)
    assert any(p.parent.parent == workspace / "uploads" / "init" for p in found)
    # the server serves nothing outside the workspace
    secret = workspace.parent / "secret.txt"
    for url in (f"{server[1]}gradio_api/file={secret}", f"{server[1]}file={secret}"):
        try:
            with urllib.request.urlopen(url) as r:
                assert b"outside the workspace" not in r.read()
        except urllib.error.HTTPError as exc:
            assert exc.code in (403, 404)
    page.close()


def _have_run(browser, url, workspace, run):
    """The run `run` in the workspace: the one an earlier test trained, else a 6-step one trained here (on a page of
    its own: the form's sections open and close by clicks), so this module's tests also pass alone or in any order."""
    if not (workspace / "runs" / run).is_dir():
        page = _open(browser, url)
        job = _start_training(page, run, steps=6, save_every=3)
        assert _wait_status(page, job, ("done", "failed")) == "done", page.inner_text("#personae-queue")
        page.close()


def test_every_tab_renders_and_a_restarted_ui_lists_past_runs(server, browser, workspace):
    """Screenshots of each tab at 1280x800; a second UI on the same workspace lists the runs made above."""
    for run in ("short", "long"):
        _have_run(browser, server[1], workspace, run)
    page = _open(browser, server[1])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for name in TABS:
        _tab(page, name)
        page.screenshot(path=str(ARTIFACTS / f"tab-{name.lower()}.png"))
    # a run's LoRA goes to the Generate tab's picker
    page = _open(browser, server[1])
    _tab(page, "Runs")
    _wait_text(page, "#runs-table", "runs/short", timeout=30)
    page.locator("#runs-choice input").fill("runs/short")
    page.locator("#runs-choice input").press("Enter")
    _wait_text(page, "#runs-note", "export file", timeout=60)
    page.click("#runs-use-lora")
    page.wait_for_selector("#generate-button", state="visible", timeout=15_000)
    assert "runs/short/lora.safetensors" in page.inner_text("#field-loras")
    page.close()
    from PIL import Image

    from personae.web.app import serve

    board = workspace / "outputs/storyboard/0001"  # an earlier storyboard, as the Storyboard tab writes one
    board.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (320, 200), (30, 140, 60)).save(board / "sheet.png")
    app, url = serve(str(workspace), port=_free_port(), block=False)
    try:
        page = _open(browser, url)
        _tab(page, "Runs")
        table = page.inner_text("#runs-table")
        assert "runs/short" in table and "runs/long" in table
        _tab(page, "Storyboard")  # earlier results are listed from disk and shown when picked
        page.locator("#storyboard-earlier input").fill("outputs/storyboard/0001")
        page.locator("#storyboard-earlier input").press("Enter")
        _wait_text(page, "#storyboard-status", "outputs/storyboard/0001", timeout=60)
        page.wait_for_selector("#storyboard-sheet img", timeout=30_000)
        page.close()
    finally:
        app.close()
