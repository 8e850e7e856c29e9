"""Everything the loop needs before its first step: accelerator, data, class images, optimizer, caches."""

from __future__ import annotations

import importlib.util
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch

from personae.config.methods import METHODS
from personae.config.prepare import PrepareSettings
from personae.config.train import DataSubset, TrainJob
from personae.data.caption_checks import require_token
from personae.data.captions import read_sidecar, sidecar_suffixes
from personae.data.dataset import Example, examples_from_prepared, load_pixels
from personae.data.masks import load_mask, require_masks
from personae.data.prepare import planned_captions, prepare_dataset
from personae.errors import UserError
from personae.events import EventHandler, Message, Progress
from personae.methods.base import ParamGroup
from personae.outputs import Kind, open_output, survey
from personae.staging import atomic_file


def uses_cpu(job: TrainJob) -> bool:
    return job.device == "cpu" or (job.device == "auto" and not torch.cuda.is_available())


def preflight(job: TrainJob) -> None:
    """Every check that needs no model: run before a run folder is made, so bad input leaves nothing behind."""
    from personae.models.resolve import resolve_model

    cpu = uses_cpu(job)
    if job.device == "cuda" and not torch.cuda.is_available():
        raise UserError("device: cuda was asked for, but this PyTorch sees no CUDA GPU.", "Use device: auto or cpu.")
    if cpu and job.train.mixed_precision == "fp16":
        raise UserError("train.mixed_precision: fp16 needs a GPU (PyTorch has no fp16 training kernels on the CPU).",
                        "Use mixed_precision: bf16 or no on the CPU.")
    if job.train.optimizer == "adamw8bit":
        if cpu:
            raise UserError("optimizer adamw8bit (bitsandbytes) runs only on CUDA GPUs.", "Use optimizer: adamw here.")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise UserError("optimizer adamw8bit needs bitsandbytes.", "pip install bitsandbytes")
    if job.train.optimizer == "prodigy" and importlib.util.find_spec("prodigyopt") is None:
        raise UserError("optimizer prodigy needs the prodigyopt package.",
                        "pip install prodigyopt (and set learning_rate: 1.0)")
    if job.train.optimizer == "lion" and importlib.util.find_spec("lion_pytorch") is None:
        raise UserError("optimizer lion needs the lion-pytorch package.",
                        "pip install lion-pytorch (and use a learning rate 3-10x below AdamW's)")
    captions = []
    for key, subset in data_sources(job):
        data = Path(subset.path).expanduser()
        if not data.exists():
            raise UserError(f"{key} {subset.path} does not exist.",
                            "Point it at a `personae prepare` output or an image folder.")
        if (data / "manifest.jsonl").is_file():
            examples = examples_from_prepared(data)
            captions += [e.caption for e in examples]
            if job.data.masked_loss == "on":
                require_masks([e.image for e in examples], data)
        elif data.is_dir():  # the captions a raw folder will be given (load_examples checks the prepared ones again)
            captions += planned_captions(data, raw_folder_settings(job, subset))
    check_tokens(job, captions, Path(job.data.path or job.data.subsets[0].path))
    if job.vae and not Path(job.vae).expanduser().exists():
        raise UserError(f"vae {job.vae} was not found: no such file or folder.",
                        "Pass a diffusers AutoencoderKL folder or a single-file SD-1.x VAE .safetensors.")
    if job.lora.init_from:  # the LoRA to go on from: what the file alone tells (methods.lora_init)
        from personae.methods.lora_init import check_init_file

        check_init_file(job.lora, job.allow_pickle)
    resolve_model(job.base_model, allow_pickle=job.allow_pickle)


def swap_vae(pipe, job: TrainJob, on_event: EventHandler):
    """job.vae in place of the base model's VAE (kohya --vae), checked against the UNet; returns its LoadedVae."""
    from personae.models.vae import load_vae

    loaded = load_vae(job.vae, pipe.vae.dtype, job.allow_pickle)
    channels = loaded.vae.config.latent_channels
    if channels != pipe.unet.config.in_channels:
        raise UserError(f"vae {job.vae} makes latents of {channels} channels, and the base model's UNet takes "
                        f"{pipe.unet.config.in_channels}: it is a VAE for another kind of model.",
                        "Pass a VAE made for Stable Diffusion 1.x (4 latent channels), or remove vae.")
    loaded.vae.requires_grad_(False)
    pipe.vae = loaded.vae.to(pipe.device)
    on_event(Message(f"the VAE {loaded.name} encodes the training images and decodes the validation images"))
    return loaded


