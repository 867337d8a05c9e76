"""Retention against a real Redis and SeaweedFS: a purge removes exactly one job's objects and keys,
leaves every other job's and tenant's byte for byte, and refuses a job that may still change.

A private Redis per module (expired-job sweeps look at every tenant, so no other test's jobs may be
there) and a fresh bucket per test on the session's SeaweedFS.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.retention import PurgeRefused, expired_jobs, purge_expired, purge_job
from services.state import JobStatus
from services.state.redis import RedisJobStore
from services.state.types import JobNotFound, Lease
from services.storage import S3Store, StorageUnavailable
from services.telemetry import Telemetry
from tests.infra import run_redis, run_seaweed
from workers.retention import RetentionSweeper

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_redis(Path(tmp_path_factory.mktemp("retention-redis"))) as url:
        yield url


@pytest.fixture
def state(private_redis: str) -> Iterator[RedisJobStore]:
    st = RedisJobStore.from_url(private_redis)
    st.r.flushdb()
    yield st
    st.r.close()


@pytest.fixture(scope="module")
def bucket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Store]:
    """A SeaweedFS of this module's own, like its Redis: `store` empties the bucket before each
    test and a snapshot reads all of it, which no shared bucket allows. (Not a new bucket on the
    session's server either: each bucket takes volumes, and late in the suite that server,
    -volume.max=16, has none left, so a new bucket answers 500 for good.)"""
    with run_seaweed(Path(tmp_path_factory.mktemp("retention-s3"))) as server:
        store = S3Store(server.endpoint, server.access_key, server.secret_key, "retention")
        deadline = time.monotonic() + 60  # SeaweedFS answers 500 until the bucket's volumes exist
        while True:
            try:
                store.put("probe", b"ok")
                break
            except StorageUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield store


@pytest.fixture
def store(bucket: S3Store) -> S3Store:
    for key in bucket.list(""):
        bucket.delete(key)
    return bucket


def make_job(state: RedisJobStore, store: S3Store, tenant: str, status: JobStatus, job_id: str | None = None) -> str:
    """A job with the keys a real one has (records, counters, fan-in, commits, metrics, a checkpoint)
    and a few objects, left in `status`."""
    job_id = job_id or uuid.uuid4().hex
    state.create_job(job_id, tenant, {"model": "sim"})
    if status != JobStatus.QUEUED:
        state.set_status(job_id, JobStatus.RUNNING)
    state.put_sample(job_id, "e0-p000-s000", {"score": None})
    state.update_sample(job_id, "e0-p000-s000", {"score": 0.5})
    state.put_pair(job_id, "e0-p000-k000", {"base": "e0-p000-s000"})
    state.mark_done(job_id, "scored-e0-p0", "b0", 1)
    state.commit_unit(job_id, "sample-e0-p0-b0")
    state.append_metrics(job_id, {"epoch": 0, "loss": 0.1})
    state.put_checkpoint(job_id, 1, {"key": f"jobs/{job_id}/checkpoints/1/w.safetensors"})
    Telemetry(state.r).record_produced(job_id, {"samples": 1})
    for name in ("e0/samples/e0-p000-s000.safetensors", "e0/images/e0-p000-s000.png", "checkpoints/1/w.safetensors"):
        store.put(f"jobs/{job_id}/{name}", f"{job_id}/{name}".encode())
        state.record_object(job_id, f"jobs/{job_id}/{name}", len(f"{job_id}/{name}"))
    if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED):
        state.set_status(job_id, status, "boom" if status == JobStatus.FAILED else None)
    return job_id


def snapshot(state: RedisJobStore, store: S3Store) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """Every Redis key with its serialized value (DUMP, read on a raw client), and every object's bytes."""
    with redis.Redis(connection_pool=redis.ConnectionPool(**{
            **state.r.connection_pool.connection_kwargs, "decode_responses": False})) as raw:
        keys = {k.decode(): raw.dump(k) for k in raw.scan_iter(count=1000)}
    return keys, {k: store.get(k) for k in store.list("")}


