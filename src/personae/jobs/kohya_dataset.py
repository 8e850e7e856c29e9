"""kohya's training folders read as a job's data: `train_data_dir` and `reg_data_dir` (10_sks man folders) and the
`dataset_config` TOML ([general], [[datasets]], [[datasets.subsets]]), as sd-scripts' config_util reads them.

A subset's setting falls back to its dataset's, then [general]'s, then the training config's, then kohya's default.
Settings personae keeps for the whole set (shuffle_caption, keep_tokens, flip_aug, the caption dropouts) must agree
across the training subsets; subsets that differ, several datasets of different sizes, and the options personae
cannot train as asked stop the load, named. Captions are read as kohya reads them: a .txt as written, else the
subset's class_tokens (a 10_sks man folder's "sks man").
"""

from __future__ import annotations

from pathlib import Path

from personae.data.captions import kohya_folder
from personae.errors import UserError

# kohya defaults of the settings a subset may carry, and the job-wide setting each becomes
SUBSET_DATA = {"shuffle_caption": ("shuffle_tags", False), "keep_tokens": ("keep_tokens", 0),
               "flip_aug": ("flip", False), "caption_dropout_rate": ("caption_dropout", 0.0),
               "caption_dropout_every_n_epochs": ("caption_dropout_every_n_epochs", 0),
               "caption_tag_dropout_rate": ("caption_tag_dropout", 0.0)}
SUBSET_REFUSED = {"color_aug": "not available", "random_crop": "not available",
                  "face_crop_aug_range": "not available", "token_warmup_step": "not available",
                  "metadata_file": "fine-tuning metadata is not read; give image_dir with .txt captions",
                  "conditioning_data_dir": "ControlNet training is not available",
                  "caption_prefix": "put the text in the captions", "caption_suffix": "put the text in the captions",
                  "keep_tokens_separator": "use keep_tokens", "secondary_separator": "not available",
                  "enable_wildcard": "not available"}
SUBSET_READ = {"image_dir", "num_repeats", "class_tokens", "is_reg", "caption_extension", "cache_info",
               "token_warmup_min", *SUBSET_DATA, *SUBSET_REFUSED}
