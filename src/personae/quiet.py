"""Library chatter (load bars, deprecation notes) is not for our users' terminals: every process personae
starts calls `quiet_libraries()` first (the CLI, job workers, world bench workers); personae's own messages
travel as events.

Downloads are the exception: a model's first use from the hub is gigabytes and minutes, so the hub's own download
bars stay on (huggingface_hub draws them at a terminal only), unless the command was given --quiet."""

from __future__ import annotations

import os


def quiet_libraries(downloads: bool = True) -> None:
    """Library logging to errors only, their load bars off; the hub's download bars on when `downloads` (and
    HF_HUB_DISABLE_PROGRESS_BARS is not set: a user's own setting wins)."""
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
        library.utils.logging.disable_progress_bar()  # transformers' switch turns the hub's bars off too
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    if not downloads:
        disable_progress_bars()
    elif not os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS"):
        enable_progress_bars()
