"""ADetailer's face fix (`--ad-model`): MediaPipe detection, mask shaping, the inpainting pass, PNG keys, refusals."""

import numpy as np
import pytest
from PIL import Image

from personae.config.generate import GenerateSettings
from personae.errors import UserError
from personae.events import Message, Progress
from personae.inference.detailer import (
    MODELS,
    Face,
    box_mask,
    detect_faces,
    dilate_erode,
    face_masks,
    face_prompts,
    largest,
)
from personae.inference.img2img import feather


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory):
    from skimage import data

    path = tmp_path_factory.mktemp("astronaut") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.parametrize("model", list(MODELS))
def test_each_mediapipe_model_finds_the_astronauts_face_where_opencv_does(astronaut, model):
    from personae.data.framing import detect_faces as opencv_faces

    photo = Image.open(astronaut).convert("RGB")
    [reference] = opencv_faces(photo)  # an independent detector: OpenCV's Haar cascade
    [face] = detect_faces(photo, model, 0.3)
    print(f"{model}: {tuple(round(v) for v in face.box)} vs OpenCV {reference}, IoU {_iou(face.box, reference):.2f}")
    assert _iou(face.box, reference) > 0.6
    mask = np.asarray(face.mask) > 0
    centre = (reference[1] + reference[3]) // 2, (reference[0] + reference[2]) // 2
    assert mask.shape == (512, 512) and mask[centre]
    assert mask.sum() < 0.1 * mask.size  # the face, not the picture
    if model == "mediapipe_face_mesh":  # the hull of the landmarks: rounder than its box
        box = face.mask.getbbox()
        assert mask.sum() < 0.9 * (box[2] - box[0]) * (box[3] - box[1])
    else:  # the box filled
        assert mask.sum() == np.asarray(box_mask(face.box, photo.size)).astype(bool).sum()


def test_no_face_is_found_in_a_flat_picture():
    assert all(detect_faces(Image.new("RGB", (256, 256), (120, 130, 140)), model) == [] for model in MODELS)


def test_dilate_erode_uses_a_square_kernel_and_empty_masks_are_dropped():
    mask = box_mask((20, 20, 29, 29), (64, 64))  # 10 x 10 (the corners are inclusive, as PIL draws)
    assert np.count_nonzero(np.asarray(mask)) == 100
    grown, shrunk = dilate_erode(mask, 4), dilate_erode(mask, -4)
    assert np.count_nonzero(np.asarray(grown)) == 13 * 13  # a 4 x 4 square: 3 more pixels a side
    assert np.count_nonzero(np.asarray(shrunk)) == 7 * 7
    assert grown.getbbox()[2] - grown.getbbox()[0] == 13 and shrunk.getbbox()[2] - shrunk.getbbox()[0] == 7
    assert np.array_equal(np.asarray(dilate_erode(mask, 0)), np.asarray(mask))
    tiny = Face((40, 40, 42, 42), box_mask((40, 40, 42, 42), (64, 64)))
    big = Face((20, 20, 29, 29), mask)
    assert len(face_masks([tiny, big], 0, -4)) == 1  # the 3 x 3 face eroded away: nothing left to redraw


def test_mask_only_top_k_largest_keeps_the_largest_first():
    faces = [Face(box, box_mask(box, (100, 100))) for box in [(0, 0, 10, 10), (50, 50, 90, 90), (20, 0, 40, 20)]]
    assert [f.box for f in largest(faces, 2)] == [(50, 50, 90, 90), (20, 0, 40, 20)]
    assert largest(faces, 0) == faces  # 0: every face, in the detector's order
    assert [m.getbbox() for m in face_masks(faces, 1, 0)] == [(50, 50, 91, 91)]


