"""Dynamic Prompts' template syntax (the sd-dynamic-prompts extension most A1111 installs carry), resolved per image.

    "a photo of sks man, {summer|autumn|winter}, __locations__"
    {a|b|c}            one of the options             {0.5::a|2::b}      weighted options
    {2$$a|b|c}         two different options, ", "    {1-3$$a|b|c}       one to three of them
    {2$$ and $$a|b|c}  two, joined by " and "         __name__           a line of wildcards/name.txt
    __people/*__       a line of any file the glob names (subfolders and * as the extension allows)

Options and wildcard lines may hold templates themselves (nested, to a depth of 20). A wildcard file is one
option per line; blank lines and lines starting with # are skipped. A1111's own [a|b] and (word:1.2) syntax is
left alone, and so is a brace group without | or $$ ("{masterpiece}" stays as written). Each image draws from a
generator seeded with its own seed, so the same template and seed give the same prompt; the PNG carries the
prompt it drew (and the template, as Dynamic Prompts writes it), so it reproduces without the wildcard files.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from personae.errors import UserError, did_you_mean

_WILDCARD = re.compile(r"__([\w\-./*]+?)__")
_COUNT = re.compile(r"^\s*(\d*)\s*(?:-\s*(\d*))?\s*\$\$(?:(.*?)\$\$)?", re.S)
_WEIGHT = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)::")
MAX_DEPTH = 20


def is_template(text: str) -> bool:
    """Whether `text` uses the syntax: a brace group with | or $$, or a __wildcard__."""
    return bool(_WILDCARD.search(text)) or any("|" in g or "$$" in g for g in _groups(text))


def _groups(text: str) -> list[str]:
    """The contents of the outermost brace groups of `text`."""
    groups, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "{":
            if depth == 0:
                start = i + 1
            depth += 1
        elif char == "}" and depth:
            depth -= 1
            if depth == 0:
                groups.append(text[start:i])
    return groups


def _split_options(body: str) -> list[str]:
    """The |-separated options of a group body, at its own brace depth."""
    options, depth, current = [], 0, []
    for char in body:
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        if char == "|" and depth == 0:
            options.append("".join(current))
            current = []
        else:
            current.append(char)
    options.append("".join(current))
    return options


class Wildcards:
    """The wildcard files under a folder (Dynamic Prompts' wildcards/, or an A1111 webui folder holding it)."""

    def __init__(self, folder: str | None):
        self.root = None
        if folder:
            path = Path(folder).expanduser()
            extension = path / "extensions" / "sd-dynamic-prompts" / "wildcards"  # the webui folder
            self.root = (extension if extension.is_dir() else path).resolve()
            if not self.root.is_dir():
                raise UserError(f"--wildcards-dir {folder} is not a folder.",
                                "Pass the folder of wildcard .txt files (Dynamic Prompts' wildcards/) or the webui "
                                "folder.")

    def names(self) -> list[str]:
        if self.root is None:
            return []
        return sorted(p.relative_to(self.root).with_suffix("").as_posix() for p in self.root.rglob("*.txt"))

    def lines(self, name: str) -> list[str]:
        if self.root is None:
            raise UserError(f"The prompt uses the wildcard __{name}__, but no wildcards folder was given.",
                            "Pass --wildcards-dir with Dynamic Prompts' wildcards folder (or the webui folder).")
        files = sorted(p for p in self.root.glob(f"{name}.txt") if p.is_file() and self.root in p.resolve().parents)
        if not files:
            raise UserError(f"The wildcard __{name}__ has no file {name}.txt in {self.root}."
                            f"{did_you_mean(name, self.names())}", "Its wildcards: " + (", ".join(self.names())
                                                                                         or "none") + ".")
        lines = []
        for path in files:
            lines += [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
                      if line.strip() and not line.strip().startswith("#")]
        if not lines:
            raise UserError(f"The wildcard __{name}__ ({', '.join(str(p) for p in files)}) has no lines.")
        return lines


def resolve(template: str, rng: random.Random, wildcards: Wildcards, depth: int = 0) -> str:
    """`template` with every variant group and wildcard drawn from `rng`, innermost choices first made by the
    outer ones (an unchosen option's wildcards are never read)."""
    if depth > MAX_DEPTH:
        raise UserError(f"The prompt's wildcards and variants nest more than {MAX_DEPTH} deep (a wildcard file "
                        "that names itself?).", "Check the wildcard files for a loop.")
    out, i = [], 0
    while i < len(template):
        char = template[i]
        if char == "{":
            end = _closing(template, i)
            body = template[i + 1:end]
            if end < 0 or not ("|" in body or "$$" in body):  # not a variant group: as written
                out.append(char)
                i += 1
                continue
            out.append(_variant(body, rng, wildcards, depth))
            i = end + 1
            continue
        match = _WILDCARD.match(template, i) if template.startswith("__", i) else None
        if match:
            out.append(resolve(rng.choice(wildcards.lines(match.group(1))), rng, wildcards, depth + 1))
            i = match.end()
            continue
        out.append(char)
        i += 1
    return "".join(out)


def _closing(text: str, start: int) -> int:
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    return -1


def _variant(body: str, rng: random.Random, wildcards: Wildcards, depth: int) -> str:
    low = high = 1
    joiner = ", "
    count = _COUNT.match(body)
    if count:
        first, second, sep = count.groups()
        low = int(first) if first else (1 if second is None else 0)
        high = low if second is None else (int(second) if second else None)
        joiner = ", " if sep is None else sep
        body = body[count.end():]
    options = _split_options(body)
    weights = []
    for k, option in enumerate(options):
        weight = _WEIGHT.match(option)
        weights.append(float(weight.group(1)) if weight else 1.0)
        options[k] = option[weight.end():] if weight else option
    if len(options) == 1 and "__" in options[0] and _WILDCARD.fullmatch(options[0].strip()):
        # {2$$__colours__}: the count draws from the wildcard's lines
        options = wildcards.lines(_WILDCARD.fullmatch(options[0].strip()).group(1))
        weights = [1.0] * len(options)
    high = len(options) if high is None else min(high, len(options))
    n = rng.randint(min(low, high), high)
    chosen: list[str] = []
    pool = list(range(len(options)))
    for _ in range(n):
        if not any(weights[j] for j in pool):
            if chosen:  # the options a weight allows are all drawn
                break
            raise UserError(f"The prompt's variant {{{body}}} has no option with a weight above 0 to draw.",
                            "Give some option a weight above 0 (0.5::a).")
        pick = rng.choices(pool, weights=[weights[j] for j in pool])[0]
        pool.remove(pick)
        chosen.append(options[pick])
    return joiner.join(resolve(option, rng, wildcards, depth + 1) for option in chosen)


def image_prompts(prompt: str, negative: str, seeds: list[int], wildcards_dir: str | None) -> list[tuple[str, str]]:
    """(prompt, negative) drawn for each image seed."""
    wildcards = Wildcards(wildcards_dir)
    drawn = []
    for seed in seeds:
        rng = random.Random(seed)
        drawn.append((resolve(prompt, rng, wildcards), resolve(negative, rng, wildcards)))
    return drawn
