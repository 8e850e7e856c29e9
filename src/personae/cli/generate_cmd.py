"""`personae generate`: txt2img with A1111's settings; every PNG carries them."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """examples:
  personae generate --model ./tiny --prompt "a photo of a cat" --steps 4 --seed 7 --out out/
  personae generate --model stable-diffusion-v1-5/stable-diffusion-v1-5 --prompt "a (red:1.3) fox, [blurry]" \\
      --negative "lowres" --sampler "DPM++ 2M Karras" --clip-skip 2 --batch-size 4 --out out/
  personae generate --model ./majicmix.safetensors --lora me.safetensors:0.8 \\
      --embedding easynegative.safetensors --prompt "photo of sks man" --out out/
  personae generate --from-png out/00000-7.png --seed 8 --out out/
  personae generate --model ./tiny --prompt "a watercolor" --init-image photo.png --strength 0.6 --out out/
  personae generate --model ./tiny --prompt "a red hat" --init-image photo.png --mask hat_mask.png --out out/
  personae generate --model stable-diffusion-v1-5/stable-diffusion-v1-5 --prompt "a dancer on a stage" \\
      --control pose:me.jpg --control canny:me.jpg:0.5 --control-option canny.low=50 --control-end 0.8 --out out/
  personae generate --model ./tiny --prompt "a cat" --control face:me.jpg --controlnet face=./tiny-controlnet --out out/
  personae generate --model stable-diffusion-v1-5/stable-diffusion-v1-5 --recipe face-to-animal --init-image me.jpg \\
      --animal dog --seed 1 --out out/

samplers: {samplers}
control types: {control_types}
recipes: {recipes}
"""


def _lora(text: str) -> dict:
    path, _, weight = text.rpartition(":")
    if path and not Path(text).is_file():
        try:
            return {"path": path, "weight": float(weight)}
        except ValueError:
            pass
    return {"path": text, "weight": 1.0}


def _embedding(text: str) -> dict:
    path, _, token = text.rpartition(":")
    if path and not Path(text).is_file() and token:
        return {"path": path, "token": token}
    return {"path": text, "token": None}


def _control(text: str) -> dict:
    kind, sep, rest = text.partition(":")
    if not sep or not kind or not rest:
        raise argparse.ArgumentTypeError(f"expected TYPE:IMAGE[:WEIGHT], e.g. canny:photo.png:0.8, got {text!r}")
    image, _, weight = rest.rpartition(":")
    if image and not Path(rest).is_file():
        try:
            return {"type": kind, "image": image, "weight": float(weight)}
        except ValueError:
            pass
    return {"type": kind, "image": rest, "weight": 1.0}


def _assignment(sep: str, meaning: str):
    def parse(text: str) -> tuple[str, str]:
        key, found, value = text.partition(sep)
        if not found or not key or not value:
            raise argparse.ArgumentTypeError(f"expected {meaning}, got {text!r}")
        return key.strip(), value.strip()
    return parse


def add_control_options(p: argparse.ArgumentParser) -> None:
    """ControlNet options (A1111's ControlNet units)."""
    p.add_argument("--control", action="append", type=_control, metavar="TYPE:IMAGE[:WEIGHT]",
                   help="a ControlNet unit: control type (canny, face, pose, raw), the image, weight (default 1); "
                        "repeat for multi-ControlNet")
    p.add_argument("--controlnet", action="append", type=_assignment("=", "TYPE=PATH_OR_ID"), metavar="TYPE=PATH_OR_ID",
                   help="the ControlNet for a control type: a diffusers folder, an original-layout .safetensors file "
                        "or a hub id (owner/name[/subfolder]); default: lllyasviel/control_v11p_sd15_canny, "
                        "..._openpose, CrucibleAI/ControlNetMediaPipeFace/diffusion_sd15")
    p.add_argument("--control-option", action="append", type=_assignment("=", "TYPE.KEY=VALUE"),
                   metavar="TYPE.KEY=VALUE", help="a preprocessor option, e.g. canny.low=50 canny.high=150")
    p.add_argument("--control-start", type=float, help='fraction of the steps before control acts ("Guidance Start", default 0)')
    p.add_argument("--control-end", type=float, help='fraction of the steps after which control stops ("Guidance End", default 1)')


def add_generate_options(p: argparse.ArgumentParser) -> None:
    """The options every generating command shares (generate, animate, compare overrides)."""
    p.add_argument("--model", help="diffusers folder, single-file .safetensors checkpoint, or hub id")
    p.add_argument("--prompt", help='prompt; A1111 syntax: (word:1.3), (word), [word], BREAK; any length')
    p.add_argument("--negative", help="negative prompt")
    p.add_argument("--steps", type=int, help="sampling steps (default 20)")
    p.add_argument("--cfg", type=float, help="CFG scale (default 7)")
    p.add_argument("--seed", type=int, help="seed; -1 for random (default)")
    p.add_argument("--width", type=int, help="width in pixels, multiple of 8 (default: the model's native size)")
    p.add_argument("--height", type=int, help="height in pixels, multiple of 8 (default: the model's native size)")
    p.add_argument("--sampler", help='A1111 sampler name (default "DPM++ 2M Karras"); see the list below')
    p.add_argument("--clip-skip", type=int, help="1 = last CLIP layer (default), 2 = the one before (anime models)")
    p.add_argument("--lora", action="append", type=_lora, metavar="FILE[:WEIGHT]", help="a LoRA file (repeatable)")
    p.add_argument("--embedding", action="append", type=_embedding, metavar="FILE[:TOKEN]",
                   help="a textual-inversion embedding (repeatable); token defaults to the file's")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="default auto")
    p.add_argument("--dtype", choices=["auto", "fp32", "fp16", "bf16"], help="default auto (fp16 on GPU, fp32 on CPU)")
    p.add_argument("--allow-pickle", action="store_true", default=None,
                   help="allow .ckpt/.pt/.bin files (they can run code when loaded)")