def check_tokens(job: TrainJob, captions: list[str], where: Path) -> None:
    """Every token the method learns must appear in some caption, or it learns nothing (a UserError)."""
    section = METHODS[job.method].tokens_section
    if section is None:
        return
    for spec in getattr(job, section).tokens:
        require_token(spec.token, captions, str(where), f"{section}.tokens")


def data_sources(job: TrainJob) -> list[tuple[str, DataSubset]]:
    """(the setting's name for messages, the subset) of every folder the job trains on."""
    if not job.data.subsets:
        return [("data.path", job.data.sources()[0])]
    return [(f"data.subsets[{i}].path", s) for i, s in enumerate(job.data.sources())]


def raw_folder_settings(job: TrainJob, subset: DataSubset | None = None) -> PrepareSettings:
    """How a raw image folder in data.path (or a subset's) is prepared for this job."""
    caption = job.data.caption if subset is None else subset.caption
    literal = caption.replace("{", "{{").replace("}", "}}")  # the user's text, not placeholders
    small = min(64, job.train.resolution)  # a model trained below 64 px (the world model) takes its own size
    common = {"crop": job.data.crop, "resolution": job.train.resolution, "min_side": small, "bucket_step": small,
              "caption_extension": job.data.caption_extension}
    if job.data.sidecars == "verbatim":  # kohya: a .txt as written, else the subset's or the folder's class tokens
        return PrepareSettings(**common, sidecars="verbatim", template=literal or "{folder}", captioner="none",
                               keep_underscores=True)
    template = f"{literal}, {{caption}}" if literal else PrepareSettings().template
    return PrepareSettings(**common, template=template)


def make_accelerator(job: TrainJob):
    """accelerate keeps one state per process (precision, device, the process group): the first run in a process
    sets it and a later one must agree. Jobs that differ run in processes of their own (jobs.runner.start)."""
    from accelerate import Accelerator

    try:
        return Accelerator(mixed_precision=job.train.mixed_precision, cpu=uses_cpu(job),
                           gradient_accumulation_steps=job.train.gradient_accumulation)
    except ValueError as exc:
        if "already been initialized" not in str(exc):
            raise
        raise UserError(f"train.mixed_precision: {job.train.mixed_precision} differs from an earlier training run "
                        "in this process, and accelerate keeps one precision per process.",
                        "Run each job in its own process: `personae train`, or jobs.runner.start(job) "
                        "(isolated, the default).") from None


def load_example_groups(job: TrainJob, run: Path, on_event: EventHandler) -> list[tuple[str, list[Example]]]:
    """(folder name, examples) per data source: a prepared set as is; a raw folder is prepared now into
    <run>/prepared (a subset's into <run>/prepared/N); a subset's repeats replace its images' own."""
    groups = []
    for i, (key, subset) in enumerate(data_sources(job)):
        path = Path(subset.path).expanduser()
        if (path / "manifest.jsonl").is_file():
            examples = examples_from_prepared(path, on_event)
        elif path.is_dir():
            where = run / "prepared" / str(i + 1) if job.data.subsets else run / "prepared"
            on_event(Message(f"{path} is not a prepared set: preparing it into {where}"))
            prepare_dataset(path, where, raw_folder_settings(job, subset), on_event)
            examples = examples_from_prepared(where)
        else:
            raise UserError(f"{key} {path} does not exist.", "Point it at a `personae prepare` output or an image "
                                                               "folder.")
        if not examples:
            raise UserError(f"{key} {path} holds no usable images.", "See its report.md for why images were rejected.")
        if subset.repeats:
            examples = [replace(e, repeats=subset.repeats) for e in examples]
        if job.method == "dreambooth" and job.dreambooth.instance_prompt:  # one caption for every training image
            examples = [replace(e, caption=job.dreambooth.instance_prompt, keep_tokens=0) for e in examples]
        groups.append((path.name, examples))
    return groups


def load_examples(job: TrainJob, run: Path, on_event: EventHandler, groups=None) -> list[Example]:
    """Every training example, checked: the tokens the method learns are in the captions, masks where asked."""
    if groups is None:
        groups = load_example_groups(job, run, on_event)
    examples = [e for _, group in groups for e in group]
    path = Path(job.data.path or job.data.subsets[0].path)
    check_tokens(job, [e.caption for e in examples], path)  # the captions as prepared (preflight predicted them)
    if job.data.masked_loss == "on":
        require_masks([e.image for e in examples], path)
    if job.trigger and not any(job.trigger in e.caption for e in examples):  # exports would name a word never taught
        on_event(Message(f'trigger "{job.trigger}" appears in none of the {len(examples)} training captions (e.g. '
                         f'"{examples[0].caption[:80]}"): prompts with it will not call up what this run learns. Put '
                         "it in the captions (personae prepare --trigger, or personae captions DIR --prepend).",
                         "warning"))
    return examples


