"""Library chatter (load bars, deprecation notes) is not for our users' terminals: every process personae
starts calls `quiet_libraries()` first (the CLI, job workers, world bench workers); personae's own messages
travel as events.

Downloads are the exception: a model's first use from the hub is gigabytes and minutes, so the hub's own download
bars stay on (huggingface_hub draws them at a terminal only), unless the command was given --quiet.

Quieting does not import the libraries: diffusers alone takes seconds to import (it pulls in torch._dynamo), and a
command that refuses a typo must not wait for it. Each library is quieted the moment its import finishes (an import
hook on sys.meta_path), or at once when it is already imported."""

from __future__ import annotations

import importlib.abc
import os
import sys

_LIBRARIES = ("huggingface_hub", "diffusers", "transformers")
_downloads = True  # the hub's download bars, as the last quiet_libraries() call asked


def quiet_libraries(downloads: bool = True) -> None:
    """Library logging to errors only, their load bars off; the hub's download bars on when `downloads` (and
    HF_HUB_DISABLE_PROGRESS_BARS is not set: a user's own setting wins)."""
    global _downloads
    _downloads = downloads
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    logging.getLogger("fontTools").setLevel(logging.ERROR)  # fpdf2's font subsetting notes ("TSI0 NOT subset")
    if not any(isinstance(finder, _QuietOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietOnImport())
    for name in _LIBRARIES:
        if name in sys.modules:
            _quiet(name)


def _quiet(name: str) -> None:
    """Quiet one imported library; the hub's bars are set last, as transformers' switch turns them off too."""
    if name in ("diffusers", "transformers"):
        library = sys.modules[name]
        library.utils.logging.set_verbosity_error()
        library.utils.logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

        if not _downloads:
            disable_progress_bars()
        elif not os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS"):
            enable_progress_bars()


class _QuietOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for the libraries named above it asks the finders after it, and has the loader quiet
    the library once the library's own import has run."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _LIBRARIES:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module):  # an attribute of this one loader object; the loader is otherwise untouched
            run(module)
            _quiet(fullname)

        loader.exec_module = exec_module
        return spec