def add_parser(sub) -> None:
    from personae.data.control import CONTROL_TYPES
    from personae.inference.samplers import SAMPLERS
    from personae.jobs.recipes import RECIPES

    p = sub.add_parser("generate", help="text to image with A1111 settings",
                       description="Generate images; each PNG carries its settings in A1111's `parameters` chunk.",
                       epilog=EXAMPLES.format(samplers=", ".join(SAMPLERS), control_types=", ".join(CONTROL_TYPES),
                                              recipes=", ".join(RECIPES)),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_generate_options(p)
    p.add_argument("--batch-size", type=int, help="images per pass (default 1)")
    p.add_argument("--batch-count", type=int, help="number of passes (default 1)")
    p.add_argument("--init-image", metavar="IMG", help="img2img: start from this image")
    p.add_argument("--strength", type=float, help="denoising strength for --init-image: 0 keeps it, 1 redraws (default 0.75)")
    p.add_argument("--mask", metavar="MASK", help="inpaint: redraw only the white part of this mask (needs --init-image)")
    p.add_argument("--mask-blur", type=int, help="feather the mask edge by N pixels (default 4)")
    add_control_options(p)
    p.add_argument("--recipe", metavar="NAME", help="start from a recipe's settings (face-to-animal: needs --init-image "
                                                    "PHOTO); other options override")
    p.add_argument("--animal", help="face-to-animal: the animal to draw (default dog)")
    p.add_argument("--from-png", metavar="FILE", help="start from the settings stored in a PNG; other options override")
    p.add_argument("--out", default="outputs", help="output folder (default ./outputs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--yes", action="store_true", help="do not ask before a big job (asked only at a terminal)")
    p.set_defaults(run=run)


_FIELDS = {"model": "model", "prompt": "prompt", "negative": "negative", "steps": "steps", "cfg": "cfg",
           "seed": "seed", "width": "width", "height": "height", "sampler": "sampler", "clip_skip": "clip_skip",
           "batch_size": "batch_size", "batch_count": "batch_count", "lora": "loras", "embedding": "embeddings",
           "device": "device", "dtype": "dtype", "allow_pickle": "allow_pickle", "init_image": "init_image",
           "strength": "strength", "mask": "mask", "mask_blur": "mask_blur", "control": "controls",
           "control_start": "control_start", "control_end": "control_end"}


def settings_from_args(args, base: dict | None = None):
    """Merge explicitly given options over `base` and validate them as GenerateSettings."""
    from personae.config.base import parse_settings
    from personae.config.generate import GenerateSettings
    from personae.errors import UserError

    data = dict(base or {})
    for arg, field in _FIELDS.items():
        value = getattr(args, arg, None)
        if value is not None:
            data[field] = value
    apply_control_choices(data, getattr(args, "controlnet", None) or [], getattr(args, "control_option", None) or [])
    for needed in ("model", "prompt"):
        if not data.get(needed):
            hint = " (the PNG names only the model's name)" if needed == "model" and base else ""
            raise UserError(f"--{needed} is required{hint}.", "See `personae generate --help` for examples.")
    return parse_settings(GenerateSettings, data, "the generate options")


def apply_control_choices(data: dict, models: list[tuple[str, str]], options: list[tuple[str, str]]) -> None:
    """--controlnet TYPE=MODEL and --control-option TYPE.KEY=VALUE, applied to every unit of that type."""
    from personae.data.control import get_control_type
    from personae.errors import UserError

    controls = [dict(c) for c in data.get("controls", [])]
    for kind, model in models:
        get_control_type(kind)  # a typo names the valid types
        for control in controls:
            if control["type"] == kind:
                control["model"] = model
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


def run(args) -> int:
    from personae.cli.big_jobs import confirm_big_job, estimate_seconds
    from personae.cli.progress import TerminalProgress
    from personae.events import Message
    from personae.jobs.generate import png_references, run_generate, settings_from_png

    stored = settings_from_png(args.from_png) if args.from_png else None
    base = stored
    if args.recipe:
        from personae.jobs.generate import GENERATED
        from personae.jobs.recipes import recipe_settings
        from personae.outputs import open_output

        with open_output(args.out, GENERATED):  # the recipe's inputs go beside the images (never elsewhere)
            base = {**(base or {}), **recipe_settings(args.recipe, args.init_image, args.out, animal=args.animal)}
        args.init_image = None  # the recipe's face crop replaces the photo
    settings = settings_from_args(args, base)
    images = settings.batch_size * settings.batch_count
    confirm_big_job("This generation", images, estimate_seconds(
        settings.model, images, settings.steps, settings.width, settings.height, settings.cfg, settings.device), args.yes)
    progress = TerminalProgress(quiet=args.quiet)
    if args.from_png:
        for line in png_references(settings, stored):  # what a file makes us read is shown
            progress(Message(f"from {args.from_png}: {line}"))
    try:
        run_generate(settings, args.out, on_event=progress)
    finally:
        progress.close()
    return 0
