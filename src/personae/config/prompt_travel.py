"""Prompt travel's keyframes, read from a clip's prompt as A1111's AnimateDiff extension reads them (no torch here:
the settings check them against the clip's frames; inference/prompt_travel.py draws the frames from them).

    a red circle, masterpiece          <- head lines (any number, or none)
    0: on a blue background            <- keyframes, "frame: prompt", frames counted from 0, ascending
    12: on a yellow background
    medium shot                        <- tail lines (any number, or none)

Each keyframe's prompt is its head lines, its text and its tail lines joined by ", ", as the extension joins them,
but without empty parts and the commas that end a line: the extension writes ", a cat, " for "0: a cat" with no
head or tail, and "masterpiece,, a cat" for a head line ending in a comma; here they are "a cat" and "masterpiece, a
cat" (a stray comma moves a prompt's conditioning, much so for a small text encoder such as the shapes world's). A
prompt without a keyframe line is an ordinary prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_KEYFRAME = re.compile(r"^\s*(\d+)\s*:(.*)$")


class TravelError(ValueError):
    """A travelling prompt that cannot be read: what is wrong, and what to do (a settings error, or a UserError)."""

    def __init__(self, what: str, fix: str):
        super().__init__(f"{what} {fix}")
        self.what, self.fix = what, fix


@dataclass(frozen=True)
class Travel:
    keyframes: tuple[tuple[int, str], ...]  # (frame, the keyframe's whole prompt), frames ascending

    @property
    def prompts(self) -> list[str]:
        return [text for _, text in self.keyframes]


def _part(line: str) -> str:
    return line.strip().strip(",").strip()


def split_travel(prompt: str) -> tuple[list[str], list[str], list[str]] | None:
    """(head lines, keyframe lines, tail lines) of a travelling prompt, or None for an ordinary prompt."""
    lines = [line.rstrip("\r") for line in prompt.strip().split("\n")]
    first = next((i for i, line in enumerate(lines) if _KEYFRAME.match(line)), None)
    if first is None:
        return None
    end = first
    while end < len(lines) and _KEYFRAME.match(lines[end]):
        end += 1
    return lines[:first], lines[first:end], lines[end:]


def travel_around(prompt: str, before: str, after: str) -> str:
    """A travelling prompt with `before` put ahead of its head lines and `after` behind its tail lines, so every
    keyframe's prompt is wrapped in them (an A1111 style applied to every frame, as the extension applies it)."""
    head, keys, tail = split_travel(prompt)
    lines = ([before] if _part(before) else []) + head + keys + tail + ([after] if _part(after) else [])
    return "\n".join(lines)


def parse_travel(prompt: str, frames: int, flag: str = "--prompt") -> Travel | None:
    """The keyframes of a travelling prompt, or None for an ordinary prompt (no line starts with "N:")."""
    split = split_travel(prompt)
    if split is None:
        return None
    head, keys, tail = split
    stray = next((line for line in tail if _KEYFRAME.match(line)), None)
    if stray is not None:
        raise TravelError(f'{flag}: the keyframe line "{stray.strip()}" comes after a line that is not a keyframe. '
                          "Prompt travel reads head lines, then keyframe lines (\"frame: prompt\") one after the "
                          "other, then tail lines.", "Put the keyframe lines together.")
    keyframes: list[tuple[int, str]] = []
    for line in keys:
        number, text = _KEYFRAME.match(line).groups()
        frame, text = int(number), text.strip()
        if not text:
            raise TravelError(f'{flag}: the keyframe "{line.strip()}" has no prompt.', 'Write it as "frame: prompt".')
        if frame >= frames:
            raise TravelError(f"{flag}: keyframe {frame} is past the clip's last frame ({frames} frames, counted "
                              "from 0).", f"Use keyframes from 0 to {frames - 1}, or ask for more frames.")
        if keyframes and frame <= keyframes[-1][0]:
            raise TravelError(f"{flag}: keyframe {frame} comes after keyframe {keyframes[-1][0]}: keyframes must go "
                              "up.", "Write the keyframe lines in the order of their frames, each frame once.")
        parts = (*map(_part, head), _part(text), *map(_part, tail))
        keyframes.append((frame, ", ".join(part for part in parts if part)))
    return Travel(tuple(keyframes))


