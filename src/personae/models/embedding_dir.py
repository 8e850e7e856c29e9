"""A1111's embeddings folder: a textual-inversion embedding is used by writing its name in a prompt.

    settings = expand_embedding_names(settings)   # "EasyNegative" in the negative prompt, --embeddings-dir DIR:
                                                  # DIR/EasyNegative.safetensors joins settings.embeddings

As A1111's EmbeddingDatabase: every embedding file under the folder (subfolders included; an A1111 webui folder
is searched in its `embeddings`), a tensor file called by its file name, a PNG / WebP card by the name inside (a
`*.preview.png` is a picture, not a card). A name counts where a prompt writes it as a word of its own, in any
case (A1111 matches the tokens, which CLIP's tokenizer lowercases); the embedding then takes the prompt's
spelling as its token. Embeddings already passed with --embedding are not added twice. Each file is checked
when it loads (models/addons.py), as any --embedding FILE.
"""

from __future__ import annotations

import re
from pathlib import Path

from personae.errors import UserError
from personae.models.embedding_images import is_picture, read_embedding_picture
from personae.models.named_files import files_by_name, search_roots

EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin", ".png", ".webp")
PROMPT_FIELDS = ("prompt", "negative", "hires_prompt", "hires_negative", "ad_prompt", "ad_negative_prompt")


def _names(path: Path, root: Path) -> list[str]:
    if path.suffix.lower() not in (".png", ".webp"):
        return [path.stem]
    if path.name.lower().endswith((".preview.png", ".preview.webp")) or not is_picture(path):
        return []
    try:
        name = read_embedding_picture(path).get("name")
    except UserError:  # a picture that holds no embedding
        return []
    return [name] if isinstance(name, str) and name.strip() else [path.stem]


def embedding_files(folder: str | Path) -> dict[str, Path]:
    """{name: file} of every embedding under `folder` (and its `embeddings` when it is an A1111 webui folder)."""
    roots = search_roots(folder, ("embeddings",), "--embeddings-dir",
                         "Pass the folder holding your embeddings (A1111's embeddings folder) or your A1111 webui "
                         "folder.")
    return files_by_name(roots, EMBEDDING_SUFFIXES, _names)


def named_in(texts: list[str], names: list[str]) -> dict[str, str]:
    """{name: the spelling a text gives it} for each name some text writes as a word of its own, in any case."""
    found = {}
    for name in sorted(names, key=len, reverse=True):  # "bad-hands-5" before "bad"
        pattern = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])", re.IGNORECASE)
        for text in texts:
            if match := pattern.search(text):
                found[name] = match.group(0)
                break
    return found


def expand_embedding_names(settings):
    """`settings` (any with prompts, embeddings, embeddings_dir) with the embeddings its prompts name added, each as
    if passed as --embedding FILE:TOKEN."""
    folder = getattr(settings, "embeddings_dir", None)
    if not folder:
        return settings
    files = embedding_files(folder)
    texts = [getattr(settings, field) or "" for field in PROMPT_FIELDS if hasattr(settings, field)]
    given = {Path(ref.path).expanduser().resolve() for ref in settings.embeddings}
    added = [{"path": str(files[name]), "token": spelling} for name, spelling in named_in(texts, list(files)).items()
             if files[name] not in given]
    if not added:
        return settings
    embeddings = [ref.model_dump() for ref in settings.embeddings] + added
    return type(settings).model_validate({**settings.model_dump(), "embeddings": embeddings})
