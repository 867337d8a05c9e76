"""Both compare-record backends keep one contract (services.state.compares): stored records read back
equal, oldest first per job, unknown ids are CompareNotFound, bad ids ConfigError; and the request's
rules (services.compare): thresholds from the job, versions and job status checked."""

from __future__ import annotations

import time

import pytest

from dfusion_core.errors import ConfigError
from services.compare import (
    ACTIVE_FOR_S,
    MAX_ACTIVE_COMPARES,
    MAX_TENANT_COMPARES,
    CompareCreate,
    CompareNotFound,
    CompareRecord,
    CompareStatus,
    JobNotFinished,
    TooManyCompares,
    check_room,
    resolve,
)
from services.state.compares import CompareStore, MemoryCompareStore, RedisCompareStore, set_status
from services.state.redis import RedisJobStore
from services.state.types import JobRecord, JobStatus


@pytest.fixture(params=["redis", "memory"])
def compares(request: pytest.FixtureRequest) -> CompareStore:
    if request.param == "memory":
        return MemoryCompareStore()
    return RedisCompareStore(request.getfixturevalue("redis_store").r)


def _record(cid: str, job_id: str = "j1", at: float = 1.0) -> CompareRecord:
    return CompareRecord(id=cid, job_id=job_id, prompt="a cat", items=["cat"], mask_thresholds=[0.5], seeds=[0, 1],
                         version=1, created_at=at, updated_at=at)


def test_records_read_back_per_job_oldest_first(compares: CompareStore) -> None:
    compares.put(_record("b", at=2.0))
    compares.put(_record("a", at=1.0))
    compares.put(_record("c", job_id="j2"))
    assert compares.get("j1", "a") == _record("a", at=1.0)
    assert [r.id for r in compares.list("j1")] == ["a", "b"]
    assert compares.list("j3") == []


def test_status_moves_with_its_results_and_errors(compares: CompareStore) -> None:
    compares.put(_record("a"))
    running = set_status(compares, "j1", "a", CompareStatus.RUNNING)
    assert compares.get("j1", "a") == running and running.updated_at > 1.0
    failed = set_status(compares, "j1", "a", CompareStatus.FAILED, error="compare: RuntimeError: x")
    assert (compares.get("j1", "a").status, compares.get("j1", "a").error) == (CompareStatus.FAILED, failed.error)


def test_unknown_and_malformed_ids(compares: CompareStore) -> None:
    with pytest.raises(CompareNotFound, match="compare not found: nope"):
        compares.get("j1", "nope")
    with pytest.raises(ConfigError, match="compare_id"):
        compares.get("j1", "../x")


def test_a_deleted_job_takes_its_compares_along(redis_store: RedisJobStore) -> None:
    redis_store.create_job("j9", "acme", {"prompts": [{"text": "a cat"}]})
    compares = RedisCompareStore(redis_store.r)
    compares.put(_record("a", job_id="j9"))
    redis_store.delete_job("j9")
    assert compares.list("j9") == []


def test_a_tenant_has_at_most_limit_compares_queued_or_running_over_its_jobs(compares: CompareStore) -> None:
    """Counted over the tenant's jobs, not per job: ended and stale compares no longer count, a
    refused one is not stored, and other tenants are not affected."""
    now, limit = 10_000.0, 3
    for i in range(limit):
        compares.admit("acme", _record(f"a{i}", job_id=f"j{i}", at=now - 10), limit, now)
    with pytest.raises(TooManyCompares, match=f"^tenant acme already has {limit} compares queued or running"):
        compares.admit("acme", _record("x", job_id="j9", at=now), limit, now)
    assert compares.list("j9") == []
    compares.admit("globex", _record("g", job_id="j9", at=now), limit, now)
    set_status(compares, "j0", "a0", CompareStatus.FAILED, error="compare: RuntimeError: x")
    compares.admit("acme", _record("b", job_id="j9", at=now), limit, now)  # in the ended one's place
    with pytest.raises(TooManyCompares):
        compares.admit("acme", _record("y", job_id="j1", at=now), limit, now)
    later = now + ACTIVE_FOR_S - 5  # a0..a2 were asked for over ACTIVE_FOR_S ago: their workers gave up
    compares.admit("acme", _record("c", job_id="j1", at=later), limit, later)
    assert [r.id for r in compares.list("j1")] == ["a1", "c"] and compares.get("j9", "b").status == CompareStatus.QUEUED


