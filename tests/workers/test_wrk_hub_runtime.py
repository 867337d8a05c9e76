"""A worker's Runtime loads a Hub id once per process (through the offline HF cache) and keeps it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dfusion_core.errors import ConfigError
from dfusion_core.hub import HubOptions
from dfusion_core.registry import ModelRef
from tests.hubcache import REPO_ID, REVISION, build_hub_cache
from workers.runtime import Runtime


def test_runtime_loads_a_hub_id_once_and_keeps_it(tmp_path: Path) -> None:
    runtime = Runtime(models={}, device=torch.device("cpu"),
                      hub=HubOptions(cache_dir=build_hub_cache(tmp_path), offline=True))
    model = runtime.model(ModelRef(REPO_ID))
    assert runtime.model(ModelRef(REPO_ID)) is model and runtime.model(REPO_ID) is model
    assert runtime.policy(ModelRef(REPO_ID), store=None, job_id="j", version=0) is model  # type: ignore[arg-type]
    pinned = runtime.model(ModelRef(REPO_ID, revision=REVISION))
    assert pinned is not model and pinned.name == REPO_ID
    with pytest.raises(ConfigError, match="org/absent"):
        runtime.model(ModelRef("org/absent"))