def test_ratio_offset_and_merge_shape_the_masks_as_adetailer_does():
    """ADetailer's pred_preprocessing: faces outside the min / max share of the picture's area left out, then the
    k largest, each mask moved (right x, up y; what leaves one edge comes back at the other), then dilated or eroded;
    "Merge" joins the masks, "Merge and Invert" gives everything but the faces."""
    boxes = [(0, 0, 9, 9), (50, 50, 89, 89), (20, 0, 39, 19)]  # 100, 1600 and 400 pixels of 10,000
    faces = [Face(box, box_mask(box, (100, 100))) for box in boxes]
    kept = [m.getbbox() for m in face_masks(faces, 0, 0, ratio=(0.02, 0.1))]
    assert kept == [(20, 0, 40, 20)]  # 1 % and 16 % left out (ADetailer's areas: x2 - x1 times y2 - y1)
    assert len(face_masks(faces, 0, 0, ratio=(0.0, 0.0361))) == 2 and len(face_masks(faces, 2, 0, ratio=(0.02, 1))) == 2
    moved = np.asarray(face_masks(faces[1:2], 0, 0, offset=(5, 3))[0])
    assert Image.fromarray(moved).getbbox() == (55, 47, 95, 87)  # 5 right, 3 up
    wrapped = np.asarray(face_masks(faces[:1], 0, 0, offset=(-4, 0))[0])
    assert wrapped[:10, 96:].all() and wrapped[:10, :6].all() and not wrapped[:10, 6:96].any()  # around the edge
    merged = face_masks(faces, 0, 2, merge="Merge")
    assert len(merged) == 1
    assert np.array_equal(np.asarray(merged[0]) > 0, np.any([np.asarray(m) > 0 for m in face_masks(faces, 0, 2)], 0))
    inverted = face_masks(faces, 0, 0, merge="Merge and Invert")
    plain = np.asarray(face_masks(faces, 0, 0, merge="Merge")[0])
    assert len(inverted) == 1 and np.array_equal(np.asarray(inverted[0]), 255 - plain)


def test_face_prompts_follow_adetailers_sep_and_prompt_words():
    assert face_prompts("", "a man") == ["a man"]
    assert face_prompts("[PROMPT], smiling", "a man") == ["a man, smiling"]
    assert face_prompts("blue eyes [SEP]  [SEP] old", "a man") == ["blue eyes", "a man", "old"]


def _settings(model, init, mask, **kw):
    return GenerateSettings(**{"model": str(model), "prompt": "a photo of an astronaut", "steps": 4, "seed": 5,
                               "init_image": str(init), "mask": str(mask), "strength": 0.0, "width": 256,
                               "height": 256, **kw})


@pytest.fixture(scope="module")
def black(tmp_path_factory):
    path = tmp_path_factory.mktemp("mask") / "black.png"
    Image.new("L", (256, 256), 0).save(path)
    return path


@pytest.fixture(scope="module")
def chin_line(tmp_path_factory):
    """An inpainting mask of one 2-pixel line across the astronaut's chin: the picture stays the photo almost
    everywhere (so there is a face to find), and the line touches the face (ADetailer redraws only such faces)."""
    path = tmp_path_factory.mktemp("mask") / "line.png"
    mask = Image.new("L", (256, 256), 0)
    mask.paste(255, (0, 80, 256, 82))
    mask.save(path)
    return path


def test_face_fix_redraws_inside_the_dilated_blurred_mask_and_no_pixel_outside(astronaut, chin_line, tiny_model,
                                                                                tiny_session):
    """img2img at strength 0 through a thin mask gives the photo (resized) with one line redrawn, so the face fix
    sees a face; then only the face's mask (dilated by 4, blurred by 4) may change: every pixel outside it is the
    pixel the same generation gives without the face fix."""
    from personae.inference.txt2img import txt2img

    events = []
    s = _settings(tiny_model[0], astronaut, chin_line, mask_blur=0)
    plain = txt2img(s, tiny_session)[0].image
    fixed = _settings(tiny_model[0], astronaut, chin_line, mask_blur=0, ad_model="mediapipe_face_full",
                      ad_denoising_strength=0.5)
    out = txt2img(fixed, tiny_session, on_event=events.append)[0]
    before, after = np.asarray(plain, dtype=np.int16), np.asarray(out.image, dtype=np.int16)
    masks = face_masks(detect_faces(plain, "mediapipe_face_full", 0.3), 0, 4)
    assert len(masks) == 1
    region = np.asarray(feather(masks[0], 4)) > 0
    changed = np.abs(after - before).max(axis=2) > 0
    print(f"mask {region.sum()} px ({region.mean():.1%} of the picture), changed {changed.sum()} px, mean change "
          f"inside {np.abs(after - before)[region].mean():.1f}")
    assert not changed[~region].any()  # outside the dilated, feathered mask: every pixel to the bit
    assert changed[region].mean() > 0.5 and np.abs(after - before)[region].mean() > 5  # the face redrawn
    assert any(isinstance(e, Message) and "1 face on image 1" in e.text for e in events)
    steps = [e for e in events if isinstance(e, Progress) and e.stage == "face fix"]
    assert steps and steps[-1].done == steps[-1].total == 3  # A1111's img2img: int(4 steps x 0.5) + 1
    # ADetailer's "inpaint only masked" off (the whole picture drawn at the size): still nothing outside changes
    whole = txt2img(fixed.model_copy(update={"ad_inpaint_only_masked": False}), tiny_session)[0]
    assert np.array_equal(np.asarray(whole.image, dtype=np.int16)[~region], before[~region])
    assert not np.array_equal(np.asarray(whole.image), np.asarray(out.image))


