"""Leases and redelivery without a stack: unit names, the heartbeat keeping a lease past its TTL,
and which unacked broker messages the Redis sweep brings back (kombu's message layout, real Redis)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from devstack.procs import free_port, wait_for
from dfusion_core.errors import ConfigError
from dfusion_core.storage import LocalDirStore
from services.state import JobStatus, LeaseLost
from services.state.memory import MemoryJobStore
from services.state.redis import RedisJobStore
from services.storage import IO_THREADS, S3Store
from tests.infra import SeaweedServer, run_redis
from tests.integration.stack_helpers import small_job
from workers.leases import FencedStore, Heartbeat, new_lease, unit_of
from workers.redelivery import PRIORITY_SEP, UNACKED, UNACKED_INDEX, Unacked, lost, orphans


def test_unit_names() -> None:
    assert unit_of("dfusion.sample", {"job_id": "j", "batch": 2, "epoch": 0, "prompt": 1}) == "sample-e0-p1-b2"
    assert unit_of("dfusion.score_targets", {"job_id": "j", "epoch": 1, "prompt": 0, "chunk": 3}) == \
        "score_targets-e1-p0-c3"
    assert unit_of("dfusion.train", {"job_id": "j", "epoch": 4}) == "train-e4"
    assert unit_of("dfusion.start_job", {"job_id": "j"}) == "start_job"


#: Long enough that a loaded machine's scheduling delays (a renewal comes every TTL/3) cannot lose it.
TTL_S = 3.0


class CountingStore(MemoryJobStore):
    """The in-memory store, counting its lease renewals: what the tests below wait on, not the clock."""

    def __init__(self) -> None:
        super().__init__()
        self.renewals = 0

    def renew_lease(self, job_id: str, lease, ttl_s: float) -> bool:  # type: ignore[no-untyped-def]
        self.renewals += 1
        return super().renew_lease(job_id, lease, ttl_s)


def test_heartbeat_keeps_the_lease_past_its_ttl_and_releases_it() -> None:
    """Four renewals span more than the TTL (one every TTL/3): the lease is alive past it only because
    it was renewed. The test waits for the renewals, not for a time, so a slow machine only waits longer."""
    state = CountingStore()
    state.create_job("j1", "acme", {})
    mine, other = new_lease("train-e0", "t1", "w1"), new_lease("train-e0", "t2", "w2")
    assert state.acquire_lease("j1", mine, TTL_S) is None
    taken = time.monotonic()
    with Heartbeat(state, "j1", mine, TTL_S) as beat:
        wait_for(lambda: state.renewals >= 4, 20 * TTL_S, "four renewals")
        assert time.monotonic() - taken > TTL_S
        assert state.acquire_lease("j1", other, TTL_S) == mine
        assert [lease.worker for lease in state.leases("j1")] == ["w1"]
    assert not beat.lost
    assert state.leases("j1") == []
    assert state.acquire_lease("j1", other, TTL_S) is None


def test_a_lost_lease_is_never_taken_again() -> None:
    """A renewal that finds the lease gone (this process stalled past the TTL; another delivery
    may have run the unit and released it meanwhile) leaves it gone: the beat stops, and every
    check from then on raises LeaseLost."""
    state = CountingStore()
    state.create_job("j1", "acme", {})
    mine = new_lease("train-e0", "t1", "w1")
    assert state.acquire_lease("j1", mine, TTL_S) is None
    with Heartbeat(state, "j1", mine, TTL_S) as beat:
        beat.check()
        state.release_lease("j1", mine)  # what its expiry does, without the wait
        wait_for(lambda: beat.lost, 20 * TTL_S, "the heartbeat to find its lease gone")
        wait_for(lambda: not beat._thread.is_alive(), 20 * TTL_S, "the heartbeat to stop")
        renewals = state.renewals
        assert state.leases("j1") == []
        with pytest.raises(LeaseLost):
            beat.check()
        assert state.renewals == renewals  # a lost lease is not even asked for again


def test_fenced_store_puts_only_while_the_lease_is_held(redis_url: str, tmp_path: Path) -> None:
    """Object writes cannot be in a Lua script: each one renews the lease first. Once another
    delivery holds the unit, a stale task's put or delete raises LeaseLost and the winner's object
    keeps its bytes. A put that lands is entered in the job's stored bytes; a refused one is not."""
    state, store = RedisJobStore.from_url(redis_url), LocalDirStore(tmp_path)
    job = uuid.uuid4().hex
    key = f"jobs/{job}/a.png"
    state.create_job(job, "acme", {})
    stale, winner = new_lease("train-e0", "t1", "w1"), new_lease("train-e0", "t2", "w2")
    assert state.acquire_lease(job, stale, 5) is None
    with Heartbeat(state, job, stale, 5) as beat:
        fenced = FencedStore(store, beat, state.fenced(job, stale))
        fenced.put(key, b"stale")
        fenced.put(key, b"stale")  # written again: counted once
        assert (state.get_job(job).stored_bytes, state.get_job(job).stored_objects) == (5, 1)
        state.release_lease(job, stale)  # its expiry, while the process stalls
        assert state.acquire_lease(job, winner, 5) is None
        store.put(key, b"winner")
        with pytest.raises(LeaseLost):
            fenced.put(key, b"stale again")
        with pytest.raises(LeaseLost):
            fenced.delete(key)
        assert fenced.get(key) == b"winner" and fenced.list() == [key]
        assert state.get_job(job).stored_bytes == 5
    assert state.leases(job) == [winner]
    state.delete_job(job)


