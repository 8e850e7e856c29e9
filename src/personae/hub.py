"""The Hugging Face hub, asked once and quickly: is a repo reachable? (No retry loops offline.)"""

from __future__ import annotations

import re

from personae.errors import UserError

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
            why = f"the hub could not be reached or has no such repository ({type(exc).__name__})."
    raise UserError(f'Cannot load {what} "{repo_id}" from the Hugging Face hub: {why}',
                    f"Download it where you have network (or copy its folder), then {local_hint}")