def test_purge_removes_one_job_and_nothing_of_any_other(state: RedisJobStore, store: S3Store) -> None:
    purged = "a1b2c3"
    # the other tenant's job id starts with the purged one's: no prefix of a key or object may bleed
    a2 = make_job(state, store, "alice", JobStatus.CANCELLED)
    b1 = make_job(state, store, "bob", JobStatus.SUCCEEDED, job_id=purged + "d4")
    b2 = make_job(state, store, "bob", JobStatus.RUNNING)
    make_job(state, store, "alice", JobStatus.SUCCEEDED, job_id=purged)
    before_keys, before_objects = snapshot(state, store)

    result = purge_job(state, store, purged, Telemetry(state.r).forget_job)

    assert (result.job_id, result.tenant, result.status, result.objects) == (purged, "alice", JobStatus.SUCCEEDED, 3)
    assert result.stored_bytes == sum(len(v) for k, v in before_objects.items() if k.startswith(f"jobs/{purged}/"))
    after_keys, after_objects = snapshot(state, store)
    assert after_objects == {k: v for k, v in before_objects.items() if not k.startswith(f"jobs/{purged}/")}
    assert len(before_objects) - len(after_objects) == 3
    changed = {"dfusion:tenant:alice:jobs"}  # the purged job's entry leaves its tenant's index
    gone = {k for k in before_keys if "{" + purged + "}" in k or k == f"dfusion:telemetry:seen:{purged}"}
    assert gone and set(after_keys) == set(before_keys) - gone
    assert {k: v for k, v in after_keys.items() if k not in changed} == {
        k: v for k, v in before_keys.items() if k not in changed | gone}
    assert [j.job_id for j in state.list_jobs("alice")] == [a2]
    assert {j.job_id for j in state.list_jobs("bob")} == {b1, b2}
    assert state.get_counts(b1)["samples"] == 1 and state.list_checkpoints(b1)
    with pytest.raises(JobNotFound):
        state.get_job(purged)
    with pytest.raises(JobNotFound):
        purge_job(state, store, purged)  # twice: it is gone


@pytest.mark.parametrize("status", [JobStatus.QUEUED, JobStatus.RUNNING])
def test_a_job_that_has_not_ended_is_refused_naming_its_status(state, store, status) -> None:
    job = make_job(state, store, "alice", status)
    before = snapshot(state, store)
    with pytest.raises(PurgeRefused, match=f"job {job} is {status.value}; only a succeeded, failed or cancelled"):
        purge_job(state, store, job)
    assert snapshot(state, store) == before


def test_a_cancelled_job_waits_for_its_running_units(state, store) -> None:
    job = make_job(state, store, "alice", JobStatus.CANCELLED)
    lease = Lease("fuse-e0-p0-c0", "w1", "t1", time.time(), uuid.uuid4().hex)
    assert state.acquire_lease(job, lease, 30) is None
    with pytest.raises(PurgeRefused, match="is cancelled but 1 of its units are still running"):
        purge_job(state, store, job)
    assert store.list(f"jobs/{job}/")
    state.release_lease(job, lease)
    assert purge_job(state, store, job, Telemetry(state.r).forget_job).objects == 3
    assert not store.list(f"jobs/{job}/") and not list(state.r.scan_iter(match=f"*{job}*"))


def test_expired_jobs_are_the_ended_ones_past_the_period(state, store) -> None:
    old = [make_job(state, store, t, s) for t, s in
           (("alice", JobStatus.SUCCEEDED), ("bob", JobStatus.FAILED), ("bob", JobStatus.CANCELLED))]
    running = make_job(state, store, "alice", JobStatus.RUNNING)
    now = time.time()
    assert expired_jobs(state, retention_s=3600, now=now) == []
    assert {j.job_id for j in expired_jobs(state, retention_s=3600, now=now + 7200)} == set(old)
    done = purge_expired(state, store, retention_s=3600, now=now + 7200)
    assert {r.job_id for r in done} == set(old)
    assert [j.job_id for j in state.list_jobs("alice")] == [running] and state.list_jobs("bob") == []
    assert {k.split("/")[1] for k in store.list("jobs/")} == {running}


def test_one_sweeper_sweeps_per_interval(state, store) -> None:
    job = make_job(state, store, "alice", JobStatus.SUCCEEDED)
    tiny = 1e-9  # days: every ended job is past it
    first = RetentionSweeper(state.r, state, store, tiny, interval_s=60)
    second = RetentionSweeper(state.r, state, store, tiny, interval_s=60)
    make_job(state, store, "bob", JobStatus.SUCCEEDED)
    assert first.sweep_once() == 2
    make_job(state, store, "bob", JobStatus.SUCCEEDED)
    assert second.sweep_once() == 0  # the first holds this interval's lock
    with pytest.raises(JobNotFound):
        state.get_job(job)