class CountingRedis(RedisJobStore):
    """The Redis store, counting lease renewals (a batch of puts should cost one)."""

    renewals = 0

    def renew_lease(self, job_id: str, lease, ttl_s: float) -> bool:  # type: ignore[no-untyped-def]
        self.renewals += 1
        return super().renew_lease(job_id, lease, ttl_s)


def _batch(job: str, tag: str, n: int = 6) -> list[tuple[str, bytes, str]]:
    return [(f"jobs/{job}/e0/images/{tag}{i}.png", bytes(10 + i), "image/png") for i in range(n)]


def _ledger(state: RedisJobStore, job: str) -> tuple[int, int]:
    rec = state.get_job(job)
    return rec.stored_bytes, rec.stored_objects


def _s3(server: SeaweedServer) -> S3Store:
    return S3Store(server.endpoint, server.access_key, server.secret_key, "dfusion-test")


def test_a_batch_of_puts_checks_the_lease_once_and_counts_each_key_once(
        redis_url: str, seaweed_server: SeaweedServer) -> None:
    """`put_many` (a task's outputs, on real Redis and S3): one lease renewal for the whole batch,
    every object stored, and the ledger entering each key once at its latest size, a key written
    before included."""
    state, store = CountingRedis.from_url(redis_url), _s3(seaweed_server)
    job, lease = uuid.uuid4().hex, new_lease("sample-e0-p0-b0", "t1", "w1")
    state.create_job(job, "acme", {})
    assert state.acquire_lease(job, lease, 30) is None
    batch = _batch(job, "s")
    with Heartbeat(state, job, lease, 30) as beat:
        fenced = FencedStore(store, beat, state.fenced(job, lease))
        fenced.put(batch[0][0], b"an older, longer write of this key")
        renewals = state.renewals
        fenced.put_many(batch)
        assert state.renewals == renewals + 1
    assert sorted(store.list(f"jobs/{job}/")) == sorted(k for k, _, _ in batch)
    assert _ledger(state, job) == (sum(len(d) for _, d, _ in batch), len(batch))
    state.delete_job(job)


