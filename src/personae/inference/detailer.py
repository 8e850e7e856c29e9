"""ADetailer's face fix: after the picture is drawn, every face found in it is redrawn by inpainting.

    --ad-model mediapipe_face_full                              # "ADetailer model: mediapipe_face_full"
    --ad-model mediapipe_face_mesh --ad-prompt "[PROMPT], detailed eyes" --ad-denoising-strength 0.35

As ADetailer (Bing-su/adetailer) does it, for each finished picture (after img2img or the hires fix):
1. detect faces with the MediaPipe models ADetailer names (they ship inside the mediapipe 0.10.21 wheel): face
   detection's full-range or short-range model gives boxes, each filled white on black at the picture's size; the
   face mesh gives the convex hull of each face's landmarks;
2. keep the k largest boxes (largest first), grow or shrink each mask by a square kernel, drop masks left empty;
3. one face after another, the picture so far is inpainted through that face's mask: feathered by the mask blur,
   the region around it (plus the padding) cut out, grown to the drawing size's aspect ratio and drawn at
   --width x --height (A1111's "Only masked", inference/img2img.py), pasted back with the picture kept wherever
   the feathered mask is black. Face j is drawn from seed + j (ADetailer's seed per face) with the session's
   sampler, steps and CFG, and its own prompt or the main one.
No face found: the picture is unchanged and a message says so (ADetailer prints "nothing detected").
ADetailer's YOLO models (face_yolov8n.pt, ...) need ultralytics and their weights: they are refused by name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from personae.config.detailer import DetailerSettings
from personae.config.fields import extra_of
from personae.data.control.mediapipe_models import native_quiet, solutions
from personae.errors import UserError, did_you_mean
from personae.events import EventHandler, Message, Progress, ignore
from personae.inference.composable import scheduled_prompts
from personae.inference.hires_passes import sampling_pass
from personae.inference.img2img import (
    crop_region,
    cut_region,
    denoiser,
    feather,
    fit_region,
    mask_kwargs,
    noised_start,
    overlay_mask,
    paste_back,
    vae_roundtrip,
)
from personae.inference.ksampler import img2img_steps
from personae.inference.rng import image_generators
from personae.inference.samplers import get_sampler, k_tuning, with_schedule_type
from personae.models.lora_dir import lora_tags

# ADetailer's MediaPipe models: name -> what it finds
MODELS = {
    "mediapipe_face_full": "MediaPipe face detection, full-range model: faces at any distance, as boxes",
    "mediapipe_face_short": "MediaPipe face detection, short-range model: faces within about 2 m, as boxes",
    "mediapipe_face_mesh": "MediaPipe face mesh: the outline of each face's 468 landmarks (its convex hull)",
}
# the ADetailer release whose settings, defaults and infotext keys these follow (adetailer/args.py of v24.5.0)
ADETAILER_VERSION = "24.5.0"
MAX_FACES = 20  # ADetailer's face-mesh limit
NEEDED_BY = "The face fix (--ad-model) and its MediaPipe detectors"
# ADetailer's "use separate ..." boxes: written as True before the values they release, which are written only then
SWITCHES = {"ADetailer use inpaint width height": ("ad_inpaint_width", "ad_inpaint_height"),
            "ADetailer use separate steps": ("ad_steps",), "ADetailer use separate CFG scale": ("ad_cfg_scale",),
            "ADetailer use separate sampler": ("ad_sampler",),
            "ADetailer use separate noise multiplier": ("ad_noise_multiplier",),
            "ADetailer use separate CLIP skip": ("ad_clip_skip",)}


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels
    mask: Image.Image  # white on black ("L"), the picture's size


def check_model(name: str) -> None:
    """One of ADetailer's MediaPipe models, or one paragraph saying which models work."""
    if name in MODELS:
        return
    listed = ", ".join(MODELS)
    if name.lower().endswith((".pt", ".pth", ".safetensors")) or "yolo" in name.lower():
        raise UserError(f'--ad-model {name} is one of ADetailer\'s YOLO models, which need the ultralytics package '
                        "and weights downloaded for them; personae runs ADetailer's MediaPipe models, whose weights "
                        f"ship inside the mediapipe wheel: {listed}.",
                        "Pass --ad-model mediapipe_face_full (faces at any distance) or mediapipe_face_mesh (the face "
                        "oval as the mask).")
    raise UserError(f'--ad-model "{name}" is not a face detector personae knows.{did_you_mean(name, MODELS)}',
                    f"Pass one of {listed}.")


