"""`personae generate`: txt2img with A1111's settings; every PNG carries them."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  personae generate --model ./tiny --prompt "a photo of a cat" --steps 4 --seed 7 --out out/
  personae generate --model stable-diffusion-v1-5/stable-diffusion-v1-5 --prompt "a (red:1.3) fox, [blurry]" \\
      --negative "lowres" --sampler "DPM++ 2M Karras" --clip-skip 2 --batch-size 4 --out out/
  personae generate --model ./majicmix.safetensors --lora me.safetensors:0.8 \\
      --embedding easynegative.safetensors --prompt "photo of sks man" --out out/
  personae generate --from-png out/00000-7.png --seed 8 --out out/
  personae generate --model ./majicmix.safetensors --prompt "a castle" --hires-scale 2 --hires-denoise 0.4 \\
      --hires-upscaler ~/webui/models/ESRGAN/4x-UltraSharp.pth --allow-pickle --out out/
  personae generate --from-png a1111.png --upscaler-dir ~/stable-diffusion-webui --lora-dir ~/stable-diffusion-webui \\
      --out out/
  personae generate --model ./tiny --prompt "a watercolor" --init-image photo.png --strength 0.6 --out out/
  personae generate --model ./tiny --prompt "a red hat" --init-image photo.png --mask hat_mask.png --out out/
  personae generate --model ./tiny --prompt "a red hat" --init-image photo.png --mask hat_mask.png --mask-blur 16 \\
      --soft-inpainting --out out/
  personae generate --model ./tiny --prompt "seamless stone wall texture" --tiling --cfg 14 \\
      --dynamic-thresholding --mimic-scale 7 --token-merging 0.3 --out out/
  personae generate --model stable-diffusion-v1-5/stable-diffusion-v1-5 --prompt "a dancer on a stage" \\
      --control pose:me.jpg --control canny:me.jpg:0.5 --control-option canny.low=50 --control-end 0.8 --out out/
  personae generate --model ./tiny --prompt "a cat" --control face:me.jpg --controlnet face=./tiny-controlnet --out out/
  personae generate --model stable-diffusion-v1-5/stable-diffusion-v1-5 --prompt "a woman in a garden" \\
      --ip-adapter me.jpg:0.6 --ip-adapter-model h94/IP-Adapter/models/ip-adapter-plus-face_sd15.safetensors --out out/
  personae generate --model ./tiny --prompt "a cat" --ip-adapter me.jpg:0.8 --ip-adapter-end 0.7 \\
      --ip-adapter-model ./tiny-ip-adapter/ip-adapter_sd15.safetensors \\
      --image-encoder ./tiny-ip-adapter/image_encoder --out out/
  personae generate --model stable-diffusion-v1-5/stable-diffusion-v1-5 --recipe face-to-animal --init-image me.jpg \\
      --animal dog --seed 1 --out out/

samplers: {samplers}
  (+ a schedule type where diffusers has it: Karras, Exponential, Beta, SGM Uniform, e.g. "Euler Karras";
   ComfyUI names too: "dpmpp_2m karras", "dpmpp_3m_sde exponential", "euler_ancestral")
control types: {control_types}
recipes: {recipes}
"""


def _assignment(sep: str, meaning: str):
    def parse(text: str) -> tuple[str, str]:
        key, found, value = text.partition(sep)
        if not found or not key or not value:
            raise argparse.ArgumentTypeError(f"expected {meaning}, got {text!r}")
        return key.strip(), value.strip()
    return parse