def test_faces_are_redrawn_one_after_another_from_seed_plus_j(astronaut, tiny_model, tiny_session):
    """ADetailer's order and seeds: face j is inpainted on the picture face j-1 left, from the image's seed + j;
    "mask only top k largest" 1 redraws the larger face alone."""
    from personae.inference.detailer import detail_faces, redraw_face
    from personae.inference.samplers import get_sampler

    photo = Image.open(astronaut).convert("RGB").resize((128, 128), Image.Resampling.LANCZOS)
    pair = Image.new("RGB", (256, 128))
    pair.paste(photo, (0, 0))
    pair.paste(photo.resize((96, 96)), (144, 16))  # a second, smaller astronaut
    s = GenerateSettings(model=str(tiny_model[0]), prompt="two astronauts", steps=4, seed=11, width=64, height=64,
                         ad_model="mediapipe_face_full", ad_denoising_strength=0.5)
    sampler = get_sampler(s.sampler)
    masks = face_masks(detect_faces(pair, s.ad_model, s.ad_confidence), 0, s.ad_dilate_erode)
    assert len(masks) == 2
    out = detail_faces(tiny_session, s, pair, 11, sampler, (64, 64))
    by_hand = pair
    for j, mask in enumerate(masks):
        by_hand = redraw_face(tiny_session, s, by_hand, mask, s.prompt, s.negative, 11 + j, sampler, (64, 64))
    assert np.array_equal(np.asarray(out), np.asarray(by_hand))
    same_seed = redraw_face(tiny_session, s, redraw_face(tiny_session, s, pair, masks[0], s.prompt, s.negative, 11,
                                                          sampler, (64, 64)), masks[1], s.prompt, s.negative, 11,
                            sampler, (64, 64))
    assert not np.array_equal(np.asarray(out), np.asarray(same_seed))
    # [SKIP] as a face's prompt leaves that face; the next one still draws from seed + its index
    skipped = detail_faces(tiny_session, s.model_copy(update={"ad_prompt": "[SKIP] [SEP] [PROMPT]"}), pair, 11, sampler,
                           (64, 64))
    second = redraw_face(tiny_session, s, pair, masks[1], s.prompt, s.negative, 12, sampler, (64, 64))
    assert np.array_equal(np.asarray(skipped), np.asarray(second))
    one = detail_faces(tiny_session, s.model_copy(update={"ad_mask_k_largest": 1}), pair, 11, sampler, (64, 64))
    larger = masks[0] if masks[0].getbbox()[2] - masks[0].getbbox()[0] > masks[1].getbbox()[2] - \
        masks[1].getbbox()[0] else masks[1]
    outside = np.asarray(feather(larger, s.ad_mask_blur)) == 0
    assert np.array_equal(np.asarray(one)[outside], np.asarray(pair)[outside])  # the smaller face untouched


def test_face_fix_works_on_the_hires_fix_picture(tiny_model, tiny_session):
    """After the hires fix the faces are found in the upscaled picture and drawn at the base size: MediaPipe's
    full-range model sees a face in this seed's tiny-model noise, which is enough to show the order."""
    from personae.inference.txt2img import txt2img

    hires = GenerateSettings(model=str(tiny_model[0]), prompt="a face", steps=4, seed=7, width=64, height=64,
                             hires_scale=1.5, hires_denoise=0.5)
    plain = txt2img(hires, tiny_session)[0].image
    masks = face_masks(detect_faces(plain, "mediapipe_face_full", 0.3), 0, 4)
    assert plain.size == (96, 96) and len(masks) == 1
    fixed = txt2img(hires.model_copy(update={"ad_model": "mediapipe_face_full"}), tiny_session)[0].image
    outside = np.asarray(feather(masks[0], 4)) == 0
    assert fixed.size == (96, 96) and np.array_equal(np.asarray(fixed)[outside], np.asarray(plain)[outside])
    assert not np.array_equal(np.asarray(fixed), np.asarray(plain))


