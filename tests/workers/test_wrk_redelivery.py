"""The redelivery sweep's cost, lock, clocks and broker (workers/redelivery.py), on real Redis
servers: a sweep reads one set of active jobs and counts units (no SCAN, no unit sets), one sweep
runs at a time for as long as it takes, progress is timed by Redis, and a broker on its own Redis
gets a sweeper of its own client. kombu's messages are written as its Redis transport writes them
(tests/workers/test_wrk_leases.py builds them)."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.settings import Settings
from services.state import JobStatus
from services.state import keys as state_keys
from services.state.admission import Admission, Held
from services.state.redis import RedisJobStore
from tests.infra import run_redis
from tests.integration.stack_helpers import small_job
from tests.workers.test_wrk_leases import _message, _payload
from workers import redelivery
from workers.fairness import for_settings as fair_for_settings
from workers.redelivery import SweepLock, broker_redis_url, lost, stalled


def _db(url: str, db: int) -> str:
    return url.rsplit("/", 1)[0] + f"/{db}"


@pytest.fixture
def dbs(redis_url: str) -> Iterator[tuple[RedisJobStore, redis.Redis]]:
    """The job state on db 5 and the broker on db 6 of the suite's Redis, both empty."""
    state = RedisJobStore.from_url(_db(redis_url, 5))
    broker = redis.Redis.from_url(_db(redis_url, 6), decode_responses=True)
    for client in (state.r, broker):
        client.flushdb()
    yield state, broker
    for client in (state.r, broker):
        client.flushdb()
        client.close()


def _stalled_job(state: RedisJobStore, tenant: str = "acme") -> str:
    """A running 1-prompt job, 4 sample batches, started: its 4 sample units are outstanding."""
    job = uuid.uuid4().hex
    state.create_job(job, tenant, small_job(samples=8, batch=2))
    state.set_status(job, JobStatus.RUNNING)
    state.commit_unit(job, "start_job")
    return job


def test_a_sweep_reads_one_set_of_jobs_and_counts_units(tmp_path: Path) -> None:
    """With many keys and many units, the progress check costs one SMEMBERS (the active jobs) and
    one SCARD per job: no SCAN of the keyspace for tenants, no SMEMBERS of each job's units (it once
    did both, every 2 s). Counted in the server's own command statistics."""
    with run_redis(tmp_path) as url:
        state = RedisJobStore.from_url(url)
        jobs = [_stalled_job(state, tenant=f"t{i}") for i in range(3)]
        for job in jobs:
            for b in range(3):
                state.commit_unit(job, f"sample-e0-p0-b{b}")
        state.r.config_resetstat()
        assert stalled(state, grace=10) == {}  # first sight: marks recorded, nothing stalled
        stats = state.r.info("commandstats")
        assert "cmdstat_scan" not in stats
        assert stats["cmdstat_smembers"]["calls"] == 1
        assert stats["cmdstat_scard"]["calls"] == len(jobs)
        state.r.close()


def test_the_sweep_lock_is_held_for_the_whole_sweep_and_released_by_its_holder_only(
        dbs: tuple[RedisJobStore, redis.Redis]) -> None:
    """A sweep longer than the old fixed 1.8 s lock keeps it while it renews; another sweeper
    neither takes it nor releases it; the holder's release frees it (or leaves it for the interval)."""
    state, _ = dbs
    first, second = SweepLock(state.r), SweepLock(state.r)
    assert first.acquire() and not second.acquire()
    time.sleep(2.0)  # past the old lock's 1.8 s
    assert first.held() and not second.acquire()
    second.release()  # not its lock: nothing happens
    assert first.held() and not second.held()
    first.release()
    assert not first.held() and second.acquire()
    second.release(linger_s=5)  # the next sweep waits out the interval
    assert not first.acquire() and 0 < state.r.pttl(redelivery.LOCK_KEY) <= 5000


def test_progress_is_timed_by_redis_not_by_the_sweeping_host(
        dbs: tuple[RedisJobStore, redis.Redis], monkeypatch: pytest.MonkeyPatch) -> None:
    """Two hosts sweep in turn; the second's clock runs an hour ahead. Timed by host clocks, the
    job recorded a moment ago by the first looked stalled for an hour to the second, which resent
    its tasks at once. Timed by Redis TIME, it has stalled for no time at all. (The host's skew is
    simulated by patching `time.time` in the sweep's module: the one fake here.)"""
    state, broker = dbs
    job = _stalled_job(state)
    assert lost(broker, state, grace=10) == []  # the first host: the clock starts
    host_clock = time.time
    monkeypatch.setattr(redelivery.time, "time", lambda: host_clock() + 3600)
    assert lost(broker, state, grace=10) == []  # the second host, a moment later
    since = float(state.r.hget(redelivery.PROGRESS_KEY, job).split()[1])
    sec, usec = state.r.time()
    assert 0 <= sec + usec / 1e6 - since < 5


