"""`personae generate`: settings in, PNGs with A1111 metadata out; and reading settings back from a PNG.

The output folder collects numbered images run after run, as A1111's does (nothing is ever
replaced); it must be new, empty or one generate made (outputs.py), and is locked while written.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PureWindowsPath
from typing import get_args

from pydantic import TypeAdapter, ValidationError

from personae.config.base import parse_settings
from personae.config.fields import extra_of, grouped_fields
from personae.config.generate import GenerateSettings
from personae.config.ip_adapter import DEFAULT_IMAGE_ENCODER
from personae.errors import UserError
from personae.events import EventHandler, Message, ignore
from personae.inference.detailer import MODELS as FACE_MODELS
from personae.inference.detailer import SWITCHES as DETAILER_SWITCHES
from personae.inference.detailer import detailer_keys
from personae.inference.hires import upscaler_from_a1111
from personae.inference.ksampler import KDiffusionScheduler
from personae.inference.samplers import get_sampler, with_schedule_type
from personae.inference.soft_inpaint import SOFT_FIELDS
from personae.inference.txt2img import GeneratedImage, txt2img
from personae.jobs.png_controls import ip_units_not_applied, png_control_units, png_ip_units, units_not_applied
from personae.media.comfy_graph import ComfyReading, read_comfy_graph
from personae.media.png import (
    InfotextValueError,
    PngTextError,
    infotext_settings,
    parse_parameters,
    read_image_text,
    save_png,
)
from personae.models.embedding_dir import embedding_files
from personae.models.upscalers import find_upscaler, is_path
from personae.models.vae import loads_unasked, vae_beside
from personae.outputs import Kind, check_output, open_output

GENERATED = Kind("generate", "generated images", "personae generate", signature=(),
                 layout=("[0-9][0-9][0-9][0-9][0-9]-*.png", "inputs/*"))

_NUMBERED = re.compile(r"^(\d{5})-")


def next_index(out_dir: Path) -> int:
    """A1111 numbers images 00000-<seed>.png onwards; continue after what the folder holds."""
    numbers = [int(m.group(1)) for p in out_dir.glob("*.png") if (m := _NUMBERED.match(p.name))]
    return max(numbers, default=-1) + 1


def save_images(images: list[GeneratedImage], out_dir: str | Path) -> list[Path]:
    with open_output(out_dir, GENERATED) as out:
        start = next_index(out)
        return [save_png(img.image, out / f"{start + i:05d}-{img.seed}.png", img.parameters, img.png_text())
                for i, img in enumerate(images)]


def run_generate(settings: GenerateSettings, out_dir: str | Path, on_event: EventHandler = ignore) -> list[Path]:
    check_output(out_dir, GENERATED)  # before the model loads
    paths = save_images(txt2img(settings, on_event=on_event), out_dir)
    on_event(Message(f"wrote {len(paths)} image{'s' * (len(paths) != 1)} to {Path(out_dir)}"))
    return paths


def settings_from_infotext(text: str, source: Path) -> dict:
    """Generate settings from A1111 infotext (a PNG made by A1111 or another tool).

    Every setting that declares its A1111 name is read by that name (media/png.py); "Size" and
    "Schedule type" are A1111's joins of two settings and are split here.
    """
    prompt, negative, p = parse_parameters(text)  # <lora:name:w> tags stay: --lora-dir finds their files
    if "Hires upscaler" in p:
        p["Hires upscaler"] = upscaler_from_a1111(p["Hires upscaler"])[0]
    if "Hires resize" in p and "Hires upscale" not in p:  # A1111 writes one of the two: the fix is on either way, and
        p["Hires upscale"] = "1"  # the hires keys it governs (steps, denoise, upscaler) are read with it
    p = detailer_keys(p)  # ADetailer's "use separate ..." boxes; a YOLO model leaves the face fix off
    resize = None
    if "Seed resize from" in p:  # A1111 joins the two sides; 0x0 or -1x-1 is off
        width, x, height = p.pop("Seed resize from").partition("x")
        try:
            w, h = int(width.strip()), int(height.strip())
        except ValueError:
            raise UserError(f'--from-png: {source} stores "Seed resize from: {width[:20]}x{height[:20]}", which is '
                            "not a size in pixels.",
                            "Pass --seed-resize-from-w and -h on the command line instead.") from None
        if w > 0 and h > 0:
            resize = (w, h)
    area = p.pop("Inpaint area", None)
    padding = p.pop("Masked area padding", None)
    if padding is not None and not padding.strip().isdigit():
        raise UserError(f'--from-png: {source} stores "Masked area padding: {padding[:20]}", which is not a number of '
                        "pixels.", "Pass --masked-padding on the command line instead.")
    sizes = {}
    if "Size" in p:
        width, x, height = p.pop("Size").partition("x")
        if x:
            sizes = {"Width": width, "Height": height}
    try:
        data: dict = {"prompt": prompt, "negative": negative, **infotext_settings(GenerateSettings, p)}
        if resize:
            data.update(seed_resize_from_w=resize[0], seed_resize_from_h=resize[1])
        if area == "Only masked":  # A1111's name for --inpaint-area masked
            data["inpaint_area"] = "masked"
            if padding is not None:
                data["masked_padding"] = int(padding)
        if sizes:
            data.update(width=TypeAdapter(int).validate_python(sizes["Width"].strip()),
                        height=TypeAdapter(int).validate_python(sizes["Height"].strip()))
    except InfotextValueError as exc:
        raise UserError(f"--from-png: {source} stores {exc}.", "Pass that setting on the command line instead.") from None
    except ValidationError:
        raise UserError(f'--from-png: {source} stores "Size: {sizes["Width"][:20]}x{sizes["Height"][:20]}", which is '
                        "not a size in pixels.", "Pass --width and --height on the command line instead.") from None
    if p.get("Emphasis") in _READ_VALUES["Emphasis"]:  # A1111 writes it when not Original
        data["emphasis"] = p["Emphasis"]
    ours = p.get("Version", "").startswith("personae")  # personae's own infotext says what differs from its defaults
    if p.get("Masked content") in _READ_VALUES["Masked content"]:  # written when not original
        data["masked_content"] = p["Masked content"]
    if p.get("Mask mode") in _READ_VALUES["Mask mode"]:
        data["mask_invert"] = p["Mask mode"] == "Inpaint not masked"
    if "Mask blur" not in p and not ours and {"Inpaint area", "Masked content", "Mask mode"} & p.keys():
        data["mask_blur"] = 0  # an inpainting (A1111 wrote its other keys) whose blur was 0: A1111 leaves it out
    for key, field in (("Eta", "eta"), ("Eta DDIM", "eta_ddim"), ("Sigma churn", "sigma_churn"),
                       ("Sigma tmin", "sigma_tmin"), ("Sigma tmax", "sigma_tmax"), ("Sigma noise", "sigma_noise")):
        # written only when not the sampler's default
        if key in p:
            try:
                data[field] = float(p[key])
            except ValueError:
                raise UserError(f'--from-png: {source} stores "{key}: {p[key][:20]}", which is not a number.',
                                f"Pass --{field.replace('_', '-')} on the command line instead.") from None
    if "RNG" not in p and not ours:
        # A1111 writes "RNG" only when it is not its default: the picture's noise was drawn on the GPU (personae
        # draws those numbers on any device); personae's own PNGs always name their source
        data["rng"] = "GPU"
    if p.get("Pad conds v0") == "True":
        data["pad_conds"] = "v0"
    elif p.get("Pad conds") == "True":
        data["pad_conds"] = "on"
    elif not ours:  # A1111's default: a prompt and negative prompt of different lengths drawn each over its own
        data["pad_conds"] = "off"
    if "Hires schedule type" in p and "hires_sampler" not in data and "sampler" in data:
        data["hires_sampler"] = data["sampler"]  # A1111 1.9+: the same sampler, on a schedule of its own
    for field, key in (("sampler", "Schedule type"), ("hires_sampler", "Hires schedule type")):
        joined = with_schedule_type(data.get(field, ""), p.get(key, "")) if field in data and p.get(key) else None
        if joined:
            data[field] = joined
    return data


def _from_comfy(text: str, source: Path) -> ComfyReading:
    """ComfyUI's `prompt` graph read (media/comfy_graph.py), its sampler written by A1111's name where personae has
    it; a sampler or scheduler it lacks stays in ComfyUI's words and fails by name when it runs, unless --sampler
    replaces it (as an A1111 PNG's unknown sampler does)."""
    reading = read_comfy_graph(text, str(source))
    # ComfyUI draws the starting noise with torch's CPU generator, and runs a prompt and a negative prompt of other
    # lengths each over its own (it repeats the shorter to a common length, which attention reads the same): A1111's
    # pad conds off; it gives the UNet each sigma's nearest whole training step (A1111's K-sampler quantization); and
    # it weights (word:1.2) from the empty prompt's embedding (emphasis "ComfyUI", inference/prompt.py)
    reading.settings.update(rng="CPU", pad_conds="off", quantize=True, emphasis="ComfyUI")
    samplers = {}
    for key in ("sampler", "hires_sampler"):
        if key in reading.settings:
            try:
                samplers[key] = get_sampler(reading.settings[key])
                reading.settings[key] = samplers[key].name
            except UserError:
                reading.notes.append(f'sampler "{reading.settings[key]}" of {reading.sampler_at}: personae has no '
                                     "such sampler or schedule (pass --sampler)")
    # ComfyUI's denoise runs all its steps on the tail of a schedule of steps / denoise: A1111's "img2img fix steps"
    # and its hires redraw with a k-diffusion sampler; diffusers' samplers keep the step count made for them
    k_diffusion = {key: s.scheduler is KDiffusionScheduler for key, s in samplers.items()}
    steps, hires_steps = reading.settings.pop("_comfy_steps", None), reading.settings.pop("_comfy_hires_steps", None)
    if steps is not None and k_diffusion.get("sampler", True):
        reading.settings.update(steps=steps, img2img_fix_steps=True)
    if hires_steps is not None and k_diffusion.get("hires_sampler", k_diffusion.get("sampler", True)):
        reading.settings["hires_steps"] = hires_steps
    return reading


def personae_chunk(text: str, path: Path) -> dict:
    """The settings personae stored as JSON in a file it wrote (a PNG's `personae` chunk), `allow_pickle` left out:
    a file never widens what the user allowed on the command line."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise UserError(f"--from-png: the settings stored in {path} (its `personae` chunk) are not valid JSON "
                        "settings.", "The file was damaged or edited; pass the settings on the command line.")
    data.pop("allow_pickle", None)
    return data


def settings_from_png(path: str | Path) -> dict:
    """The settings stored in a PNG: personae's own chunk if present, else A1111's `parameters` (from a JPEG or
    WebP: A1111's EXIF UserComment), else ComfyUI's `prompt` graph.

    What a file says never widens what the user allowed: `allow_pickle` is not taken from it.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--from-png: {path} does not exist.")
    try:
        text = read_image_text(path)
    except (OSError, PngTextError) as exc:
        raise UserError(f"--from-png: {path} is not a picture whose settings can be read ({exc}).",
                        "Pass a PNG (or an A1111 JPEG / WebP) written by personae, AUTOMATIC1111 or another tool that "
                        "stores A1111 infotext.") from None
    if "personae" in text:
        data = personae_chunk(text["personae"], path)
        data.setdefault("comma_backtrack", 0)  # drawn before personae cut long prompts at commas, as A1111 does
        parse_settings(GenerateSettings, data, f"the settings stored in {path}")  # validate early
        return data
    if "parameters" in text:
        return settings_from_infotext(text["parameters"], path)
    if "prompt" in text:
        return _from_comfy(text["prompt"], path).settings
    if "workflow" in text:
        raise UserError(f"--from-png: {path} carries only ComfyUI's `workflow` (the editor's graph), not the `prompt` "
                        "graph ComfyUI ran, which is what personae reads.",
                        "Open the picture in ComfyUI and queue it once: the picture it saves carries both. Or pass "
                        "the settings on the command line.")
    raise UserError(f"{path} carries no generation settings (no `parameters` text chunk or EXIF comment).",
                    "Use a PNG (or an A1111 JPEG / WebP) written by personae, AUTOMATIC1111, ComfyUI or another tool "
                    "that stores A1111 infotext.")


# A1111 keys that --from-png reads besides the settings that declare an infotext name: the joins of two settings,
# LoRA hashes (the tags in the prompt are what apply them), and what describes the file rather than the picture
_READ_KEYS = {"Size", "Seed resize from", "Inpaint area", "Masked area padding", "Schedule type", "Hires schedule type",
              "Lora hashes", "Version", "Model", "Model hash", "VAE", "VAE hash", "ADetailer version",
              "ADetailer scheduler", *DETAILER_SWITCHES, "Pad conds", "Pad conds v0", "Eta", "Eta DDIM",
              "Sigma churn", "Sigma tmin", "Sigma tmax", "Sigma noise",
              "Template", "Negative Template"}  # Dynamic Prompts' prompts as written: the PNG's prompts are drawn


# A1111 keys personae applies at some values only: said as not applied when the picture used another
_FIXED_VALUES = {"Beta schedule alpha": 0.6, "Beta schedule beta": 0.6}  # A1111's Beta schedule (sigmas.beta)
_READ_VALUES = {"Emphasis": ("Original", "No norm", "None", "ComfyUI"),
                "Masked content": get_args(GenerateSettings.model_fields["masked_content"].annotation),
                "Mask mode": ("Inpaint masked", "Inpaint not masked")}


_UNIT = re.compile(r"ControlNet \d+")  # A1111's ControlNet units, read by jobs/png_controls.py


def _at_our_value(key: str, value: str) -> bool:
    if key in _READ_VALUES:
        return value in _READ_VALUES[key]
    try:
        return key in _FIXED_VALUES and float(value) == _FIXED_VALUES[key]
    except ValueError:
        return False


def _shown(key: str, value: str) -> str:
    value = " ".join(value.split())
    return f"{key} {json.dumps(value, ensure_ascii=False)}" if value and len(value) <= 32 else key


def png_not_applied(path: str | Path, settings: GenerateSettings, model_hash: str | None = None) -> list[str]:
    """What an A1111 PNG's infotext asks for that this run does not apply, each named (empty for personae's own
    PNGs, whose settings are read whole): Hires fix without our hires settings, ADetailer's YOLO models and the
    ADetailer settings personae does not take, embeddings by name, a denoising strength with nothing to denoise,
    another model than the one passed."""
    text = read_image_text(Path(path))
    if "personae" not in text and "parameters" not in text and "prompt" in text:
        return comfy_not_applied(_from_comfy(text["prompt"], Path(path)), settings) + \
            units_not_applied(png_control_units(path), settings.controls)
    if "personae" in text or "parameters" not in text:
        return []
    _, _, params = parse_parameters(text["parameters"])
    known = {extra_of(info).get("infotext") for _, _, info in grouped_fields(GenerateSettings)} | _READ_KEYS
    yolo = params.get("ADetailer model", "mediapipe_face_full") not in FACE_MODELS  # then no ADetailer key applies
    missed = [_shown(key, value) + (" (a YOLO model, which needs ultralytics: no face fix here; --ad-model "
                                    f"{next(iter(FACE_MODELS))} runs ADetailer's MediaPipe one)"
                                    if key == "ADetailer model" else "")
              for key, value in params.items()
              if (key not in known | {"TI hashes"} and not _at_our_value(key, value) and not _UNIT.fullmatch(key))
              or (yolo and key.startswith("ADetailer "))]
    missed += units_not_applied(png_control_units(path), settings.controls)  # "ControlNet 0", ...: jobs/png_controls
    missed += ip_units_not_applied(png_ip_units(path), settings.ip_adapters)
    if "TI hashes" in params:  # the embeddings the prompts named: each given, or found in --embeddings-dir
        named = [part.partition(":")[0].strip() for part in params["TI hashes"].strip('"').split(",") if part.strip()]
        have = {e.token or Path(e.path).stem for e in settings.embeddings}
        if settings.embeddings_dir:
            have |= set(embedding_files(settings.embeddings_dir))
        lost = [name for name in named if name.lower() not in {h.lower() for h in have}]
        if lost:
            missed.append(f"TI hashes {', '.join(lost)} (pass --embeddings-dir with the folder holding them, as "
                          "A1111's embeddings folder, or each with --embedding)")
    for key, sampler in (("Schedule type", "Sampler"), ("Hires schedule type", "Hires sampler"),
                         ("ADetailer scheduler", "ADetailer sampler")):
        schedule = params.get(key)
        if schedule and not with_schedule_type(params.get(sampler) or params.get("Sampler", ""), schedule):
            missed.append(_shown(key, schedule) + " (the sampler's own schedule is used)")
    hires = "Hires upscale" in params or "Hires resize" in params
    upscaler = params.get("Hires upscaler")
    if upscaler and hires:
        ours, exact = upscaler_from_a1111(upscaler)
        model = ours not in ("latent", "image")
        if not exact or (model and settings.hires_upscaler == "image"):
            hint = "; --upscaler-dir with the folder holding its file would apply it" if model else ""
            missed.append(_shown("Hires upscaler", upscaler) + f" (upscaled as {settings.hires_upscaler} here{hint})")
    if "Denoising strength" in params and not (settings.init_image or hires):
        missed.append(_shown("Denoising strength", params["Denoising strength"]) + " (no --init-image)")
    if not settings.mask:
        missed += [_shown(key, params[key]) + " (no --mask)" for key in ("Inpaint area", "Masked content", "Mask mode",
                                                                         "Soft inpainting enabled") if key in params]
    if "VAE" in params and not settings.vae and not _automatic_vae_named(settings, str(params["VAE"])):
        missed.append(_shown("VAE", params["VAE"]) + " (pass it with --vae)")
    if "Model hash" in params and params["Model hash"] != model_hash:
        missed.append(f'Model "{params.get("Model", "")}" [{params["Model hash"]}] (this run uses {settings.model})')
    return missed


def _automatic_vae_named(settings: GenerateSettings, name: str) -> bool:
    """The VAE beside a single-file model (A1111's Automatic, which this run takes too) is the one named."""
    model = Path(settings.model).expanduser()
    near = vae_beside(model) if model.is_file() else None
    return near is not None and near.name == name and loads_unasked(near, settings.allow_pickle)


def comfy_not_applied(reading: ComfyReading, settings: GenerateSettings) -> list[str]:
    """What a ComfyUI graph does that this run does not: the graph's own notes (media/comfy_graph.py), then the
    files it names that are the user's to pass (the init image, a VAE, embeddings) and another checkpoint."""
    missed = list(reading.notes)
    if reading.mask and not settings.mask:
        missed.append(f'inpainting with the mask in "{reading.mask}" (pass that picture with --mask; without it the '
                      "whole picture is redrawn)")
    if reading.init_image and not settings.init_image:
        missed.append(f'img2img from LoadImage "{reading.init_image}" (pass that picture with --init-image; the '
                      f"graph's denoise is the --strength, {settings.strength:g})")
    found = set(embedding_files(settings.embeddings_dir)) if settings.embeddings_dir else set()
    lost = [name for name in dict.fromkeys(reading.embeddings) if name not in found]
    if lost and not settings.embeddings:
        names = ", ".join(f"embedding:{name}" for name in lost)
        missed.append(f"{names} (written as the name; pass --embeddings-dir with the folder holding them, or each "
                      "file with --embedding FILE:NAME)")
    if reading.vae and not settings.vae:
        missed.append(f'VAELoader "{reading.vae}" (pass it with --vae)')
    if reading.upscaler and settings.hires_scale and settings.hires_upscaler == "image":  # png_upscaler: not found
        missed.append(f'UpscaleModelLoader "{reading.upscaler}" (the hires fix resizes with Lanczos here; '
                      "--upscaler-dir with the folder holding its file would apply it)")
    if reading.checkpoint:
        stem = PureWindowsPath(reading.checkpoint).stem
        if stem not in (Path(settings.model).stem, Path(settings.model).name):
            missed.append(f'CheckpointLoaderSimple "{reading.checkpoint}" (this run uses {settings.model})')
    return missed


def png_upscaler(settings: GenerateSettings, stored: dict) -> GenerateSettings:
    """`settings` whose model upscaler an A1111 PNG names ("Hires upscaler: 4x-UltraSharp"): used when --upscaler-dir
    holds it, else the picture is resized with Lanczos (`image`), and png_not_applied says so. A file path (personae's
    own PNGs) or a name the user typed stays as it is: a missing file is then an error when it loads."""
    name = settings.hires_upscaler
    if (not settings.hires_scale or name in ("latent", "image") or is_path(name) or name != stored.get("hires_upscaler")
            or find_upscaler(name, settings.upscaler_dir) is not None):
        return settings
    return settings.model_copy(update={"hires_upscaler": "image"})


_MASK_ONLY = ("inpaint_area", "masked_content", "mask_invert", "soft_inpainting", *SOFT_FIELDS)  # settings that shape
# the inpainting of --mask


def png_without_mask(settings: GenerateSettings, stored: dict) -> GenerateSettings:
    """`settings` with the inpainting settings a PNG stores back at their defaults when this run has no --mask (a PNG
    does not carry its mask): the picture is then drawn without them, and png_not_applied names them."""
    if settings.mask:
        return settings
    return settings.model_copy(update={name: GenerateSettings.model_fields[name].default for name in _MASK_ONLY
                                       if name in stored and getattr(settings, name) == stored[name]})


def png_references(settings: GenerateSettings, stored: dict) -> list[str]:
    """The files and hub ids a PNG's stored settings make this run read, each announced; hub ids only from the cache.

    A PNG from elsewhere may name any path or hub repository: every one that is used is listed for the user,
    and one that is not downloaded yet is refused (a file never starts a download), so the user passes it
    themselves if they want it.
    """
    from personae.inference.controlnet import model_for

    named = []
    if settings.model == stored.get("model"):
        named.append(("model", settings.model, "model_index.json"))
    stored_loras = [l.get("path") for l in stored.get("loras", []) if isinstance(l, dict)]
    named += [("LoRA", l.path, None) for l in settings.loras if l.path in stored_loras]
    stored_embeddings = [e.get("path") for e in stored.get("embeddings", []) if isinstance(e, dict)]
    named += [("embedding", e.path, None) for e in settings.embeddings if e.path in stored_embeddings]
    if settings.vae and settings.vae == stored.get("vae"):
        named.append(("VAE", settings.vae, None))
    for what in ("init_image", "mask"):
        if getattr(settings, what) and getattr(settings, what) == stored.get(what):
            named.append((what.replace("_", " "), getattr(settings, what), None))
    if settings.hires_scale and settings.hires_upscaler == stored.get("hires_upscaler") and \
            settings.hires_upscaler not in ("latent", "image"):
        found = find_upscaler(settings.hires_upscaler, settings.upscaler_dir)
        named.append(("hires upscaler", str(found or settings.hires_upscaler), None))
    stored_controls = [c for c in stored.get("controls", []) if isinstance(c, dict)]
    for control in settings.controls:
        if any(c.get("image") == control.image for c in stored_controls):
            named.append(("control image", control.image, None))
        if control.mask and any(c.get("mask") == control.mask for c in stored_controls):
            named.append(("control mask", control.mask, None))
        if any(c.get("model") == control.model for c in stored_controls):
            named.append(("ControlNet", model_for(control), "config.json", f"--controlnet {control.type}="))
    stored_ip = [u for u in stored.get("ip_adapters", []) if isinstance(u, dict)]
    for unit in settings.ip_adapters:
        if any(u.get("image") == unit.image for u in stored_ip):
            named.append(("IP-Adapter picture", unit.image, None))
        if any(u.get("model") == unit.model for u in stored_ip):
            folder, _, filename = unit.model.rpartition("/")
            named.append(("IP-Adapter", unit.model, None))
            _refuse_download("IP-Adapter", unit.model, folder, filename, "--ip-adapter-model ")
        if any(u.get("image_encoder") == unit.image_encoder for u in stored_ip) or \
                (stored_ip and unit.image_encoder == DEFAULT_IMAGE_ENCODER):
            named.append(("image encoder", unit.image_encoder, None))
            _refuse_download("image encoder", unit.image_encoder, unit.image_encoder, "config.json", "--image-encoder ")
    lines = []
    for what, spec, marker, *flag in named:
        local = Path(spec).expanduser()
        if marker and not local.exists() and "/" in spec and not _in_hub_cache(spec, marker):
            raise UserError(f'--from-png: the PNG names the {what} "{spec}", a hub repository that is not downloaded; '
                            "personae does not download what a file asks for.",
                            f"If you want it, pass it yourself ({(flag or ['--model '])[0]}{spec}), or pass your own.")
        lines.append(f"{what}: {spec}")
    return lines


def _refuse_download(what: str, spec: str, repo: str, marker: str, flag: str) -> None:
    """A hub file or folder a PNG names that is not downloaded: refused (a file never starts a download)."""
    if not Path(spec).expanduser().exists() and "/" in spec and not _in_hub_cache(repo, marker):
        raise UserError(f'--from-png: the PNG names the {what} "{spec}", a hub file that is not downloaded; '
                        "personae does not download what a file asks for.",
                        f"If you want it, pass it yourself ({flag}{spec}), or pass your own.")


def _in_hub_cache(repo: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    owner, name, *sub = repo.split("/")
    target = "/".join([*sub, filename])
    try:
        return isinstance(try_to_load_from_cache(f"{owner}/{name}", target), str)
    except ValueError:  # not a valid repository id
        return False