def test_the_faces_own_steps_cfg_sampler_and_size_are_used(astronaut, tiny_model, tiny_session):
    """ADetailer's "use separate" steps, CFG scale, sampler, width/height, noise multiplier and CLIP skip replace the
    generation's for the faces."""
    from personae.inference.detailer import check_detailer, detail_faces
    from personae.inference.samplers import get_sampler

    photo = Image.open(astronaut).convert("RGB").resize((128, 128), Image.Resampling.LANCZOS)
    s = GenerateSettings(model=str(tiny_model[0]), prompt="an astronaut", steps=4, seed=1,
                         ad_model="mediapipe_face_full", ad_denoising_strength=0.5)
    sampler = get_sampler(s.sampler)

    def run(**own):
        events = []
        one = check_detailer(s.model_copy(update=own))
        image = detail_faces(tiny_session, one, photo, 1, sampler, (64, 64), events.append)
        totals = {e.total for e in events if isinstance(e, Progress)}
        return np.asarray(image), totals

    base, totals = run()
    assert totals == {3}  # A1111's img2img: int(4 steps x 0.5) + 1
    steps, totals = run(ad_steps=6)
    assert totals == {4} and not np.array_equal(steps, base)  # int(6 x 0.5) + 1
    for own in ({"ad_cfg_scale": 2.0}, {"ad_sampler": "euler_ancestral"}, {"ad_inpaint_width": 32,
                                                                            "ad_inpaint_height": 32},
                {"ad_noise_multiplier": 0.6}, {"ad_clip_skip": 2}):
        assert not np.array_equal(run(**own)[0], base), own
    assert not np.array_equal(run(extra_noise=0.3)[0], base)  # A1111's "Extra noise" reaches the faces' start too
    # Dynamic Thresholding reaches the faces at their own CFG (ADetailer keeps the extension's script)
    from personae.inference.dynamic_thresholding import DynamicThresholding

    scales, combine = [], DynamicThresholding.combine

    def counted(self, uncond, guided, cfg, frac):
        scales.append(cfg)
        return combine(self, uncond, guided, cfg, frac)

    DynamicThresholding.combine = counted
    try:
        thresholded, _ = run(dynamic_thresholding=True, mimic_scale=3.0, ad_cfg_scale=9.0)
    finally:
        DynamicThresholding.combine = combine
    assert scales == [9.0] * 3 and not np.array_equal(thresholded, run(ad_cfg_scale=9.0)[0])
    assert check_detailer(s.model_copy(update={"ad_sampler": "euler_ancestral"})).ad_sampler == "Euler a"
    with pytest.raises(ValueError, match="ad_inpaint_width and ad_inpaint_height go together"):
        GenerateSettings(model="m", prompt="p", ad_model="mediapipe_face_full", ad_inpaint_width=512)


def test_no_face_leaves_the_picture_unchanged_and_says_so(tmp_path, astronaut, black, chin_line, tiny_model,
                                                          tiny_session):
    from personae.inference.txt2img import txt2img

    flat = tmp_path / "flat.png"
    Image.new("RGB", (256, 256), (90, 140, 200)).save(flat)
    events = []
    s = _settings(tiny_model[0], flat, chin_line)
    fixed = txt2img(s.model_copy(update={"ad_model": "mediapipe_face_mesh"}), tiny_session, on_event=events.append)[0]
    plain = txt2img(s, tiny_session)[0]
    assert np.array_equal(np.asarray(fixed.image), np.asarray(plain.image))
    assert any(isinstance(e, Message) and "nothing detected on image 1" in e.text for e in events)
    assert not any(isinstance(e, Progress) and e.stage == "face fix" for e in events)
    # a face the inpainting mask does not touch is left alone, as ADetailer does after img2img inpainting
    events.clear()
    s = _settings(tiny_model[0], astronaut, black)
    fixed = txt2img(s.model_copy(update={"ad_model": "mediapipe_face_full"}), tiny_session, on_event=events.append)[0]
    assert np.array_equal(np.asarray(fixed.image), np.asarray(txt2img(s, tiny_session)[0].image))
    assert any(isinstance(e, Message) and "no face on image 1 touches the inpainting mask" in e.text for e in events)


