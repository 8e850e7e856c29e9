"""A1111's `<lora:name:weight>` prompt tags: the tag read and taken out of the prompt, the file found by name.

    prompt, tags = lora_tags("a cat <lora:watercolor:0.8>")     # "a cat", [LoraTag("watercolor", 0.8)]
    path = find_lora("watercolor", "~/stable-diffusion-webui")  # .../models/Lora/watercolor.safetensors

As in A1111 (extra_networks_lora.py): `<lora:name>` is weight 1; `<lyco:...>` is the same tag (LyCORIS files load
as LoRAs here); `<lora:name:te:unet>` gives the text encoder's and the UNet's weights apart (the UNet's is the text
encoder's when left out), also written `te=0.8` / `unet=0.5`; `dyn=` (DyLoRA's rank cut) is refused. A name is a file stem anywhere under the folder (subfolders included) or its path without the
extension (`styles/watercolor`); a folder given as an A1111 webui folder is searched in `models/Lora` and
`models/LyCORIS`. The file's content is checked when it loads (models/addons.py), like any `--lora FILE`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from personae.errors import UserError, did_you_mean
from personae.models.named_files import files_by_name, search_roots

LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt", ".bin")
_TAG = re.compile(r"<(lora|lyco):([^:>]+)((?::[^:>]*)*)>", re.IGNORECASE)


@dataclass(frozen=True)
class LoraTag:
    name: str
    weight: float  # the text encoder's, and the UNet's unless unet_weight is given
    text: str  # the tag as written, for messages
    unet_weight: float | None = None


def _weights(args: list[str], text: str) -> tuple[float, float | None]:
    """(text encoder's weight, UNet's or None) of a tag's arguments after the name, as A1111 reads them: the first
    two numbers in order, or by name (te=, unet=)."""
    positional, named = [], {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep:
            named[key.strip()] = value.strip()
        elif arg:
            positional.append(arg)
    if "dyn" in named or len(positional) > 2 or set(named) - {"te", "unet", "dyn"}:
        raise UserError(f"The prompt tag {text} asks for more than a LoRA's weights (A1111's dyn=, DyLoRA's rank cut, "
                        "or an argument A1111 does not read); personae applies the file's full rank.",
                        "Write it as <lora:name:0.8>, or <lora:name:TE:UNET> for the text encoder's and the UNet's "
                        "weights apart.")
    try:
        weight = float(named.get("te", positional[0] if positional else 1.0))
        unet = named.get("unet", positional[1] if len(positional) > 1 else None)
        return weight, None if unet is None else float(unet)
    except ValueError:
        raise UserError(f"The prompt tag {text} has a weight that is not a number.",
                        "Write it as <lora:name:0.8>, or <lora:name:TE:UNET>.") from None


_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")  # A1111's re_extra_net: every such tag leaves the prompt


def lora_tags(prompt: str) -> tuple[str, list[LoraTag]]:
    """The prompt without its `<lora:...>` tags, and the tags in order. A1111 takes every `<word:...>` tag out of a
    prompt as an extra network: one personae does not apply (a hypernetwork, or a kind A1111 itself skips as
    unknown) would change what the words mean if it stayed, and is refused by name."""
    for match in _EXTRA_NETWORK.finditer(prompt):
        kind = match.group(1).lower()
        if kind in ("lora", "lyco"):
            continue
        if kind == "hypernet":
            raise UserError(f"The prompt has {match.group(0)}, an A1111 hypernetwork, which personae does not apply.",
                            "Remove the tag (the picture then differs from A1111's with it), or use a LoRA instead.")
        raise UserError(f"The prompt has {match.group(0)}: A1111 reads <{match.group(1)}:...> as an extra network "
                        "and takes it out of the prompt, and personae knows only <lora:...> (and <lyco:...>).",
                        "Remove the tag; for a LoRA write <lora:name:weight>.")
    tags = []
    for match in _TAG.finditer(prompt):
        name, args = match.group(2).strip(), [a.strip() for a in match.group(3).split(":")[1:]]
        weight, unet = _weights(args, match.group(0))
        tags.append(LoraTag(name, weight, match.group(0), None if unet == weight else unet))
    return re.sub(r" {2,}", " ", _TAG.sub("", prompt)).strip(), tags  # as A1111: the tag goes, commas stay


def lora_roots(lora_dir: str | Path) -> list[Path]:
    """Where names are looked up: the folder itself, and A1111's models/Lora and models/LyCORIS inside it."""
    return search_roots(lora_dir, ("models/Lora", "models/LyCORIS"), "--lora-dir",
                        "Pass the folder holding your LoRA files (A1111's models/Lora) or your A1111 webui folder.")


def lora_files(lora_dir: str | Path) -> dict[str, Path]:
    """{name: file} of every LoRA-like file under `lora_dir`; by stem, and by path without extension inside a root."""
    return files_by_name(lora_roots(lora_dir), LORA_SUFFIXES,
                         lambda path, root: (path.stem, path.relative_to(root).with_suffix("").as_posix()))


def find_lora(name: str, lora_dir: str | Path | None, tag: str = "") -> Path:
    """The file a `<lora:name:...>` tag means, or a UserError listing what the folder holds."""
    tag = tag or f"<lora:{name}>"
    if not lora_dir:
        raise UserError(f"The prompt asks for the LoRA {tag}, but no folder to find it in was given.",
                        f"Pass --lora-dir DIR (the folder holding {name}.safetensors, or your A1111 webui folder), "
                        "or pass the file with --lora FILE:WEIGHT and take the tag out of the prompt.")
    files = lora_files(lora_dir)
    if name in files:
        return files[name]
    stems = sorted({p.stem for p in files.values()})
    listing = ", ".join(stems[:40]) + (f" and {len(stems) - 40} more" if len(stems) > 40 else "") if stems else "nothing"
    raise UserError(f"The prompt asks for the LoRA {tag}, but --lora-dir {lora_dir} holds no file named "
                    f"{name}.safetensors.{did_you_mean(name, stems)}",
                    f"It holds: {listing}. Check the name in the tag, or pass another --lora-dir.")


def expand_lora_tags(settings):
    """`settings` (any with prompt, loras, lora_dir) with the prompt's tags taken out and their files added to
    `loras`, as if each had been passed as --lora FILE:WEIGHT (a tag naming a file already given sets its weights)."""
    prompt, tags = lora_tags(settings.prompt)
    if not tags:
        return settings
    loras = [ref.model_dump() for ref in settings.loras]
    for tag in tags:
        path = str(find_lora(tag.name, settings.lora_dir, tag.text))
        same = [ref for ref in loras if Path(ref["path"]).expanduser().resolve() == Path(path)]
        if same:
            same[0].update(weight=tag.weight, unet_weight=tag.unet_weight)
        else:
            loras.append({"path": path, "weight": tag.weight, "unet_weight": tag.unet_weight})
    return type(settings).model_validate({**settings.model_dump(), "prompt": prompt, "loras": loras})
