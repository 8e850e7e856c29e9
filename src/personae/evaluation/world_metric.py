"""The shapes world's exact checker as comparison metrics: `metrics: {world: {subject: star}}` in a compare suite.

Every generated image is read back by world/check.py and scored against what its prompt asks, the prompt read
with the world's caption grammar, "a COLOUR SHAPE on a BACKGROUND background[, SIZE]" (the size may be left out):

- world_subject, subject fidelity: prompts with {token}: 1 when the image shows the taught shape (`subject`:
  the shape the token stands for), else 0;
- world_prompt, prompt fidelity: prompts with {token}: 1 when the background, the shape's colour and the size
  (when the prompt names one) are as asked, else 0;
- world_prior, prior: prompts without {token} (the class's own prompts, "a red circle on a blue background"):
  1 when background, colour, shape and size are all as asked, else 0 (does the base concept stay the base's?).

Each image gets a number in the columns that apply to its prompt and None in the others, so the per-variant
means are the shares over the prompts that ask the question. The prompts and models are checked before
anything is generated (`check_world_suite`): a prompt outside the grammar or a model that is not a
shapes-world model (its native size is not the world's 32 px) is a UserError.
"""

from __future__ import annotations

from dataclasses import dataclass

from personae.errors import UserError
from personae.evaluation.metric import Metric, Sample
from personae.evaluation.suites import fill
from personae.world.check import check
from personae.world.scene import BACKGROUNDS, COLOURS, SHAPES, SIDE, SIZES, parse_prompt

GRAMMAR = "a COLOUR SHAPE on a BACKGROUND background[, SIZE]"


@dataclass(frozen=True)
class Request:
    """What a world prompt asks: the word in the shape's slot is the token in a subject prompt."""

    background: str
    colour: str
    word: str
    size: str | None


def parse_request(prompt: str) -> Request:
    """A world prompt, with or without its size; ValueError for anything else."""
    text = prompt.strip().lower()
    has_size = any(text.endswith(", " + size) for size in SIZES)
    asked = parse_prompt(text if has_size else text + ", close-up")
    if asked.colour not in COLOURS or asked.background not in BACKGROUNDS:
        raise ValueError(f"{prompt!r}: colours are {', '.join(COLOURS)}; backgrounds {', '.join(BACKGROUNDS)}")
    return Request(asked.background, asked.colour, asked.shape, asked.size if has_size else None)


def is_subject(sample: Sample) -> bool:
    """The prompt names the taught token (its template has {token})."""
    return "{token}" in sample.template if sample.template else sample.prompt != sample.class_prompt


class WorldReader:
    """The checker's reading of each image, once, shared by the three columns."""

    def __init__(self, subject: str):
        self.subject = subject
        self._found: dict[int, object] = {}

    def read(self, sample: Sample):
        key = id(sample.image)
        if key not in self._found:
            self._found[key] = check(sample.image)
        return self._found[key]


class WorldMetric(Metric):
    subject_prompts = True  # which prompts this column scores

    def __init__(self, reader: WorldReader):
        self.reader = reader

    def judge(self, found, asked: Request) -> bool:
        raise NotImplementedError

    def score(self, samples, references):
        out: list[float | None] = []
        for s in samples:
            if is_subject(s) != self.subject_prompts:
                out.append(None)
                continue
            out.append(float(self.judge(self.reader.read(s), parse_request(s.prompt))))
        return out


class WorldSubject(WorldMetric):
    name, title = "world_subject", "world: subject fidelity ↑"

    def judge(self, found, asked):
        return found.shape == self.reader.subject


class WorldPrompt(WorldMetric):
    name, title = "world_prompt", "world: prompt fidelity ↑"

    def judge(self, found, asked):
        return (found.background == asked.background and found.colour == asked.colour
                and (asked.size is None or found.size == asked.size))


class WorldPrior(WorldMetric):
    name, title, subject_prompts = "world_prior", "world: prior ↑", False

    def judge(self, found, asked):
        return (found.background == asked.background and found.colour == asked.colour and found.shape == asked.word
                and (asked.size is None or found.size == asked.size))


def world_metrics(settings) -> list[Metric]:
    reader = WorldReader(settings.subject)
    return [WorldSubject(reader), WorldPrompt(reader), WorldPrior(reader)]


def check_world_suite(settings, templates: list[str], token: str, class_word: str, models: dict[str, str],
                      width: int | None, height: int | None) -> None:
    """Before anything is generated: every prompt is a world prompt, every model a shapes-world model.
    `models`: {variant label: model}."""
    from personae.models.resolve import native_size, resolve_model

    fix = (f"metrics.world reads every prompt as '{GRAMMAR}' with {{token}} in the shape's place, e.g. "
           f"'a white {{token}} on a red background, close-up' (subject prompts) or 'a red circle on a blue "
           "background' (prior prompts, no {token}).")
    for i, template in enumerate(templates):
        try:
            asked = parse_request(fill(template, token, class_word))
        except ValueError as exc:
            raise UserError(f"metrics.world: prompt {i + 1} ({template!r}) is not a shapes-world prompt: {exc}.",
                            fix) from None
        if "{token}" not in template and asked.word not in SHAPES:
            raise UserError(f"metrics.world: prompt {i + 1} ({template!r}) has no {{token}}, so it is a prior prompt, "
                            f"but {asked.word!r} is not a shape of the world ({', '.join(SHAPES)}).", fix)
    if (width or SIDE) != SIDE or (height or SIDE) != SIDE:
        raise UserError(f"metrics.world: the suite draws {width or SIDE}x{height or SIDE} images; the world checker "
                        f"reads the world's {SIDE}x{SIDE}.", "Leave width and height out (the model's native size).")
    for label, model in models.items():
        try:
            side = native_size(resolve_model(model))
        except UserError:
            side = None
        if side != SIDE:
            drawn = f"it draws {side} px images" if side else "its image size cannot be read"
            raise UserError(f'metrics.world: variant "{label}" uses {model}, which is not a shapes-world model '
                            f"({drawn}; world models draw {SIDE} px).",
                            "Use the world metric with `personae model world DIR` or a `personae world pretrain` "
                            "output and what was trained on it; for other models remove metrics.world.")


RANKED_BY = ("world_subject", "world_prompt", "world_prior")


def rank_variants(table: list[dict]) -> list[dict]:
    """The variants best first: subject fidelity, then prompt fidelity, then prior (a missing score counts last)."""
    def key(entry):
        return tuple(-(entry.get(n) if entry.get(n) is not None else -1.0) for n in RANKED_BY)

    return [{"rank": i + 1, "variant": e["label"], **{n: e.get(n) for n in RANKED_BY}}
            for i, e in enumerate(sorted(table, key=key))]


def ranking_text(ranking: list[dict]) -> list[str]:
    """One line per variant, as `personae compare` prints the ranking and report.html shows it."""
    def pct(value):
        return "–" if value is None else f"{100 * value:.0f} %"

    return [f"{r['rank']}. {r['variant']}: subject {pct(r['world_subject'])}, prompt {pct(r['world_prompt'])}, "
            f"prior {pct(r['world_prior'])}" for r in ranking]