def uses_masks(job: TrainJob, examples: list[Example], on_event: EventHandler) -> bool:
    """data.masked_loss: on, off, or auto (on exactly when every training image has its mask), said in the log."""
    if job.data.masked_loss != "auto":
        return job.data.masked_loss == "on"
    masked = sum(e.mask is not None for e in examples)
    if masked == len(examples):
        on_event(Message(f"masked loss on: each of the {masked} training images has a mask (the loss reads only its "
                         "white part; data.masked_loss: off trains on whole images)"))
    elif masked:
        unmasked = next(e.image for e in examples if e.mask is None)
        on_event(Message(f"masked loss off: {len(examples) - masked} of {len(examples)} training images have no mask "
                         f"(e.g. {unmasked}), and data.masked_loss: auto masks only a set whose every image has one. "
                         "Add the missing masks (NAME.mask.png beside the source, then personae prepare again) to "
                         "train on the subjects alone, or set data.masked_loss: off to silence this.", "warning"))
    return masked == len(examples)


# class images personae generates into a class_data_dir it made (a new or empty folder, then marked as its own)
CLASS_IMAGES = Kind("class-images", "class images", "personae train (prior preservation)", layout=("class_*.png",))
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def class_examples(pipe, source, job: TrainJob, run: Path, size: tuple[int, int], on_event: EventHandler) -> list[Example]:
    """Prior preservation: class images from the untouched base model, cached and reused.

    A `class_data_dir` may also hold regularization images made elsewhere (kohya's reg folder):
    any PNG / JPEG / WebP there is used, captioned by its .txt sidecar or else by `class_prompt`.
    Generated images go into class_data_dir only when personae made that folder (it was new or
    empty); a folder of the user's is only read, and the images it lacks are generated into the
    run's own class_images/.
    """
    c = job.dreambooth
    folder = Path(c.class_data_dir).expanduser() if c.class_data_dir else run / "class_images"
    ours = not c.class_data_dir or survey(folder, CLASS_IMAGES).state in ("new", "empty", "ours")
    if c.class_data_dir and not ours and not folder.is_dir():
        raise UserError(f"dreambooth.class_data_dir {folder} is not a folder.",
                        "Point it at a folder of class images, or at a new folder for generated ones.")
    extra = run / "class_images"  # where the images a user's folder lacks are generated

    def found(where: Path) -> list[Path]:
        if not where.is_dir():
            return []
        return sorted(p for p in where.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())

    have = found(folder) + ([] if ours else found(extra))
    missing = c.num_class_images - len(have)
    if missing > 0 and c.class_prompt:
        target = folder if ours else extra
        if not ours:
            on_event(Message(f"class_data_dir {folder} holds {len(found(folder))} images, fewer than num_class_images "
                             f"({c.num_class_images}); personae does not write into a folder it did not make, so the "
                             f"other {missing} are generated into {extra}"))
        with open_output(target, CLASS_IMAGES) if c.class_data_dir and ours else nullcontext():
            _generate_class_images(pipe, source, job, target, len(found(target)), missing, size, on_event)
        have = found(folder) + ([] if ours else found(extra))
    images = have[: c.num_class_images]
    if not images:
        raise UserError(f"Prior preservation has no class images: {folder} holds none and no class_prompt is set.",
                        "Set dreambooth.class_prompt (images are generated) or put captioned images in class_data_dir.")

    def caption_of(path: Path) -> str:  # its caption file (data.caption_extension), else class_prompt
        return read_sidecar(path, sidecar_suffixes(job.data.caption_extension)) or c.class_prompt

    return [Example(p, caption_of(p), size) for p in images]


def _generate_class_images(pipe, source, job: TrainJob, folder: Path, start: int, count: int, size: tuple[int, int],
                           on_event: EventHandler) -> None:
    """`count` images of class_prompt by the untouched model, seeds start.., as class_NNNNN.png in `folder`."""
    from personae.config.generate import GenerateSettings
    from personae.inference.session import Session
    from personae.inference.txt2img import txt2img

    c = job.dreambooth
    on_event(Message(f"generating {count} class images for prior preservation ({c.class_prompt!r})"))
    folder.mkdir(parents=True, exist_ok=True)
    session = Session(pipe, source, pipe.device, pipe.unet.dtype)
    for n, i in enumerate(range(start, start + count)):
        on_event(Progress("class images", n, count))
        settings = GenerateSettings(model=source.location, prompt=c.class_prompt, steps=c.class_steps, seed=i,
                                    width=size[0], height=size[1], sampler="DDIM")
        image = txt2img(settings, session)[0].image
        target = folder / f"class_{i:05d}.png"
        k = 1
        while target.exists() or target.is_symlink():  # never replace a file
            target, k = folder / f"class_{i:05d}_{k}.png", k + 1
        with atomic_file(target) as tmp:
            image.save(tmp, format="PNG")
    on_event(Progress("class images", count, count))


