"""Submitting a Hub id: with HF_HUB_OFFLINE set, the API checks the shared HF cache and refuses an
uncached id with a 422 naming it (tests/hubcache.py builds the cache; nothing downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.settings import Settings
from tests.api.api_helpers import LIMITS
from tests.hubcache import REPO_ID, REVISION, build_hub_cache

BODY = {"prompts": [{"text": "a red and woolen dog", "items": ["dog"], "mask_thresholds": [0.03]}],
        "samples_per_prompt": 4, "sampling": {"num_steps": 2}}


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_hub_cache(tmp_path_factory.mktemp("hf_home"))


@pytest.fixture
def api_settings(s3_settings: Settings, hub_cache: Path) -> Settings:
    return s3_settings.model_copy(update={**LIMITS, "hf_hub_offline": True, "hf_hub_cache": hub_cache})


def test_uncached_hub_id_is_a_422_naming_it(client: TestClient, acme: dict[str, str]) -> None:
    r = client.post("/v1/jobs", json={**BODY, "model": "org/not-cached"}, headers=acme)
    assert r.status_code == 422, r.text
    assert "org/not-cached" in r.text and "Hugging Face cache" in r.text


@pytest.mark.parametrize("revision", ["main", None])
def test_cached_hub_id_is_accepted_pinned_to_its_commit(client: TestClient, acme: dict[str, str],
                                                       revision: str | None) -> None:
    """The job records the commit `main` points at when submitted: every worker loads that one,
    even if `main` moves while the job runs."""
    r = client.post("/v1/jobs", json={**BODY, "model": REPO_ID, "revision": revision}, headers=acme)
    assert r.status_code == 202, r.text
    job = client.get(f"/v1/jobs/{r.json()['id']}", headers=acme).json()
    assert job["spec"]["model"] == REPO_ID and job["spec"]["revision"] == REVISION and job["spec"]["variant"] is None


def test_revision_of_a_built_in_name_is_refused(client: TestClient, acme: dict[str, str]) -> None:
    r = client.post("/v1/jobs", json={**BODY, "model": "tiny", "revision": "main"}, headers=acme)
    assert r.status_code == 422 and "revision" in r.text


def test_uncached_hub_scorer_is_a_422_naming_it(client: TestClient, acme: dict[str, str]) -> None:
    r = client.post("/v1/jobs", json={**BODY, "scorer": "openai/clip-not-cached"}, headers=acme)
    assert r.status_code == 422 and "openai/clip-not-cached" in r.text