def detailer_infotext(settings) -> dict[str, object]:
    """The ADetailer keys that are not one setting each: the "use separate ..." boxes ticked, and the version."""
    ticked = {key: True for key, fields in SWITCHES.items() if getattr(settings, fields[0]) not in (None, "")}
    return {**ticked, "ADetailer version": ADETAILER_VERSION}


def detailer_keys(params: dict[str, str]) -> dict[str, str]:
    """An A1111 PNG's infotext `params` with its ADetailer keys as personae's settings read them: a ticked "use
    separate ..." box taken out (an unticked one takes its values along), A1111 1.9's "ADetailer scheduler" joined
    to the sampler (as "Schedule type" is); with a YOLO model, no ADetailer key at all (the face fix stays off, and
    --from-png's warning names them)."""
    if params.get("ADetailer model", "mediapipe_face_full") not in MODELS:
        return {k: v for k, v in params.items() if not k.startswith("ADetailer ")}
    params = dict(params)
    for switch, fields in SWITCHES.items():
        if params.pop(switch, "True") != "True":
            for field in fields:
                params.pop(extra_of(DetailerSettings.model_fields[field])["infotext"], None)
    joined = with_schedule_type(params.get("ADetailer sampler", ""), params.get("ADetailer scheduler", ""))
    if joined and "ADetailer sampler" in params and params.get("ADetailer scheduler"):
        params.pop("ADetailer scheduler")
        params["ADetailer sampler"] = joined
    return params


def check_detailer(settings):
    """The face fix's settings, checked before the model loads; returned with the faces' sampler by its A1111 name."""
    check_model(settings.ad_model)
    solutions(NEEDED_BY)  # MediaPipe missing: said before the model loads
    steps, strength = settings.ad_steps or settings.steps, settings.ad_denoising_strength
    flag = "--ad-steps" if settings.ad_steps else "--steps"
    if strength > 0 and int(steps * strength) < 1:
        raise UserError(f"--ad-denoising-strength {strength:g} with {flag} {steps} leaves no denoising step for the "
                        "faces (steps x strength, rounded down).", "Raise --ad-denoising-strength (0.3-0.5 is usual).")
    if settings.ad_sampler:
        settings = settings.model_copy(update={"ad_sampler": get_sampler(settings.ad_sampler).name})
    for text, flag in ((settings.ad_prompt, "--ad-prompt"), (settings.ad_negative_prompt, "--ad-negative-prompt")):
        if lora_tags(text)[1]:
            raise UserError(f"{flag} has LoRA tags; personae applies the prompt's LoRAs to the faces too.",
                            f"Leave the tags out of {flag}.")
    return settings


def box_mask(box: tuple[float, float, float, float], size: tuple[int, int]) -> Image.Image:
    """A box filled white on black at `size`, as ADetailer's create_mask_from_bbox draws it."""
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return mask


def _detections(image: Image.Image, selection: int, confidence: float) -> list[Face]:
    face_detection = solutions(NEEDED_BY).face_detection
    with native_quiet(), face_detection.FaceDetection(model_selection=selection,
                                                      min_detection_confidence=confidence) as detector:
        found = detector.process(np.ascontiguousarray(np.asarray(image.convert("RGB"))))
    faces = []
    for detection in found.detections or []:
        rel = detection.location_data.relative_bounding_box
        x1, y1 = rel.xmin * image.width, rel.ymin * image.height
        box = (x1, y1, x1 + rel.width * image.width, y1 + rel.height * image.height)
        faces.append(Face(box, box_mask(box, image.size)))
    return faces


def _meshes(image: Image.Image, confidence: float) -> list[Face]:
    import cv2

    face_mesh = solutions(NEEDED_BY).face_mesh
    with native_quiet(), face_mesh.FaceMesh(static_image_mode=True, max_num_faces=MAX_FACES,
                                            min_detection_confidence=confidence) as mesh:
        found = mesh.process(np.ascontiguousarray(np.asarray(image.convert("RGB"))))
    faces = []
    for landmarks in found.multi_face_landmarks or []:
        points = np.intp([(p.x * image.width, p.y * image.height) for p in landmarks.landmark])
        hull = cv2.convexHull(points).reshape(-1).tolist()
        mask = Image.new("L", image.size, 0)
        ImageDraw.Draw(mask).polygon(hull, fill=255)
        box = mask.getbbox()
        if box is not None:  # a hull wholly outside the picture
            faces.append(Face(tuple(float(v) for v in box), mask))
    return faces