def test_a_batch_after_a_lost_lease_stores_nothing_and_one_cut_short_records_nothing(
        redis_url: str, seaweed_server: SeaweedServer) -> None:
    """A batch whose check finds the lease lost stores nothing. A batch past its check when the
    lease is lost (the process stalled mid-batch; another delivery took the unit) lands, at the
    unit's keys, but enters nothing in the ledger: the winner's batch of the same keys counts them once."""
    state, s3 = RedisJobStore.from_url(redis_url), _s3(seaweed_server)
    job = uuid.uuid4().hex
    stale, winner = new_lease("sample-e0-p0-b0", "t1", "w1"), new_lease("sample-e0-p0-b0", "t2", "w2")
    state.create_job(job, "acme", {})
    batch = _batch(job, "s")

    class Stalling(S3Store):
        """The real store; its last put of the batch comes after the stale task lost its lease."""

        def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
            if key == batch[-1][0]:
                state.release_lease(job, stale)  # its expiry, while the process stalls
                assert state.acquire_lease(job, winner, 30) is None
            super().put(key, data, content_type)

    assert state.acquire_lease(job, stale, 30) is None
    with Heartbeat(state, job, stale, 30) as beat:
        fenced = FencedStore(Stalling(seaweed_server.endpoint, seaweed_server.access_key,
                                      seaweed_server.secret_key, "dfusion-test"), beat, state.fenced(job, stale))
        with pytest.raises(LeaseLost):
            fenced.put_many(batch)
        assert sorted(s3.list(f"jobs/{job}/")) == sorted(k for k, _, _ in batch)
        assert _ledger(state, job) == (0, 0)
        with pytest.raises(LeaseLost):
            fenced.put_many(_batch(job, "late"))
        assert len(s3.list(f"jobs/{job}/")) == len(batch)
    with Heartbeat(state, job, winner, 30) as beat:
        FencedStore(s3, beat, state.fenced(job, winner)).put_many(batch)
    assert _ledger(state, job) == (sum(len(d) for _, d, _ in batch), len(batch))
    state.delete_job(job)


def test_a_put_issued_long_after_the_batch_s_check_renews_first(redis_url: str, tmp_path: Path) -> None:
    """The batch's one check covers the puts issued soon after it. Here the first IO_THREADS (the
    pool's width) stall past a third of the TTL, and the unit passes to another delivery meanwhile: the
    puts queued behind them renew before they go out, find the lease lost, and store nothing."""
    state, ttl = RedisJobStore.from_url(redis_url), 1.5
    job = uuid.uuid4().hex
    stale, winner = new_lease("sample-e0-p0-b0", "t1", "w1"), new_lease("sample-e0-p0-b0", "t2", "w2")
    state.create_job(job, "acme", {})
    batch = _batch(job, "s", IO_THREADS + 2)

    class Stalling(LocalDirStore):
        def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
            if key == batch[0][0]:
                state.release_lease(job, stale)  # its expiry, while the process stalls
                assert state.acquire_lease(job, winner, 30) is None
            if key in {k for k, _, _ in batch[:IO_THREADS]}:
                time.sleep(ttl / 3 + 0.1)
            super().put(key, data, content_type)

    assert state.acquire_lease(job, stale, ttl) is None
    store = Stalling(tmp_path)
    with Heartbeat(state, job, stale, ttl) as beat, pytest.raises(LeaseLost):
        FencedStore(store, beat, state.fenced(job, stale)).put_many(batch)
    assert sorted(store.list()) == sorted(k for k, _, _ in batch[:IO_THREADS])
    assert _ledger(state, job) == (0, 0)
    state.delete_job(job)


def test_a_failed_put_in_a_batch_leaves_the_others_in_the_ledger(
        redis_url: str, seaweed_server: SeaweedServer) -> None:
    """One put of a batch refused: the error reaches the task, and the ledger holds exactly what
    landed, so it still equals the store."""
    state, store = RedisJobStore.from_url(redis_url), _s3(seaweed_server)
    job, lease = uuid.uuid4().hex, new_lease("fuse-e0-p0-c0", "t1", "w1")
    state.create_job(job, "acme", {})
    assert state.acquire_lease(job, lease, 30) is None
    batch = [*_batch(job, "k", 3), (f"jobs/{job}/e0//bad.png", b"x", "image/png"), *_batch(job, "m", 2)]
    with Heartbeat(state, job, lease, 30) as beat, pytest.raises(ConfigError):
        FencedStore(store, beat, state.fenced(job, lease)).put_many(batch)
    landed = store.list(f"jobs/{job}/")
    assert len(landed) == 5
    assert _ledger(state, job) == (sum(len(store.get(k)) for k in landed), len(landed))
    state.delete_job(job)