def add_control_choices(p, hires: bool = True) -> None:
    """Options that refine the --control units (not settings of their own: they fill each unit's model / options);
    `hires`: the units' Hires-Fix Option and inpaint masks too (a clip has no hires fix, and no inpaint units)."""
    from typing import get_args

    from personae.config.addons import ControlRef

    p.add_argument("--controlnet", action="append", type=_assignment("=", "TYPE=PATH_OR_ID"), metavar="TYPE=PATH_OR_ID",
                   help="the ControlNet for a control type: a diffusers folder, an original-layout .safetensors file "
                        "or a hub id (owner/name[/subfolder]); default: lllyasviel/control_v11p_sd15_canny, "
                        "..._openpose, CrucibleAI/ControlNetMediaPipeFace/diffusion_sd15")
    p.add_argument("--control-option", action="append", type=_assignment("=", "TYPE.KEY=VALUE"),
                   metavar="TYPE.KEY=VALUE", help="a preprocessor option, e.g. canny.low=50 canny.high=150")
    # A1111's per-unit settings, for every --control unit (a YAML file or a PNG sets them unit by unit)
    p.add_argument("--control-resize", choices=get_args(ControlRef.model_fields["resize_mode"].annotation),
                   metavar="MODE", help='"Resize Mode" of every unit: "Just Resize" (stretch), "Crop and Resize" '
                                        '(A1111\'s default: cover, cut the middle) or "Resize and Fill"')
    p.add_argument("--control-mode", choices=get_args(ControlRef.model_fields["control_mode"].annotation),
                   metavar="MODE", help='"Control Mode" of every unit: "Balanced" (default), "My prompt is more '
                                        'important" or "ControlNet is more important"')
    p.add_argument("--control-res", type=int, metavar="PIXELS",
                   help='"Processor Res" of every unit: the photo\'s short side when its map is made (default 512)')
    p.add_argument("--pixel-perfect", action="store_true", default=None,
                   help='"Pixel Perfect" for every unit: the map made at the resolution the picture needs')
    p.add_argument("--control-low-vram", action="store_true", default=None,
                   help='"Low VRAM" for every unit: its ControlNet waits in main memory and goes to the GPU only for '
                        "each of its calls (less GPU memory, slower; --medvram / --lowvram offload it anyway)")
    if hires:
        p.add_argument("--control-mask", action="append", type=_assignment("=", "TYPE=FILE"), metavar="TYPE=FILE",
                       help="the mask of the inpaint / inpaint_only units (white: redrawn), read at the unit "
                            "picture's size: A1111's mask painted on the unit's picture; without it they take --mask")
        p.add_argument("--control-hr-option", choices=get_args(ControlRef.model_fields["hr_option"].annotation),
                       metavar="OPTION", help='"Hires-Fix Option" of every unit, with --hires-scale: "Both" '
                                              '(default), "Low res only" (the first pass) or "High res only" (the '
                                              "redraw)")
    p.add_argument("--control-guidance-by", choices=get_args(ControlRef.model_fields["guidance_by"].annotation),
                   help='what every unit\'s guidance window counts: "steps" as A1111 (default) or "noise" level as '
                        "ComfyUI's start / end percent")


def add_ip_adapter_choices(p) -> None:
    """Options for every --ip-adapter unit (a YAML file or a PNG sets them unit by unit)."""
    p.add_argument("--ip-adapter-model", metavar="FILE", help="the IP-Adapter of every unit: a .safetensors file "
                                                              "(ip-adapter_sd15, -plus, -plus-face, -full-face) or a "
                                                              "hub file; default: h94/IP-Adapter/models/"
                                                              "ip-adapter_sd15.safetensors")
    p.add_argument("--image-encoder", metavar="PATH_OR_ID", help="the CLIP image encoder of every unit: a folder, one "
                                                                 ".safetensors file or a hub folder; default: "
                                                                 "h94/IP-Adapter/models/image_encoder")
    p.add_argument("--ip-adapter-start", type=float, metavar="FRACTION",
                   help='"Guidance Start" of every unit: the share of the steps before the picture acts')
    p.add_argument("--ip-adapter-end", type=float, metavar="FRACTION",
                   help='"Guidance End" of every unit: the share of the steps after which it stops')


def apply_ip_adapter_choices(data: dict, args) -> None:
    """--ip-adapter-model, --image-encoder, --ip-adapter-start / -end onto every --ip-adapter unit."""
    from personae.config.ip_adapter import IpAdapterRef
    from personae.errors import UserError

    every = {key: getattr(args, flag, None) for key, flag in (
        ("model", "ip_adapter_model"), ("image_encoder", "image_encoder"), ("guidance_start", "ip_adapter_start"),
        ("guidance_end", "ip_adapter_end"))}
    every = {key: value for key, value in every.items() if value is not None}
    units = [IpAdapterRef.from_cli(u) if isinstance(u, str) else dict(u) for u in data.get("ip_adapters") or []]
    if every and not units:
        flags = {"model": "--ip-adapter-model", "image_encoder": "--image-encoder",
                 "guidance_start": "--ip-adapter-start", "guidance_end": "--ip-adapter-end"}
        raise UserError(f"{', '.join(flags[key] for key in every)} set{'s' * (len(every) == 1)} the --ip-adapter "
                        "units; no --ip-adapter is given.", "Add --ip-adapter PICTURE, or leave it out.")
    if units:
        data["ip_adapters"] = [{**unit, **every} for unit in units]


