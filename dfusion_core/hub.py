"""Hugging Face Hub ids: what one looks like, whether it is in the local cache, and the message
for one that cannot be had.

Torch-free, so the API can check a job's model at submit time. Loading itself is diffusers' and
transformers' `from_pretrained` (`dfusion_core.models.load_pretrained`,
`dfusion_core.scoring.ClipScorer.from_pretrained`); the cache is huggingface_hub's own, found
through `HF_HOME` / `HF_HUB_CACHE` by that library (nothing here reads the environment).
`cache_dir` None means huggingface_hub's default.

A load that fails is one of two things (`load_error`): the job's fault (no such repo, revision or
weights variant, or not cached while offline: a ConfigError naming `model`, `revision` or
`variant`), or the Hub's (unreachable, 5xx, rate-limited: `HubUnavailable`, a ConnectionError,
so a worker's task retries it). `resolve_revision` turns a branch or tag into the commit it
points at, so every worker of a job loads one revision.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from dfusion_core.errors import ConfigError, DFusionError

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


#: A full commit hash, as the Hub's refs hold.
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class HubUnavailable(DFusionError, ConnectionError):
    """The Hub could not be reached or answered with a server error: transient, worth a retry."""


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def load_error(exc: BaseException, repo_id: str, revision: str | None, variant: str | None,
               offline: bool, cache_dir: str | Path | None = None) -> BaseException:
    """What a failed `from_pretrained` of Hub id `repo_id` means: a ConfigError naming the field at
    fault, HubUnavailable for a transient failure, or `exc` itself when it is neither."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    chain = _chain(exc)
    text = " ".join(str(e) for e in chain)
    if any(isinstance(e, RevisionNotFoundError) for e in chain) or "not a valid git identifier" in text:
        return ConfigError("revision", f"{revision!r} is not a branch, tag or commit of {repo_id!r}")
    if any(isinstance(e, RepositoryNotFoundError) for e in chain):
        return ConfigError("model", f"{repo_id!r} is not a model repository on the Hub (or is private)")
    if variant and f".{variant}." in str(exc):
        return ConfigError("variant", f"{repo_id!r} has no {variant!r} weights ({str(exc).strip()[:200]}); "
                                      "omit `variant` for its default weights")
    status = next((e.response.status_code for e in chain if isinstance(e, HfHubHTTPError)
                   and getattr(e, "response", None) is not None), None)
    local_miss = any(isinstance(e, LocalEntryNotFoundError) for e in chain)
    if (local_miss and not offline) or (status is not None and (status >= 500 or status == 429)) or any(
            isinstance(e, (ConnectionError, TimeoutError)) or type(e).__name__ in ("ConnectError", "ReadTimeout",
                                                                                  "ConnectTimeout") for e in chain):
        return HubUnavailable(f"{repo_id!r}: the Hub could not be reached ({str(chain[-1])[:200]}); will retry")
    if local_miss and revision is not None and _cached_repo(repo_id, cache_dir) is not None:
        return ConfigError("revision", unavailable_message(repo_id, revision, "this revision is not cached"))
    if local_miss or any(isinstance(e, EntryNotFoundError) for e in chain):
        return ConfigError("model", unavailable_message(repo_id, revision, str(exc).strip().splitlines()[0][:300]))
    return exc


def _cached_repo(repo_id: str, cache_dir: str | Path | None = None) -> Path | None:
    """The repo's folder in the hub cache, if it is there."""
    from huggingface_hub import constants

    root = Path(cache_dir or constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    return root if root.is_dir() else None


def resolve_revision(repo_id: str, revision: str | None = None, *, cache_dir: str | Path | None = None,
                     offline: bool = False) -> str | None:
    """The commit that `revision` (None = `main`) of `repo_id` points at now, from the cache's refs
    offline or the Hub online; None when it cannot be told (not cached offline, Hub unreachable)."""
    ref = revision or "main"
    if _COMMIT.match(ref):
        return ref
    repo = _cached_repo(repo_id, cache_dir)
    if offline or hub_offline():
        ref_file = repo / "refs" / ref if repo is not None else None
        return ref_file.read_text().strip() if ref_file is not None and ref_file.is_file() else None
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return HfApi().model_info(repo_id, revision=ref).sha
    except (HfHubHTTPError, OSError, ValueError):  # the load reports what it is, with the job's id
        return None
