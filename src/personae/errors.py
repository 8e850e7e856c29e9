"""The one error type users see.

A `UserError` carries one paragraph: what was wrong, where, and what to do. The CLI
prints it without a traceback and exits non-zero; the core raises it for anything the
user can fix (a path, a name, a setting), and lets real bugs raise as themselves.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input the user can fix. `str(err)` is the whole message."""

    def __init__(self, what: str, fix: str | None = None):
        self.what = what.rstrip()
        self.fix = fix
        super().__init__(self.what if not fix else f"{self.what} {fix}")


def nearest(name: str, choices: Iterable[str]) -> str | None:
    """The closest valid name to a misspelt one, or None when nothing is close."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    hit = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.5)
    return lowered[hit[0]] if hit else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' Did you mean "x"?' or '' (for appending to a message)."""
    hit = nearest(name, choices)
    return f' Did you mean "{hit}"?' if hit else ""