def test_a_broker_on_its_own_redis_gets_a_sweeper_on_its_url(
        dbs: tuple[RedisJobStore, redis.Redis], caplog: pytest.LogCaptureFixture) -> None:
    """The broker on db 6, the state on db 5: the sweeper reads kombu's queues through a client on
    the broker URL and the job state (held tasks included) through the state's, so a queued
    message and a held task are found, and only the unit with neither is lost. A RabbitMQ broker
    gets no sweeper, said once in the log. (The sweep was once off whenever the URLs differed.)"""
    state, broker = dbs
    state_url = state.r.connection_pool.connection_kwargs
    url = f"redis://{state_url['host']}:{state_url['port']}"
    settings = Settings(redis_url=f"{url}/5", broker_url=f"{url}/6", lease_ttl_s=1)
    sweeper = redelivery.for_settings(None, settings, state)
    assert sweeper is not None and sweeper.r.connection_pool.connection_kwargs["db"] == 6
    assert fair_for_settings(settings, print).admission is not None
    job = _stalled_job(state)
    sample = {"job_id": job, "epoch": 0, "prompt": 0}
    broker.lpush("sample", json.dumps(_payload("dfusion.sample", {**sample, "batch": 0})))
    held = Held("dfusion.sample", {**sample, "batch": 1}, "sample-e0-p0-b1")
    Admission(state.r, cap=1).admit(job, "sample", Held("dfusion.sample", {**sample, "batch": 0}, "sample-e0-p0-b0"))
    assert not Admission(state.r, cap=1).admit(job, "sample", held)
    now = redelivery.redis_now(state.r)
    assert lost(sweeper.r, state, sweeper.grace, now) == []
    found = lost(sweeper.r, state, sweeper.grace, now + 20)
    assert sorted(t.unit for _, t in found) == ["sample-e0-p0-b2", "sample-e0-p0-b3"]
    with caplog.at_level(logging.INFO, logger="workers.redelivery"):
        amqp = Settings(redis_url=f"{url}/5", broker_url="amqp://guest@127.0.0.1:5672//")
        assert redelivery.for_settings(None, amqp, state) is None
    assert [r.message for r in caplog.records if "not Redis" in r.message] != []
    assert broker_redis_url("rediss://h:1/2") == "rediss://h:1/2"
    assert broker_redis_url("redis+socket:///tmp/r.sock") == "unix:///tmp/r.sock"


def test_jobs_from_before_the_active_set_are_indexed_once(dbs: tuple[RedisJobStore, redis.Redis]) -> None:
    """A deployment upgraded with jobs running: their ids are only in their tenants' `active` sets.
    The first sweeper copies them into the one set (an ended job stays out), once per deployment."""
    state, _ = dbs
    running, ended = _stalled_job(state, "t1"), _stalled_job(state, "t2")
    state.set_status(ended, JobStatus.CANCELLED)
    state.r.delete(state_keys.ACTIVE_JOBS, state_keys.ACTIVE_INDEXED)  # as before the upgrade
    assert stalled(state, grace=10) == {} and state.all_active_job_ids() == []
    assert state.index_active_jobs() == 2
    assert state.all_active_job_ids() == [running]
    assert state.index_active_jobs() == 0  # done once


def test_a_sweep_that_lost_its_lock_restores_and_sends_nothing(dbs: tuple[RedisJobStore, redis.Redis]) -> None:
    """A sweep acts on a message only right after renewing its lock: once another sweeper holds
    it (this one stalled past the lock's TTL), an orphaned message and a lost unit are left to that
    one. (No broker connection or Celery app is given: touching either would raise.)"""
    state, broker = dbs
    job = _stalled_job(state)
    now = redelivery.redis_now(broker)
    broker.zadd(redelivery.UNACKED_INDEX, {"dead": now - 60})
    broker.hset(redelivery.UNACKED, "dead", _message("dfusion.sample", {"job_id": job, "epoch": 0, "prompt": 0,
                                                                         "batch": 0}))
    sweeper = redelivery.Sweeper(None, broker, state, lease_ttl_s=1)
    assert lost(broker, state, sweeper.grace) == []  # the job's clock starts
    state.r.hset(redelivery.PROGRESS_KEY, job, f"1 {now - 60}")  # and it has stalled since
    assert sweeper.lock.acquire()
    state.r.set(redelivery.LOCK_KEY, "another sweeper")  # ours expired; another took it
    assert sweeper.sweep(None) == []
    assert broker.hexists(redelivery.UNACKED, "dead")