def test_a_compare_whose_job_was_deleted_no_longer_counts(redis_store: RedisJobStore) -> None:
    compares = RedisCompareStore(redis_store.r)
    redis_store.create_job("j9", "acme", {"prompts": [{"text": "a cat"}]})
    compares.admit("acme", _record("a", job_id="j9"), 1, 1.0)
    with pytest.raises(TooManyCompares):
        compares.admit("acme", _record("b"), 1, 1.0)
    redis_store.delete_job("j9")
    compares.admit("acme", _record("b"), 1, 1.0)


def test_the_tenant_limit_is_the_places_fair_admission_gives_its_running_jobs() -> None:
    from services.settings import Settings

    default = {name: field.default for name, field in Settings.model_fields.items()}
    assert default["queued_per_job"] * default["max_concurrent_jobs_per_tenant"] == MAX_TENANT_COMPARES
    assert MAX_TENANT_COMPARES >= MAX_ACTIVE_COMPARES  # one job alone can still have all of its own


def _job(status: JobStatus) -> JobRecord:
    spec = {"prompts": [{"text": "a cat and a dog", "items": ["cat", "dog"], "mask_thresholds": [0.2, 0.3]}]}
    return JobRecord(job_id="j1", tenant="acme", status=status, spec=spec, error=None, created_at=0.0,
                     updated_at=0.0, policy_version=2)


def test_resolve_takes_the_latest_version_and_the_jobs_thresholds() -> None:
    body = CompareCreate(prompt="a dog and a bird", items=["dog", "bird"], seeds=2)
    record = resolve(_job(JobStatus.SUCCEEDED), [2, 1], body, "c1", time.time())
    assert (record.version, record.seeds, record.mask_thresholds) == (2, [0, 1], [0.3, 0.01])
    assert record.status == CompareStatus.QUEUED


@pytest.mark.parametrize("status", [JobStatus.QUEUED, JobStatus.RUNNING])
def test_resolve_refuses_a_job_still_running(status: JobStatus) -> None:
    with pytest.raises(JobNotFinished, match=f"job: j1 is {status.value}"):
        resolve(_job(status), [1], CompareCreate(prompt="a cat"), "c1", 0.0)


def test_resolve_names_the_version() -> None:
    with pytest.raises(ConfigError, match=r"^version: unknown version 3; job j1 has versions 1, 2$"):
        resolve(_job(JobStatus.SUCCEEDED), [1, 2], CompareCreate(prompt="a cat", version=3), "c1", 0.0)
    with pytest.raises(ConfigError, match="^version: job j1 published no trained policy version"):
        resolve(_job(JobStatus.CANCELLED), [], CompareCreate(prompt="a cat"), "c1", 0.0)


def test_room_counts_only_recent_unfinished_compares() -> None:
    now = 10_000.0
    recent = [_record(f"r{i}", at=now - 10) for i in range(MAX_ACTIVE_COMPARES - 1)]
    check_room("j1", recent, now)
    done = _record("d", at=now).model_copy(update={"status": CompareStatus.SUCCEEDED})
    stale = _record("s", at=now - ACTIVE_FOR_S - 1)  # its worker gave up on it: it blocks nothing
    check_room("j1", [*recent, done, stale], now)
    with pytest.raises(TooManyCompares, match=f"job j1 already has {MAX_ACTIVE_COMPARES} compares"):
        check_room("j1", [*recent, _record("x", at=now)], now)
