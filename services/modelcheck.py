"""Submit-time checks of a job's model and scorer against this deployment: a known name, or a
Hub id the workers can load. With HF_HUB_OFFLINE set, a Hub id must already be in the shared
Hugging Face cache (checked with huggingface_hub's `try_to_load_from_cache`, no torch); online,
the workers fetch it and a missing repo fails the job with a reason naming it.

`pin_revision` records in the job the commit its Hub model's revision (None = `main`) points at
when it is submitted, so every worker loads that one commit even if `main` moves meanwhile.
"""

from __future__ import annotations

import logging
from typing import TypeVar

from dfusion_core.errors import ConfigError
from dfusion_core.hub import (
    MODEL_CONFIG,
    PIPELINE_INDEX,
    is_cached,
    is_hub_id,
    resolve_revision,
    unavailable_message,
)
from services.jobspec import JobSpec
from services.settings import Settings

log = logging.getLogger(__name__)
Spec = TypeVar("Spec", bound=JobSpec)


def check_models(spec: JobSpec, settings: Settings) -> None:
    """Raise ConfigError naming the model or scorer a job asks for that this deployment cannot load."""
    if spec.model not in settings.model_names():
        if not is_hub_id(spec.model):
            raise ConfigError("model", f"unknown model {spec.model!r}; available: {', '.join(settings.model_names())}, "
                                       "or a Hugging Face Hub id ('owner/name')")
        _require_cached("model", spec.model, PIPELINE_INDEX, spec.revision, settings)
    if is_hub_id(spec.scorer):
        _require_cached("scorer", spec.scorer, MODEL_CONFIG, None, settings)


def _require_cached(field: str, repo_id: str, filename: str, revision: str | None, settings: Settings) -> None:
    if settings.hf_hub_offline and not is_cached(repo_id, filename, revision=revision, cache_dir=settings.hf_hub_cache):
        raise ConfigError(field, unavailable_message(repo_id, revision, "HF_HUB_OFFLINE is set"))


def pin_revision(spec: Spec, settings: Settings) -> Spec:
    """The spec with its Hub model's revision resolved to a commit (from the shared cache's refs
    offline, from the Hub online); unchanged for other models, or when the commit cannot be told
    (the Hub unreachable: each worker then resolves the revision as it loads)."""
    if spec.model in settings.models or not is_hub_id(spec.model):
        return spec
    commit = resolve_revision(spec.model, spec.revision, cache_dir=settings.hf_hub_cache,
                              offline=settings.hf_hub_offline)
    if commit is None:
        log.warning("revision %r of %s not resolved to a commit; workers resolve it as they load",
                    spec.revision or "main", spec.model)
        return spec
    return spec.model_copy(update={"revision": commit})