def detect_faces(image: Image.Image, model: str, confidence: float = 0.3) -> list[Face]:
    """The faces `model` finds in `image`, in the detector's order."""
    check_model(model)
    if model == "mediapipe_face_mesh":
        return _meshes(image, confidence)
    return _detections(image, 1 if model == "mediapipe_face_full" else 0, confidence)


def largest(faces: list[Face], k: int) -> list[Face]:
    """The k faces with the largest boxes, largest first; all of them in their order when k is 0."""
    if not k:
        return faces
    area = [(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) for f in faces]
    return [faces[i] for i in np.argsort(area, kind="stable")[::-1][:k]]


def dilate_erode(mask: Image.Image, value: int) -> Image.Image:
    """The mask grown (value > 0) or shrunk (value < 0) by a square kernel `abs(value)` pixels wide (OpenCV's
    dilate / erode, as ADetailer's mask.py)."""
    if value == 0:
        return mask
    import cv2

    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (abs(value), abs(value)))
    morph = cv2.dilate if value > 0 else cv2.erode
    return Image.fromarray(morph(np.asarray(mask), kernel, iterations=1))


def shifted(mask: Image.Image, x: int, y: int) -> Image.Image:
    """The mask moved x pixels right and y up, what leaves one edge coming back at the other (ADetailer's offset,
    PIL's ImageChops.offset)."""
    return Image.fromarray(np.roll(np.asarray(mask), (-y, x), axis=(0, 1))) if x or y else mask


def face_masks(faces: list[Face], k: int, grow: int, ratio: tuple[float, float] = (0.0, 1.0),
               offset: tuple[int, int] = (0, 0), merge: str = "None") -> list[Image.Image]:
    """The masks to redraw, in order, as ADetailer's pred_preprocessing makes them: the faces whose box is between
    `ratio` of the picture's area, the k largest of them, each mask moved by `offset`, dilated or eroded, empty ones
    left out; "Merge" joins them into one, "Merge and Invert" into everything but them."""
    if faces:
        area = faces[0].mask.width * faces[0].mask.height
        faces = [f for f in faces if ratio[0] <= (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) / area <= ratio[1]]
    masks = [dilate_erode(shifted(f.mask, *offset), grow) for f in largest(faces, k)]
    masks = [m for m in masks if m.getbbox() is not None]
    if merge == "None" or not masks:
        return masks
    merged = np.bitwise_or.reduce([np.asarray(m) for m in masks])
    return [Image.fromarray(255 - merged if merge == "Merge and Invert" else merged)]


def face_prompts(text: str, default: str) -> list[str]:
    """ADetailer's prompt per face: [SEP] splits `text` into one per face (the last serves the rest), an empty
    part is `default`, [PROMPT] in a part stands for `default`."""
    parts = re.split(r"\s*\[SEP\]\s*", text)
    return [part.replace("[PROMPT]", default) if part else default for part in parts]


def _skipped(prompt: str) -> bool:
    return re.fullmatch(r"\s*\[SKIP\]\s*", prompt) is not None