def test_a_unit_redone_after_a_crash_counts_its_objects_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Through the task wrapper (its lease, fenced state and store are the production code): a first
    delivery stores its object and dies before its commit; the redelivery writes the same key again
    and commits; a duplicate of the committed unit returns at once. The job's stored bytes count the
    object once, and equal what the store holds under the job's prefix."""
    from types import SimpleNamespace

    from workers import celery_app
    from workers.runtime import Runtime
    from workers.stages import Context

    state, store = MemoryJobStore(), LocalDirStore(tmp_path)
    state.create_job("j1", "acme", {})
    ctx = Context(state=state, store=store, dispatch=lambda name, **kw: None, runtime=Runtime(models={}))
    monkeypatch.setattr(celery_app, "context", lambda: ctx)
    monkeypatch.setattr("workers.telemetry.duplicate", lambda name: None)  # no telemetry Redis here
    key, runs = "jobs/j1/e0/images/e0-p000-s000.png", []

    def stage(c: Context, job_id: str, **_: int) -> None:
        c.store.put(key, b"12345")
        runs.append(job_id)
        if len(runs) == 1:
            raise ConnectionError("the worker died before its commit")

    kwargs = {"epoch": 0, "prompt": 0, "batch": 0}
    for delivery in range(3):
        task = SimpleNamespace(name="dfusion.sample", request=SimpleNamespace(id=f"t{delivery}", hostname="w@h"))
        try:
            celery_app._once(task, stage, "j1", kwargs, {})
        except ConnectionError:
            assert delivery == 0
    job = state.get_job("j1")
    assert len(runs) == 2 and state.unit_committed("j1", "sample-e0-p0-b0")
    assert (job.stored_bytes, job.stored_objects) == (5, 1) == (
        sum(len(store.get(k)) for k in store.list("jobs/j1/")), len(store.list("jobs/j1/")))


def _payload(task: str, kwargs: dict, eta: datetime | None = None) -> dict:
    """A kombu message as its Redis transport stores it in a queue list (Celery protocol 2 body)."""
    body = base64.b64encode(json.dumps([[], kwargs, {}]).encode()).decode()
    return {"body": body, "content-encoding": "utf-8", "content-type": "application/json",
            "headers": {"task": task, "id": "tid", "eta": eta.isoformat() if eta else None},
            "properties": {"body_encoding": "base64", "delivery_tag": "x"}}


def _message(task: str, kwargs: dict, eta: datetime | None = None) -> str:
    """An entry of kombu's `unacked` hash: [payload, exchange, routing_key]."""
    return json.dumps([_payload(task, kwargs, eta), "train", "train"])


def test_unacked_message_parsed() -> None:
    eta = datetime.fromtimestamp(1_700_000_000, UTC)
    msg = Unacked.parse("tag", 5.0, _message("dfusion.train", {"job_id": "j1", "epoch": 2}, eta))
    assert msg == Unacked("tag", 5.0, "j1", "train-e2", 1_700_000_000.0)
    assert Unacked.parse("tag", 5.0, _message("celery.ping", {})) is None
    assert Unacked.parse("tag", 5.0, "not json") is None


@pytest.fixture
def broker_db(redis_url: str) -> redis.Redis:
    client = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/7", decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()


def test_sweep_picks_old_messages_without_a_live_lease(broker_db: redis.Redis) -> None:
    state = RedisJobStore(broker_db)
    state.create_job("j1", "acme", {})
    now = time.time()
    rows = {  # tag -> (delivered, task, kwargs, eta)
        "dead": (now - 60, "dfusion.train", {"job_id": "j1", "epoch": 0}, None),
        "alive": (now - 60, "dfusion.fuse", {"job_id": "j1", "epoch": 0, "prompt": 0, "chunk": 0}, None),
        "fresh": (now - 2, "dfusion.sample", {"job_id": "j1", "epoch": 0, "prompt": 0, "batch": 0}, None),
        "waiting": (now - 60, "dfusion.sample", {"job_id": "j1", "epoch": 0, "prompt": 0, "batch": 1},
                    datetime.fromtimestamp(now + 30, UTC)),
    }
    for tag, (at, task, kwargs, eta) in rows.items():
        broker_db.zadd(UNACKED_INDEX, {tag: at})
        broker_db.hset(UNACKED, tag, _message(task, kwargs, eta))
    assert state.acquire_lease("j1", new_lease("fuse-e0-p0-c0", "t", "w"), 30) is None
    assert [m.tag for m in orphans(broker_db, state, grace=10, now=now)] == ["dead"]
    assert {m.tag for m in orphans(broker_db, state, grace=10, now=now + 60)} == {"dead", "fresh", "waiting"}


