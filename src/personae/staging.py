"""Output folders that appear whole or not at all.

    with staged_folder(Path("bench")) as work:   # work is bench.partial, empty
        ...                                      # write everything into work
    # success: work replaced bench; any exception: work was removed and bench left as it was
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    work = out.with_name(out.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        yield work
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    work.replace(out)
