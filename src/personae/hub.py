"""The Hugging Face hub, asked once and quickly: is a repo reachable? (No retry loops offline.) And what it refuses
during a download (gated, private or missing repositories, server errors, a connection that breaks off) said as the
user's to act on."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from personae.errors import UserError

T = TypeVar("T")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w./-]+)?$")  # owner/name[/subfolder]


def is_hub_id(spec: str, subfolder: bool = False) -> bool:
    """Does `spec` have the form of a hub repository id (owner/name, and /subfolder when allowed)?"""
    match = _HUB_ID.match(spec)
    return bool(match) and (subfolder or match.group(1) is None)

# Repositories that left the hub, and where their maintained copies live.
MOVED = {"runwayml/stable-diffusion-v1-5": "stable-diffusion-v1-5/stable-diffusion-v1-5",
         "runwayml/stable-diffusion-inpainting": "stable-diffusion-v1-5/stable-diffusion-inpainting"}


def require_hub(repo_id: str, what: str, local_hint: str) -> None:
    """Raise a UserError within seconds when `repo_id` cannot be downloaded now."""
    from huggingface_hub import HfApi, constants

    if repo_id in MOVED:
        raise UserError(f'"{repo_id}" was removed from the Hugging Face hub in 2024.',
                        f'Its maintained copy is "{MOVED[repo_id]}": pass that instead, or {local_hint}')
    if constants.HF_HUB_OFFLINE:
        why = "it is not in the local cache and HF_HUB_OFFLINE is set."
    else:
        try:
            HfApi().model_info(repo_id, timeout=10)
            return
        except Exception as exc:  # noqa: BLE001 - any failure means we cannot download it now
            refused = _hub_error(exc)
            if refused is not None:
                raise UserError(*_refusal(refused, repo_id, what, local_hint)) from None
            why = f"the hub could not be reached ({type(exc).__name__})."
    raise UserError(f'Cannot load {what} "{repo_id}" from the Hugging Face hub: {why}',
                    f"Download it where you have network (or copy its folder), then {local_hint}")


def from_hub(repo_id: str, what: str, local_hint: str, fetch: Callable[[], T]) -> T:
    """`fetch()`, a download of `repo_id` (a from_pretrained, an hf_hub_download), once `require_hub` agrees; what
    goes wrong on the way (a gated or private repository, a missing one or a missing file, a server error, a
    connection that breaks off) is the user's to act on: a UserError, also when a library wrapped it in an error
    of its own."""
    require_hub(repo_id, what, local_hint)
    try:
        return fetch()
    except Exception as exc:
        refused = _hub_error(exc)
        if refused is not None:
            raise UserError(*_refusal(refused, repo_id, what, local_hint)) from None
        broken = _network_error(exc)
        if broken is None:
            raise
        raise UserError(f'Cannot load {what} "{repo_id}" from the Hugging Face hub: the download broke off '
                        f"({type(broken).__name__}: {str(broken).splitlines()[0][:160]}).",
                        "Run the command again once the network is back: what was downloaded stays in the Hugging "
                        f"Face cache and the rest is fetched. Or {local_hint}") from None


def from_cache_or_hub(repo_id: str, what: str, local_hint: str, load: Callable[[bool], T]) -> T:
    """`load(True)`: all of `repo_id` from the local Hugging Face cache, asking the network nothing; when the cache
    does not hold all of it (a part missing, or none), `load(False)` through `from_hub`, which fetches the rest. Every
    hub loader goes this way: a repository cached in part is never loaded half."""
    try:
        return load(True)
    except (OSError, ValueError):  # the libraries' "not in the cache"; the fetch runs outside this handler, so its
        pass  # errors are not chained to this one
    return from_hub(repo_id, what, local_hint, lambda: load(False))


def _hub_error(exc: BaseException | None):
    """The hub's HTTP error behind `exc` (diffusers and transformers re-raise it as an OSError of their own)."""
    from huggingface_hub.utils import HfHubHTTPError

    return _behind(exc, (HfHubHTTPError,))


def _network_error(exc: BaseException | None):
    """The network failure behind `exc` (a connection refused, reset or cut mid-file, a timeout), whichever HTTP
    library huggingface_hub uses (httpx2, httpx, requests), or None."""
    import importlib

    kinds = [ConnectionError, TimeoutError]
    for module, name in [("httpx2", "TransportError"), ("httpx", "TransportError"),
                         ("requests.exceptions", "ConnectionError"), ("requests.exceptions", "ChunkedEncodingError"),
                         ("requests.exceptions", "Timeout")]:
        try:
            kinds.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return _behind(exc, tuple(kinds))


def _behind(exc: BaseException | None, kinds: tuple[type, ...]):
    """The first exception of `kinds` in `exc`'s chain (what it was raised from, or while handling), or None."""
    while exc is not None:
        if isinstance(exc, kinds):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _refusal(exc, repo_id: str, what: str, local_hint: str) -> tuple[str, str]:
    from huggingface_hub import constants
    from huggingface_hub.utils import GatedRepoError, RepositoryNotFoundError

    cannot = f'Cannot load {what} "{repo_id}" from the Hugging Face hub'
    login = ("log in on this machine with `hf auth login` (older huggingface_hub: `huggingface-cli login`) or set "
             "HF_TOKEN")
    if isinstance(exc, GatedRepoError):
        return (f"{cannot}: it is gated (its files go only to a logged-in account that accepted its terms).",
                f"Accept them at {constants.ENDPOINT}/{repo_id}, {login}, then run the command again; or {local_hint}")
    if isinstance(exc, RepositoryNotFoundError):
        return (f"{cannot}: the hub has no repository of that name this machine may read (a misspelt id, or a "
                "private repository).", f"Check the id; for a private repository, {login}. Or {local_hint}")
    if _missing_file(exc):
        url = str(getattr(getattr(exc, "response", None), "url", ""))
        name = url.split("/resolve/", 1)[1].split("/", 1)[-1] if "/resolve/" in url else "a file it needs"
        return (f"{cannot}: the repository has no {name}: it is not laid out as the library that loads it expects "
                "(a repository of single checkpoint files?).",
                f"Download the file you want from it and {local_hint}")
    status = getattr(getattr(exc, "response", None), "status_code", "an error")
    return (f"{cannot}: the hub answered {status} during the download ({str(exc).splitlines()[0][:160]}).",
            f"Run the command again later (what was downloaded stays in the cache); or {local_hint}")


def _missing_file(exc) -> bool:
    """A 404 for one file of a repository that exists (EntryNotFoundError, RemoteEntryNotFoundError in hub 1.x+)."""
    from huggingface_hub import errors

    kinds = tuple(k for k in (getattr(errors, "RemoteEntryNotFoundError", None),
                              getattr(errors, "EntryNotFoundError", None)) if k is not None)
    return isinstance(exc, kinds) and not isinstance(exc, getattr(errors, "LocalEntryNotFoundError", ()))