def test_a_stalled_job_s_unit_with_no_message_anywhere_is_lost(broker_db: redis.Redis) -> None:
    """Sampling of a 1-prompt job with 4 batches: batch 0 committed, batch 1 queued (at a priority),
    batch 2 delivered and unacked, batch 3's message gone (score-b0 queued too). Only batch 3 is lost,
    and only once the job has made no progress for the grace period with nothing running."""
    state = RedisJobStore(broker_db)
    state.create_job("j1", "acme", small_job(samples=8, batch=2))
    for unit in ("start_job", "sample-e0-p0-b0"):
        state.commit_unit("j1", unit)
    sample = {"job_id": "j1", "epoch": 0, "prompt": 0}
    broker_db.lpush(f"sample{PRIORITY_SEP}3", json.dumps(_payload("dfusion.sample", {**sample, "batch": 1})))
    broker_db.lpush("score", json.dumps(_payload("dfusion.score", {**sample, "batch": 0})))
    broker_db.hset(UNACKED, "t2", _message("dfusion.sample", {**sample, "batch": 2}))
    now = time.time()
    assert lost(broker_db, state, grace=10, now=now) == []  # first sight: progress recorded
    assert lost(broker_db, state, grace=10, now=now + 5) == []  # not stalled long enough
    lease = new_lease("sample-e0-p0-b2", "t", "w")
    assert state.acquire_lease("j1", lease, 30) is None
    assert lost(broker_db, state, grace=10, now=now + 20) == []  # something runs: not stalled
    state.release_lease("j1", lease)
    assert [(j, t.unit) for j, t in lost(broker_db, state, grace=10, now=now + 20)] == [("j1", "sample-e0-p0-b3")]
    assert lost(broker_db, state, grace=10, now=now + 25) == []  # checked once per grace period
    state.commit_unit("j1", "sample-e0-p0-b1")  # progress restarts the clock
    assert lost(broker_db, state, grace=10, now=now + 40) == []
    state.set_status("j1", JobStatus.CANCELLED)  # an ended job is never checked
    assert lost(broker_db, state, grace=10, now=now + 80) == []


def test_sweep_pages_past_the_oldest_hundred_messages(broker_db: redis.Redis) -> None:
    """Healthy long tasks are the oldest unacked messages: 120 of them, with live leases, must not
    hide the 30 newer messages whose workers died (the sweep once read only the 100 oldest)."""
    state = RedisJobStore(broker_db)
    state.create_job("j1", "acme", {})
    now = time.time()
    for i in range(150):
        kwargs = {"job_id": "j1", "epoch": 0, "prompt": i, "batch": 0}
        broker_db.zadd(UNACKED_INDEX, {f"t{i}": now - 600 + i})
        broker_db.hset(UNACKED, f"t{i}", _message("dfusion.sample", kwargs))
        if i < 120:
            assert state.acquire_lease("j1", new_lease(unit_of("dfusion.sample", kwargs), f"t{i}", "w"), 30) is None
    assert [m.tag for m in orphans(broker_db, state, grace=10, now=now)] == [f"t{i}" for i in range(120, 150)]


def test_heartbeat_outlives_redis_refusing_writes(tmp_path: Path) -> None:
    """Redis answering a renewal with an error (READONLY: a replica after a failover) costs that
    beat only: the thread goes on, and renews the lease once Redis takes writes again."""
    with run_redis(tmp_path) as url, redis.Redis.from_url(url) as admin:
        state = RedisJobStore.from_url(url)
        state.create_job("j1", "acme", {})
        lease, ttl = new_lease("train-e0", "t1", "w1"), 1.5
        assert state.acquire_lease("j1", lease, ttl) is None
        with Heartbeat(state, "j1", lease, ttl) as beat:
            admin.replicaof("127.0.0.1", free_port())  # a replica of nothing: writes are answered READONLY
            wait_for(lambda: admin.info("errorstats").get("errorstat_READONLY"), 5, "a renewal to be refused")
            admin.execute_command("REPLICAOF", "NO", "ONE")
            time.sleep(2 * ttl)  # the lease lives on renewals only
            assert state.leases("j1") == [lease]
            assert not beat.lost
        assert state.leases("j1") == []