def add_parser(sub) -> None:
    from personae.cli.options import add_settings_options
    from personae.config.generate import GenerateSettings
    from personae.data.control import CONTROL_TYPES
    from personae.inference.sampler_names import SAMPLER_NAMES
    from personae.jobs.recipes import RECIPES

    p = sub.add_parser("generate", help="text to image with A1111 settings",
                       description="Generate images; each PNG carries its settings in A1111's `parameters` chunk.",
                       epilog=EXAMPLES.format(samplers=", ".join(SAMPLER_NAMES), control_types=", ".join(CONTROL_TYPES),
                                              recipes=", ".join(RECIPES)),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    sections = add_settings_options(p, GenerateSettings)
    add_control_choices(sections["ControlNet"])
    add_ip_adapter_choices(sections["IP-Adapter"])
    p.add_argument("--recipe", metavar="NAME", help="start from a recipe's settings (face-to-animal: needs --init-image "
                                                    "PHOTO); other options override")
    p.add_argument("--animal", help="face-to-animal: the animal to draw (default dog)")
    p.add_argument("--from-png", metavar="FILE", help="start from the settings stored in a PNG (or an A1111 JPEG / "
                                                      "WebP: its EXIF comment); other options override")
    p.add_argument("--out", default="outputs", help="output folder (default ./outputs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--yes", action="store_true", help="do not ask before a big job (asked only at a terminal)")
    p.set_defaults(run=run)


def settings_from_args(args, base: dict | None = None, png_units: list[dict] = (), png_ip: list[dict] = ()):
    """Merge the options given over `base` (a PNG's or a recipe's settings) and validate them as GenerateSettings;
    an A1111 PNG's ControlNet units (`png_units`, without their pictures), or the units `base` holds whole (personae's
    own PNG), under the --control units given: a unit's stored settings stay unless typed; the PNG's IP-Adapter
    units (`png_ip`) under the --ip-adapter pictures the same way."""
    from personae.cli.options import missing_required, settings_values
    from personae.config.base import parse_settings
    from personae.config.generate import GenerateSettings
    from personae.errors import UserError
    from personae.jobs.png_controls import with_png_ip_units, with_png_units

    given = settings_values(args, GenerateSettings)
    data = {**(base or {}), **given}
    stored_units = list(png_units) or list((base or {}).get("controls") or [])
    if stored_units and given.get("controls"):
        data["controls"] = with_png_units(stored_units, [dict(c) for c in given["controls"]])
    if png_ip and given.get("ip_adapters"):
        data["ip_adapters"] = with_png_ip_units(list(png_ip), [dict(u) for u in given["ip_adapters"]])
    apply_control_choices(data, *control_choices(args))
    apply_ip_adapter_choices(data, args)
    flag = missing_required(GenerateSettings, data)
    if flag:
        hint = " (the PNG names only the model's name)" if flag == "--model" and base else ""
        raise UserError(f"{flag} is required{hint}.", "See `personae generate --help` for examples.")
    return parse_settings(GenerateSettings, data, "the generate options")


def control_choices(args) -> tuple[list, list, dict]:
    """The arguments of `apply_control_choices` from the options `add_control_choices` made."""
    every = {key: getattr(args, flag, None) for key, flag in (
        ("resize_mode", "control_resize"), ("control_mode", "control_mode"), ("processor_res", "control_res"),
        ("pixel_perfect", "pixel_perfect"), ("low_vram", "control_low_vram"), ("hr_option", "control_hr_option"),
        ("guidance_by", "control_guidance_by"))}
    return (getattr(args, "controlnet", None) or [], getattr(args, "control_option", None) or [],
            {key: value for key, value in every.items() if value is not None},
            getattr(args, "control_mask", None) or [])


def apply_control_choices(data: dict, models: list[tuple[str, str]], options: list[tuple[str, str]],
                          every: dict | None = None, masks: list[tuple[str, str]] = ()) -> None:
    """--controlnet TYPE=MODEL, --control-option TYPE.KEY=VALUE and --control-mask TYPE=FILE, applied to every unit
    of that type; `every` (--control-resize, --control-mode, --control-res, --pixel-perfect, --control-low-vram,
    --control-hr-option, --control-guidance-by) to every unit."""
    from personae.data.control import get_control_type
    from personae.errors import UserError

    controls = [dict(c) for c in data.get("controls", [])]
    if every and not controls:
        flags = {"resize_mode": "--control-resize", "control_mode": "--control-mode", "processor_res": "--control-res",
                 "pixel_perfect": "--pixel-perfect", "low_vram": "--control-low-vram",
                 "hr_option": "--control-hr-option",
                 "guidance_by": "--control-guidance-by"}
        raise UserError(f"{', '.join(flags[key] for key in every)} set{'s' * (len(every) == 1)} the --control units; "
                        "no --control is given.", "Add --control TYPE:IMAGE, or leave it out.")
    controls = [{**control, **(every or {})} for control in controls]
    for kind, model in models:
        get_control_type(kind)  # a typo names the valid types
        for control in controls:
            if control["type"] == kind:
                control["model"] = model
    for kind, mask in masks:
        if not get_control_type(kind).masked:
            raise UserError(f"--control-mask {kind}={mask}: a {kind} unit has no mask; the inpaint and inpaint_only "
                            "units have.", "Write it as --control-mask inpaint=MASK.")
        if not any(control["type"] == kind for control in controls):
            raise UserError(f"--control-mask {kind}={mask} is the mask of the {kind} units; no --control {kind}:... "
                            "is given.", f"Add --control {kind}:PICTURE, or leave it out.")
        for control in controls:
            if control["type"] == kind:
                control["mask"] = mask
    for key, value in options:
        kind, dot, name = key.partition(".")
        get_control_type(kind)
        if not dot or not name:
            raise UserError(f"--control-option {key}={value}: expected TYPE.KEY=VALUE, e.g. canny.low=50.")
        try:
            number = float(value)
        except ValueError:
            raise UserError(f"--control-option {key}={value}: the value must be a number.") from None
        for control in controls:
            if control["type"] == kind:
                control["options"] = {**control.get("options", {}), name: number}
    if controls:
        data["controls"] = controls


def run_recipe(args, base: dict | None, progress) -> dict:
    """The recipe's settings under the options given; its inputs are prepared at the size the images will have
    (--width / --height, else the model's own) beside them, and named."""
    from personae.events import Message
    from personae.jobs.generate import GENERATED
    from personae.jobs.recipes import recipe_settings
    from personae.models.resolve import native_size, resolve_model
    from personae.outputs import open_output

    partial = settings_from_args(args, {"prompt": "-", **(base or {})})  # the model and size asked for, checked
    native = native_size(resolve_model(partial.model, partial.allow_pickle)) or 512  # a hub model not downloaded
    size = (partial.width or partial.height or native, partial.height or partial.width or native)
    with open_output(args.out, GENERATED):  # the recipe's inputs go beside the images (never elsewhere)
        recipe = recipe_settings(args.recipe, args.init_image, args.out, size, animal=args.animal)
    for what, path in recipe.files.items():
        progress(Message(f"{args.recipe}: {what}: {path}"))
    args.init_image = None  # the recipe's face crop replaces the photo
    return {**(base or {}), **recipe.settings}


def run(args) -> int:
    from personae.cli.big_jobs import confirm_big_job, estimate_seconds
    from personae.cli.progress import TerminalProgress
    from personae.events import Message
    from personae.inference.sampler_names import check_sampler_names
    from personae.jobs.png_controls import png_control_units, png_ip_units

    stored, units, ip_units = None, [], []
    if args.from_png:
        from personae.jobs.generate import settings_from_png

        stored = settings_from_png(args.from_png)
        units = png_control_units(args.from_png)  # an A1111 PNG's ControlNet units
        ip_units = png_ip_units(args.from_png)  # and its IP-Adapter units
    base = stored
    progress = TerminalProgress(quiet=args.quiet)
    if args.recipe:
        base = run_recipe(args, base, progress)
    settings = settings_from_args(args, base, units, ip_units)
    check_sampler_names(settings.sampler, settings.hires_sampler)  # a sampler's name, as a wrong option, at once
    from personae.models.resolve import model_hash, resolve_model  # (torch: seconds)

    resolve_model(settings.model, settings.allow_pickle)  # a wrong --model, like a wrong option, is said at once:
    from personae.jobs.generate import (  # before the libraries' seconds of importing
        png_not_applied,
        png_references,
        png_upscaler,
        png_without_mask,
        run_generate,
    )

    if stored is not None:  # a model upscaler the PNG names: from --upscaler-dir, else Lanczos (and said below);
        settings = png_without_mask(png_upscaler(settings, stored), stored)  # its inpainting only with --mask
        if units:  # the ControlNets the PNG's units name are what a file makes us read (png_references)
            stored = {**stored, "controls": [u for u in units if "model" in u]}
        if ip_units:  # and the IP-Adapters its IP-Adapter units name
            stored = {**stored, "ip_adapters": [u for u in ip_units if "model" in u]}
    images = settings.batch_size * settings.batch_count
    confirm_big_job("This generation", images, estimate_seconds(
        settings.model, images, settings.steps, settings.width, settings.height, settings.cfg, settings.device,
        controls=len(settings.controls)), args.yes)
    if args.from_png:
        for line in png_references(settings, stored):  # what a file makes us read is shown
            progress(Message(f"from {args.from_png}: {line}"))
        missed = png_not_applied(args.from_png, settings, model_hash(resolve_model(settings.model, settings.allow_pickle)))
        if missed:  # what the PNG asks for and this run does not do, said once, not dropped silently
            progress(Message(f"from {args.from_png}: not applied (personae does not do these, or they need your "
                             f"files): {'; '.join(missed)}", "warning"))
    try:
        run_generate(settings, args.out, on_event=progress)
    finally:
        progress.close()
    return 0
