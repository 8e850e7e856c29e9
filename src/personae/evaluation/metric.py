"""The metric interface (a metric scores every generated image) and the sample it scores; the metrics are in
metrics.py (offline ones and the registry), model_metrics.py (CLIP, DINO) and face.py."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image


@dataclass
class Sample:
    """One generated image and what made it."""

    image: Image.Image
    variant: str
    prompt: str  # the prompt as generated (token and class filled in)
    prompt_index: int
    seed: int
    class_prompt: str = ""  # the prompt with the class noun only, for CLIP-T (as in the DreamBooth paper)
    template: str = ""  # the suite's prompt before {token} and {class} were filled in


class Unavailable(Exception):
    """The metric cannot run here; the message says why (shown in the report)."""


class Metric:
    name = ""  # column key in metrics.csv / metrics.json
    title = ""  # column header in the report
    needs_references = False

    def score(self, samples: list[Sample], references: list[Image.Image]) -> list[float | None]:
        raise NotImplementedError
