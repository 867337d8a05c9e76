"""Both job-state backends behind one fixture: every test taking `store` runs on each, so the
Redis service and the embedded runner keep one contract (services.state.protocol)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from services.state import JobStore
from services.state.memory import MemoryJobStore
from services.state.redis import RedisJobStore


@pytest.fixture
def redis_store(redis_url: str) -> Iterator[RedisJobStore]:
    """The Redis backend on the session's Redis; every `dfusion:` key is removed afterwards."""
    st = RedisJobStore.from_url(redis_url)
    yield st
    for key in st.r.scan_iter(match="dfusion:*"):
        st.r.delete(key)
    st.r.close()


@pytest.fixture(params=["redis", "memory"])
def store(request: pytest.FixtureRequest) -> JobStore:
    if request.param == "memory":
        return MemoryJobStore()
    return request.getfixturevalue("redis_store")


@pytest.fixture
def job(store: JobStore) -> str:
    """A fresh queued job of tenant 'acme'."""
    job_id = uuid.uuid4().hex
    store.create_job(job_id, "acme", {"prompts": ["a cat"], "model": "tiny"})
    return job_id
