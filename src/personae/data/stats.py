"""What a training set holds, counted once: for the summary printed before training and for the
exports' kohya header (`ss_tag_frequency`, `ss_num_train_images`, `ss_dataset_dirs`, `ss_bucket_info`).

    stats = dataset_stats(examples, "prepared", ["sks"])
    stats.summary()           # "4 images x 1 repeat = 4 per epoch; buckets 64x64: 4; ..."
    stats.tag_frequency       # {"prepared": {"a photo of sks star": 4, "blue background": 2}}

Tags are kohya's: the comma-separated parts of each caption, stripped, counted once per image
(repeats do not multiply them, as in sd-scripts).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from personae.data.dataset import Example


@dataclass
class DatasetStats:
    name: str  # the dataset folder's name (kohya's dataset dir)
    images: int
    repeats: Counter  # repeats -> images with that many
    buckets: Counter  # (width, height) -> images
    tag_frequency: dict[str, dict[str, int]]
    triggers: list[str] = field(default_factory=list)
    with_trigger: int = 0  # captions holding any trigger word
    class_images: int = 0
    dirs: dict[str, dict[str, int]] = field(default_factory=dict)  # folder -> n_repeats, img_count (kohya's)

    @property
    def per_epoch(self) -> int:
        """Images seen per epoch (each image its repeats times): kohya's ss_num_train_images."""
        return sum(r * n for r, n in self.repeats.items())

    def summary(self) -> str:
        reps = ", ".join(f"{n} x {r}" for r, n in sorted(self.repeats.items()))
        buckets = ", ".join(f"{w}x{h}: {n}" for (w, h), n in sorted(self.buckets.items()))
        line = (f"dataset {self.name}: {self.images} images (repeats: {reps}) = {self.per_epoch} per epoch; "
                f"buckets {buckets}; ")
        if self.triggers:
            words = " / ".join(self.triggers)
            line += f"captions with {words}: {self.with_trigger}, without: {self.images - self.with_trigger}"
        else:
            line += "no trigger word set (job.trigger or tokens)"
        if self.class_images:
            line += f"; class images: {self.class_images}"
        return line

    def kohya_fields(self) -> dict[str, str]:
        """sd-scripts' dataset header fields."""
        import json

        dirs = self.dirs or {self.name: {"n_repeats": _most(self.repeats), "img_count": self.images}}
        buckets = {str(i): {"resolution": list(size), "count": n}
                   for i, (size, n) in enumerate(sorted(self.buckets.items()))}
        return {"ss_num_train_images": str(self.per_epoch), "ss_num_reg_images": str(self.class_images),
                "ss_tag_frequency": json.dumps(self.tag_frequency, ensure_ascii=False),
                "ss_dataset_dirs": json.dumps(dirs, ensure_ascii=False),
                "ss_bucket_info": json.dumps({"buckets": buckets, "mean_img_ar_error": 0.0})}


def caption_tags(caption: str) -> list[str]:
    return [t.strip() for t in caption.split(",") if t.strip()]


def has_word(caption: str, word: str) -> bool:
    """`word` in `caption` as a whole word (`sks` in "a sks dog", not in "asks"); tokens like <sks> as written."""
    return re.search(rf"(?<![\w<]){re.escape(word)}(?![\w>])", caption) is not None


def _most(repeats: Counter) -> int:
    return max(repeats, key=repeats.get) if repeats else 1


def dataset_stats(examples: list[Example], name: str, triggers: list[str], class_images: int = 0,
                  groups: list[tuple[str, list[Example]]] | None = None) -> DatasetStats:
    """`groups`: (folder name, its examples) when the set is several folders (data.subsets): kohya's header lists
    each folder's repeats, image count and tags."""
    groups = groups or [(name, examples)]
    frequency, dirs = {}, {}
    for folder, group in groups:
        while folder in dirs:  # two subsets in folders of one name
            folder += "_"
        tags: Counter = Counter()
        for ex in group:
            tags.update(dict.fromkeys(caption_tags(ex.caption), 1))  # once per image
        frequency[folder] = dict(sorted(tags.items(), key=lambda kv: (-kv[1], kv[0])))
        dirs[folder] = {"n_repeats": _most(Counter(ex.repeats for ex in group)), "img_count": len(group)}
    triggers = [t for t in dict.fromkeys(triggers) if t]
    with_trigger = sum(any(has_word(ex.caption, t) for t in triggers) for ex in examples)
    return DatasetStats(" + ".join(dirs), len(examples), Counter(ex.repeats for ex in examples),
                        Counter(ex.size for ex in examples), frequency, triggers, with_trigger, class_images,
                        dirs if len(dirs) > 1 else {})
