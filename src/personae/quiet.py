"""Library chatter (load bars, deprecation notes) is not for our users' terminals: every process personae
starts calls `quiet_libraries()` first (the CLI, job workers, world bench workers); personae's own messages
travel as events."""

from __future__ import annotations

import os


def quiet_libraries() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    logging.getLogger("fontTools").setLevel(logging.ERROR)  # fpdf2's font subsetting notes ("TSI0 NOT subset")
    import diffusers
    import transformers

    for library in (diffusers, transformers):
        library.utils.logging.set_verbosity_error()
        library.utils.logging.disable_progress_bar()