@torch.no_grad()
def redraw_face(session, settings, picture: Image.Image, mask: Image.Image, prompt: str, negative: str, seed: int,
                sampler, size: tuple[int, int], report=None) -> Image.Image:
    """`picture` with the part under `mask` inpainted at `size` (the generation's width x height), as ADetailer sets
    up A1111's img2img inpainting."""
    width, height = size
    full_mask = feather(mask, settings.ad_mask_blur)
    region = (0, 0, picture.width, picture.height)
    if settings.ad_inpaint_only_masked:
        found = crop_region(full_mask, settings.ad_inpaint_padding)
        if found is None:
            return picture
        region = fit_region(found, width, height, picture.size)
    if settings.ad_inpaint_only_masked:  # A1111's "Only masked", which ADetailer runs
        init, crop_mask = cut_region(picture, region, size), cut_region(full_mask, region, size)
    else:
        init = picture.resize(size, Image.Resampling.LANCZOS)
        crop_mask = full_mask.resize(size, Image.Resampling.LANCZOS)
    scheduler = sampler.make(session.base_scheduler, k_tuning(settings))
    noised_start(scheduler, multiplier=settings.ad_noise_multiplier or settings.noise_multiplier,
                 extra=settings.extra_noise)
    pipe = denoiser(session, init, crop_mask, scheduler)
    if settings.ad_denoising_strength == 0:  # nothing to redraw: the face as the VAE gives it
        drawn = vae_roundtrip(pipe, init)
    else:
        steps = settings.ad_steps or settings.steps
        cfg = settings.cfg if settings.ad_cfg_scale is None else settings.ad_cfg_scale
        prompts = scheduled_prompts(session.encoder, prompt, negative, settings.ad_clip_skip or settings.clip_skip,
                                    sampler.prompt_steps(steps), 1, session.dtype, settings.emphasis,
                                    settings.comma_backtrack)

        def step_end(pipeline, step, timestep, kwargs):
            if report is not None:
                report(step + 1, getattr(pipeline, "_num_timesteps", 0) or len(pipeline.scheduler.timesteps))
            return prompts.after_step(pipeline, step, kwargs)

        faces_generators = scheduler.generators = image_generators([seed % 2**64], settings.rng, settings.ensd)
        # AND, NGMS, token merging and Dynamic Thresholding there too (ADetailer keeps the extension's script)
        with sampling_pass(prompts, session.pipe.unet, (), settings, scheduler, cfg=cfg, images=1):
            drawn = pipe(image=init, **mask_kwargs(pipe, crop_mask, width, height), **prompts.call_kwargs(),
                         **img2img_steps(pipe.scheduler, steps, settings.ad_denoising_strength,
                                         fixed=settings.img2img_fix_steps), guidance_scale=cfg,
                         generator=faces_generators,
                         callback_on_step_end=step_end).images[0]
    overlay = full_mask if settings.ad_inpaint_only_masked else overlay_mask(full_mask)  # A1111's mask_for_overlay
    return paste_back(picture, drawn, region, overlay, "Crop and resize" if settings.ad_inpaint_only_masked
                      else "Just resize")


def touching(masks: list[Image.Image], within: Image.Image) -> list[Image.Image]:
    """The masks that share a pixel with the white (> 128) part of `within`, ADetailer's filter for img2img
    inpainting of the whole picture: only the faces the user's inpainting mask touches are redrawn."""
    inside = np.asarray(within.convert("L").resize(masks[0].size, Image.Resampling.LANCZOS)) > 128 if masks else None
    return [m for m in masks if (np.asarray(m) > 0)[inside].any()]


def detail_faces(session, settings, picture: Image.Image, seed: int, sampler, size: tuple[int, int],
                 on_event: EventHandler = ignore, number: int = 1, within: Image.Image | None = None) -> Image.Image:
    """ADetailer's pass over one finished picture, each face drawn at `size` (number `number` of the run, for the
    messages); `within`: the inpainting mask of an img2img inpainting of the whole picture (faces outside it stay)."""
    # 1. detect, keep the k largest, dilate or erode; with an inpainting mask, only the faces it touches
    faces = detect_faces(picture, settings.ad_model, settings.ad_confidence)
    masks = face_masks(faces, settings.ad_mask_k_largest, settings.ad_dilate_erode,
                       (settings.ad_mask_min_ratio, settings.ad_mask_max_ratio),
                       (settings.ad_x_offset, settings.ad_y_offset), settings.ad_mask_merge_invert)
    if not masks:
        on_event(Message(f"face fix ({settings.ad_model}): nothing detected on image {number}; it is left as drawn"))
        return picture
    if within is not None and not (masks := touching(masks, within)):
        on_event(Message(f"face fix ({settings.ad_model}): no face on image {number} touches the inpainting mask "
                         "(ADetailer redraws only those); it is left as drawn"))
        return picture
    on_event(Message(f"face fix ({settings.ad_model}): {len(masks)} face{'s' * (len(masks) != 1)} on image {number}"))
    # 2. each face's prompts (ADetailer's [SEP] / [PROMPT] / [SKIP]), and its own sampler and size when given
    if settings.ad_sampler:
        sampler = get_sampler(settings.ad_sampler)
    if settings.ad_inpaint_width and settings.ad_inpaint_height:
        size = (settings.ad_inpaint_width, settings.ad_inpaint_height)
    prompts = face_prompts(settings.ad_prompt, settings.prompt)
    negatives = face_prompts(settings.ad_negative_prompt, settings.negative)
    # 3. one face after another, each on the picture the last one left, from seed + j
    for j, mask in enumerate(masks):
        prompt, negative = prompts[min(j, len(prompts) - 1)], negatives[min(j, len(negatives) - 1)]
        if _skipped(prompt):
            continue

        def report(done, total, _j=j):
            on_event(Progress("face fix", done, total, {"image": number, "face": _j + 1, "faces": len(masks)}))

        picture = redraw_face(session, settings, picture, mask, prompt, negative, seed + j, sampler, size,
                              report)
    return picture