def make_optimizer(job: TrainJob, groups: list[ParamGroup]):
    """The optimizer `preflight` checked can be had here."""
    t = job.train
    params = [{"params": g.params, "lr": g.lr,
               "weight_decay": t.weight_decay if g.weight_decay is None else g.weight_decay} for g in groups]
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay)
    if t.optimizer == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=t.learning_rate, weight_decay=t.weight_decay)
    if t.optimizer == "adafactor":  # kohya's Adafactor with a learning rate: transformers' own, its schedule off
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=t.learning_rate, weight_decay=t.weight_decay, scale_parameter=False,
                         relative_step=False, warmup_init=False)
    if t.optimizer == "lion":
        from lion_pytorch import Lion

        return Lion(params, lr=t.learning_rate, weight_decay=t.weight_decay)
    from prodigyopt import Prodigy

    return Prodigy(params, lr=t.learning_rate, weight_decay=t.weight_decay)


class LatentCache:
    """VAE posterior parameters (mean and log-variance) per image and flip, computed once.

    Latents are sampled from them each step with the step's generator, so caching
    changes speed, not results. mode: memory, disk (<run>/cache/latents.safetensors) or none.
    `half` (mixed precision, unless train.no_half_vae): the VAE encodes under autocast in that type, as kohya's
    VAE in the weight dtype does; an image whose half encoding overflows (fp16) is encoded again in fp32.
    """

    def __init__(self, vae, examples: list[Example], flip: bool, mode: str, cache_file: Path | None, vae_name: str = "",
                 half: torch.dtype | None = None):
        self.vae, self.examples, self.mode, self.vae_name, self.half = vae, examples, mode, vae_name, half
        self.store: dict[str, torch.Tensor] = {}
        self.flips = (False, True) if flip else (False,)
        if mode == "disk" and cache_file and cache_file.is_file():
            from safetensors.torch import load_file

            self.store = load_file(str(cache_file))
        if mode != "none":
            for i in range(len(examples)):
                for f in self.flips:
                    self.get(i, f)
            if mode == "disk" and cache_file:
                from safetensors.torch import save_file

                with atomic_file(cache_file) as tmp:
                    save_file(self.store, str(tmp))

    def _key(self, i: int, flip: bool) -> str:
        """Names the image by path, size and modification time, so a re-prepared set is not served stale latents;
        and the job's own VAE when it has one (a resumed run given another VAE encodes again)."""
        path = self.examples[i].image
        stat = path.stat()
        key = f"{path.name}|{stat.st_size}|{stat.st_mtime_ns}|{int(flip)}|{i}"
        key += f"|{str(self.half).removeprefix('torch.')}" if self.half else ""  # encoded in half: not fp32's
        return f"{key}|vae={self.vae_name}" if self.vae_name else key

    @torch.no_grad()
    def _encode(self, i: int, flip: bool) -> torch.Tensor:
        pixels = torch.from_numpy(load_pixels(self.examples[i].image, flip))[None]
        pixels = pixels.to(self.vae.device, self.vae.dtype)
        with torch.autocast(self.vae.device.type, self.half or torch.bfloat16, enabled=self.half is not None):
            encoded = self.vae.encode(pixels).latent_dist.parameters[0].float()
        if not torch.isfinite(encoded).all() and self.half is not None:  # fp16's range overflowed: fp32 instead
            encoded = self.vae.encode(pixels).latent_dist.parameters[0].float()
        return encoded.cpu()

    def get(self, i: int, flip: bool) -> torch.Tensor:
        key = self._key(i, flip)
        if self.mode == "none":
            return self._encode(i, flip)
        if key not in self.store:
            self.store[key] = self._encode(i, flip)
        return self.store[key]


class MaskCache:
    """Each example's loss mask at the latents' size (area-averaged, as kohya's masked_loss takes it), per flip."""

    def __init__(self, examples: list[Example]):
        self.examples, self.store = examples, {}

    def get(self, i: int, flip: bool, size: tuple[int, int]) -> torch.Tensor:
        key = (i, flip, size)
        if key not in self.store:
            mask = torch.from_numpy(load_mask(self.examples[i].mask, flip))[None, None]
            self.store[key] = torch.nn.functional.interpolate(mask, size=size, mode="area")[0]
        return self.store[key]
