"""Hugging Face Hub ids: what one looks like, whether it is in the local cache, and the message
for one that cannot be had.

Torch-free, so the API can check a job's model at submit time. Loading itself is diffusers' and
transformers' `from_pretrained` (`dfusion_core.models.load_pretrained`,
`dfusion_core.scoring.ClipScorer.from_pretrained`); the cache is huggingface_hub's own, found
through `HF_HOME` / `HF_HUB_CACHE` by that library (nothing here reads the environment).
`cache_dir` None means huggingface_hub's default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# `owner/name` as huggingface_hub's validate_repo_id accepts it (no '--' or '..', at most 96 chars each).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
#: The file whose presence in the cache says a diffusers pipeline repo is there.
PIPELINE_INDEX = "model_index.json"
#: The same for a transformers model repo (a CLIP scorer).
MODEL_CONFIG = "config.json"


@dataclass(frozen=True)
class HubOptions:
    """Where and how Hub ids resolve; None fields keep huggingface_hub's own defaults
    (`HF_HOME` / `HF_HUB_CACHE`, `HF_HUB_OFFLINE`)."""

    cache_dir: Path | None = None  # the hub cache folder (HF_HOME/hub), None = huggingface_hub's
    offline: bool | None = None  # True = local_files_only; None = as HF_HUB_OFFLINE says


def is_hub_id(name: str) -> bool:
    """True for `owner/name` (a Hub repo id), False for built-in names and anything else."""
    return bool(_HUB_ID.match(name)) and "--" not in name and ".." not in name and not name.endswith((".", "-"))


def is_cached(repo_id: str, filename: str, *, revision: str | None = None, cache_dir: str | Path | None = None) -> bool:
    """True when the cache holds `filename` of `repo_id` at `revision` (None = the `main` ref)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision)
    return isinstance(found, str)


def hub_offline() -> bool:
    """Whether huggingface_hub is in offline mode (it reads `HF_HUB_OFFLINE` when imported)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def unavailable_message(repo_id: str, revision: str | None = None, cause: object = None) -> str:
    """Names the model and what to do when its files are neither cached nor downloadable."""
    at = f" at revision {revision!r}" if revision else ""
    why = f" ({cause})" if cause else ""
    return (f"{repo_id!r}{at} is not in the Hugging Face cache and the Hub cannot be reached{why}. "
            f"Fetch it once where the Hub is reachable, into the cache the workers share (HF_HOME), e.g. "
            f"`HF_HOME=<cache> hf download {repo_id}`, or unset HF_HUB_OFFLINE; "
            "or register a local diffusers folder in DFUSION_MODELS")