DATASET_READ = {"resolution", "batch_size", "enable_bucket", "bucket_reso_steps", "min_bucket_reso", "max_bucket_reso",
                "bucket_no_upscale", "network_multiplier", "subsets"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")  # kohya's glob_images, the formats personae reads


def caption_extension(value) -> str | None:
    """kohya's caption_extension as data.caption_extension (".txt" or ".caption"), None for another."""
    extension = "." + str(value).strip().lstrip(".").lower()
    return extension if extension in (".txt", ".caption") else None


def _path(value: str, base: Path) -> Path:
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _images(folder: Path) -> list[Path]:
    """The images directly in `folder` (kohya does not look into subfolders of an image_dir)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def reg_images(folder: str, base: Path, class_tokens: str, key: str) -> dict:
    """The dreambooth section for a folder of regularization images (as written; read relative to `base`): each
    image once, captioned by its .txt or class_tokens; none generated."""
    where = _path(folder, base)
    images = _images(where) if where.is_dir() else []
    if not images:
        raise UserError(f"{key} {where} holds no images.",
                        "Point it at the folder of regularization images, or remove it to train without them.")
    db = {"prior_preservation": True, "class_data_dir": folder, "num_class_images": len(images)}
    if class_tokens:
        db["class_prompt"] = class_tokens
    return db


def reg_data_dir(value: str, base: Path) -> dict:
    """kohya's reg_data_dir: one `N_class` folder of regularization images inside it."""
    root = _path(value, base)
    folders = [d for d in sorted(root.iterdir()) if d.is_dir() and kohya_folder(d.name)] if root.is_dir() else []
    if len(folders) != 1:
        found = f"{len(folders)} such folders ({', '.join(d.name for d in folders[:4])})" if folders else "none"
        raise UserError(f"reg_data_dir {root}: personae reads the regularization images of one `N_class` folder "
                        f"inside it (kohya's layout, e.g. 1_man), and found {found}.",
                        "Keep one class folder there, or point a dataset_config subset with is_reg = true at it.")
    return reg_images(str(Path(value) / folders[0].name), base, kohya_folder(folders[0].name)[1], "reg_data_dir")


def read_dataset_config(value: str, base: Path, c: dict) -> tuple[dict, dict, dict, list[str], list[str]]:
    """(data, train, dreambooth sections, refused, notes) from the dataset_config file `value`; `c`: the training
    config's keys (the fallback before kohya's defaults)."""
    path = _path(value, base)
    if not path.is_file():
        raise UserError(f"dataset_config {path} does not exist or is not a file.", "Check the path.")
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"dataset_config {path} could not be read as TOML: {exc}.",
                        "Pass the dataset config sd-scripts reads (--dataset_config).") from None
    general, datasets = raw.get("general", {}), raw.get("datasets", [])
    if not isinstance(general, dict) or not isinstance(datasets, list) or not datasets \
            or not all(isinstance(d, dict) for d in datasets):
        raise UserError(f"dataset_config {path} has no [[datasets]] with [[datasets.subsets]].",
                        "Pass the dataset config sd-scripts reads (--dataset_config).")
    refused, notes = [], []
    unknown = sorted(set(raw) - {"general", "datasets"}) + sorted(set(general) - DATASET_READ - SUBSET_READ)

    def pick(key, *levels, default=None):
        for level in (*levels, general, c):
            if level.get(key) is not None:
                return level[key]
        return default

    train_subsets, reg, sizes, extensions = [], [], set(), set()
    for dataset in datasets:
        unknown += sorted(set(dataset) - DATASET_READ - SUBSET_READ)
        size = str(pick("resolution", dataset, default=512))
        sizes.add((size, int(pick("batch_size", dataset, default=c.get("train_batch_size", 1))),
                   bool(pick("enable_bucket", dataset, default=False))))
        if float(pick("network_multiplier", dataset, default=1.0)) != 1.0:
            refused.append("network_multiplier (a dataset trained at another LoRA strength is not available)")
        for subset in dataset.get("subsets", []):
            unknown += sorted(f"subsets {k}" for k in set(subset) - SUBSET_READ)
            for key, why in SUBSET_REFUSED.items():
                if pick(key, subset, dataset):
                    refused.append(f"{key} = {pick(key, subset, dataset)!r} ({why})")
            extension = pick("caption_extension", subset, dataset, default=".caption")
            if caption_extension(extension) is None:
                refused.append(f"caption_extension = {extension!r} (personae reads .txt or .caption caption files)")
            extensions.add(caption_extension(extension) or extension)
            if "image_dir" not in subset:
                raise UserError(f"dataset_config {path}: a subset has no image_dir.", "Give each subset its folder.")
            folder = str(subset["image_dir"])  # as written: read relative to the config, as the job's paths are
            tokens = str(pick("class_tokens", subset, dataset, default="") or "")
            if pick("is_reg", subset, default=False):
                reg.append((folder, tokens, int(pick("num_repeats", subset, dataset, default=1))))
                continue
            entry = {"path": folder, "repeats": int(pick("num_repeats", subset, dataset, default=1))}
            if tokens:
                entry["caption"] = tokens
            shared = {field: pick(key, subset, dataset, default=default)
                      for key, (field, default) in SUBSET_DATA.items()}
            train_subsets.append((entry, shared))
    if unknown:
        refused += [f"{k} (not a dataset_config setting personae knows)" for k in unknown]
    if not train_subsets:
        raise UserError(f"dataset_config {path} names no training subset (every one is is_reg, or none is given).",
                        "Give a [[datasets.subsets]] with the training images' image_dir.")
    if len(sizes) > 1:
        refused.append("datasets of different resolution / batch_size / enable_bucket "
                       f"({'; '.join(f'{s[0]} px, batch {s[1]}, buckets {s[2]}' for s in sorted(sizes))}): personae "
                       "trains one set at one size; put the subsets in one dataset")
    data, train, db = {"subsets": [e for e, _ in train_subsets], "sidecars": "verbatim"}, {}, {}
    for key, (field, _) in SUBSET_DATA.items():
        values = {repr(shared[field]) for _, shared in train_subsets}
        if len(values) > 1:
            refused.append(f"{key} differs between subsets ({', '.join(sorted(values))}): personae sets it for the "
                           "whole set")
        data[field] = train_subsets[0][1][field]
    if len(extensions) > 1:
        refused.append(f"caption_extension differs between subsets ({', '.join(sorted(map(str, extensions)))}): "
                       "personae reads one kind of caption file for the whole set")
    data["caption_extension"] = sorted(map(str, extensions))[0]
    size, batch, bucket = sorted(sizes)[0]
    sides = [int(v) for v in size.strip("()[] ").split(",") if v.strip()]
    if len(set(sides)) != 1:
        refused.append(f"resolution = {size} (a square size: personae buckets each image's own shape)")
    train.update(resolution=sides[0], batch_size=batch)
    data["crop"] = "none" if bucket else "center"
    if len(reg) > 1:
        refused.append(f"{len(reg)} subsets with is_reg = true (personae reads one folder of regularization images)")
    elif reg:
        folder, tokens, repeats = reg[0]
        db = reg_images(folder, base, tokens, "dataset_config's is_reg subset image_dir")
        if repeats != 1:
            notes.append(f"num_repeats = {repeats} of the is_reg subset (each regularization image is drawn as "
                         "often as the training images are, one class batch per step)")
    return data, train, db, refused, notes