def test_png_carries_adetailers_keys_and_from_png_reads_them_back(astronaut, black, tiny_model, tiny_session,
                                                                   tmp_path):
    from personae.inference.detailer import ADETAILER_VERSION
    from personae.inference.txt2img import txt2img
    from personae.jobs.generate import png_not_applied, settings_from_png
    from personae.media.png import parse_parameters, save_png

    s = _settings(tiny_model[0], astronaut, black, ad_model="mediapipe_face_short")
    out = txt2img(s.model_copy(update={"ad_denoising_strength": 0.0}), tiny_session)[0]
    params = parse_parameters(out.parameters)[2]
    adetailer = {k: v for k, v in params.items() if k.startswith("ADetailer")}
    assert adetailer == {"ADetailer model": "mediapipe_face_short", "ADetailer confidence": "0.3",
                         "ADetailer dilate erode": "4", "ADetailer mask blur": "4",
                         "ADetailer denoising strength": "0", "ADetailer inpaint only masked": "True",
                         "ADetailer inpaint padding": "32", "ADetailer version": ADETAILER_VERSION}
    # the keys ADetailer writes only when set: the prompts, top k; the padding only when inpainting only masked
    custom = {"ad_prompt": "[PROMPT], freckles, smiling", "ad_negative_prompt": "blurry", "ad_mask_k_largest": 1,
              "ad_dilate_erode": -8, "ad_mask_blur": 6, "ad_confidence": 0.45, "ad_inpaint_only_masked": False,
              "ad_denoising_strength": 0.0}
    custom.update(ad_steps=6, ad_cfg_scale=5.5, ad_sampler="Euler a", ad_inpaint_width=128, ad_inpaint_height=64,
                  ad_noise_multiplier=0.9, ad_clip_skip=2, ad_mask_min_ratio=0.01, ad_mask_max_ratio=0.9,
                  ad_x_offset=3, ad_y_offset=-2, ad_mask_merge_invert="Merge")
    out = txt2img(s.model_copy(update=custom), tiny_session)[0]
    params = parse_parameters(out.parameters)[2]
    assert {k: params[k] for k in params if k.startswith("ADetailer use")} == {
        "ADetailer use inpaint width height": "True", "ADetailer use separate steps": "True",
        "ADetailer use separate CFG scale": "True", "ADetailer use separate sampler": "True",
        "ADetailer use separate noise multiplier": "True", "ADetailer use separate CLIP skip": "True"}
    assert {k: params[k] for k in ("ADetailer noise multiplier", "ADetailer CLIP skip", "ADetailer mask min ratio",
                                   "ADetailer mask max ratio", "ADetailer x offset", "ADetailer y offset",
                                   "ADetailer mask merge invert")} == {
        "ADetailer noise multiplier": "0.9", "ADetailer CLIP skip": "2", "ADetailer mask min ratio": "0.01",
        "ADetailer mask max ratio": "0.9", "ADetailer x offset": "3", "ADetailer y offset": "-2",
        "ADetailer mask merge invert": "Merge"}
    assert (params["ADetailer steps"], params["ADetailer CFG scale"], params["ADetailer sampler"],
            params["ADetailer inpaint width"], params["ADetailer inpaint height"]) == ("6", "5.5", "Euler a", "128",
                                                                                   "64")
    prompts = ("[PROMPT], freckles, smiling", "blurry")
    assert (params["ADetailer prompt"], params["ADetailer negative prompt"]) == prompts
    assert params["ADetailer mask only top k largest"] == "1" and "ADetailer inpaint padding" not in params
    assert 'ADetailer prompt: "[PROMPT], freckles, smiling"' in out.parameters  # quoted: it has commas
    save_png(out.image, tmp_path / "a1111.png", out.parameters)  # A1111's text alone, as ADetailer leaves it
    data = settings_from_png(tmp_path / "a1111.png")
    assert {k: data[k] for k in custom} == custom and data["ad_model"] == "mediapipe_face_short"
    applied = GenerateSettings(**{"model": "m", **data, "init_image": str(astronaut), "mask": str(black)})
    assert png_not_applied(tmp_path / "a1111.png", applied) == []  # every ADetailer key is applied
    save_png(out.image, tmp_path / "own.png", out.parameters, out.png_text())  # personae's own chunk: read whole
    own = settings_from_png(tmp_path / "own.png")
    assert {k: own[k] for k in custom} == custom
    # ADetailer options personae does not take, and a second ADetailer unit, are named, not dropped silently
    extra = tmp_path / "extra.png"
    save_png(out.image, extra, out.parameters + ", ADetailer restore face: True, ADetailer model 2nd: "
             "mediapipe_face_mesh")
    missed = png_not_applied(extra, applied)
    assert missed == ['ADetailer restore face "True"', 'ADetailer model 2nd "mediapipe_face_mesh"'], missed
    # A1111 1.9+ writes the sampler and its schedule apart; an unticked "use separate" box leaves its value unread
    split = tmp_path / "split.png"
    save_png(out.image, split, "a man\nSteps: 20, Seed: 1, Size: 512x512, ADetailer model: mediapipe_face_full, "
             "ADetailer confidence: 0.3, ADetailer use separate sampler: True, ADetailer sampler: DPM++ 2M, "
             "ADetailer scheduler: Karras, ADetailer use separate steps: False, ADetailer steps: 30")
    data = settings_from_png(split)
    assert data["ad_sampler"] == "DPM++ 2M Karras" and "ad_steps" not in data
    assert png_not_applied(split, GenerateSettings(**{"model": "m", **data})) == []
    # an A1111 PNG made with a YOLO model: the face fix stays off and the warning names every ADetailer key
    yolo = tmp_path / "yolo.png"
    save_png(out.image, yolo, "a man\nSteps: 20, Seed: 1, Size: 512x512, ADetailer model: face_yolov8n.pt, "
             "ADetailer confidence: 0.3, ADetailer dilate erode: 4, ADetailer use separate steps: True, "
             "ADetailer steps: 30, ADetailer version: 24.9.0")
    data = settings_from_png(yolo)
    assert not any(k.startswith("ad_") for k in data)
    missed = png_not_applied(yolo, GenerateSettings(**{"model": "m", **data}))
    assert missed[0].startswith('ADetailer model "face_yolov8n.pt" (a YOLO model, which needs ultralytics')
    assert {"ADetailer confidence", "ADetailer use separate steps", "ADetailer steps"} <= {
        m.split(" \"")[0] for m in missed}


def test_settings_refuse_adetailer_options_without_a_model_and_bad_steps(tiny_model):
    from personae.inference.detailer import check_detailer

    with pytest.raises(ValueError, match="ad_prompt belongs to the face fix"):
        GenerateSettings(model="m", prompt="p", ad_prompt="a face")
    assert GenerateSettings(model="m", prompt="p", ad_model="None").ad_model is None  # ADetailer's word for off
    with pytest.raises(UserError, match="leaves no denoising step for the faces"):
        check_detailer(GenerateSettings(model="m", prompt="p", steps=2, ad_model="mediapipe_face_full",
                                        ad_denoising_strength=0.4))
    with pytest.raises(UserError, match='not a face detector personae knows. Did you mean "mediapipe_face_full"'):
        check_detailer(GenerateSettings(model="m", prompt="p", ad_model="mediapipe_face_ful"))


def test_cli_refuses_a_yolo_model_in_one_paragraph(tiny_model, tmp_path, capsys):
    from personae.cli.main import main

    code = main(["generate", "--model", str(tiny_model[0]), "--prompt", "a man", "--ad-model", "face_yolov8n.pt",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "error:" in err
    message = " ".join(err[err.index("error:"):].split())
    assert "\n\n" not in err[err.index("error:"):].strip()
    for text in ("face_yolov8n.pt is one of ADetailer's YOLO models", "ultralytics", "mediapipe_face_full",
                 "mediapipe_face_short", "mediapipe_face_mesh"):
        assert text in message, message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("*.png"))


def test_the_generate_pages_face_fix_form_comes_from_the_declarations():
    import gradio as gr

    from personae.web.forms import SettingsForm

    with gr.Blocks():
        form = SettingsForm(GenerateSettings, groups=("face fix (ADetailer)",),
                            choices={"ad_model": ["", *MODELS], "ad_sampler": ["", "Euler a"]})
    c = form.components
    assert c["ad_model"].label == "ADetailer model" and c["ad_denoising_strength"].value == 0.4
    raw = {name: comp.value for name, comp in c.items()}
    untouched = form.values(*raw.values())  # the defaults as the page shows them: no face fix, nothing refused
    assert GenerateSettings(model="m", prompt="p", **untouched).ad_model is None
    raw.update(ad_model="mediapipe_face_mesh", ad_dilate_erode=-6.0, ad_steps=12, ad_sampler="Euler a")
    chosen = GenerateSettings(model="m", prompt="p", **form.values(*raw.values()))
    assert (chosen.ad_model, chosen.ad_dilate_erode, chosen.ad_steps, chosen.ad_sampler) == (
        "mediapipe_face_mesh", -6, 12, "Euler a")
