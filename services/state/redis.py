"""Job state in Redis: the service's JobStore (see services.state.protocol for the contract).

Workers are redelivered (acks_late), so every write here is idempotent or checked: records are
insert-once with their counters bumped in the same atomic step, fan-in fires exactly once, status
moves only along allowed transitions, and the policy version advances by compare-and-set. A
store from `fenced` writes only while a task's lease holds, checked in the write's own script or
transaction (services.state.scripts.FENCE). Keys come from services.state.keys.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Mapping
from typing import Any

import redis

from dfusion_core.errors import ConfigError
from services.state import keys
from services.state.redis_units import RedisCoordination, mapped
from services.state.scripts import CAS_POLICY, CREATE, PUT_ONCE, RECORD_OBJECTS, TRANSITION
from services.state.types import (
    COUNTER_NAMES,
    TRANSITIONS,
    InvalidTransition,
    JobExists,
    JobNotFound,
    JobRecord,
    JobStatus,
    LeaseLost,
    StateError,
    TooManyJobs,
    check_counter,
    check_id,
    check_object,
    check_version,
    dumps,
    metrics_epoch,
)

__all__ = ["RedisJobStore", "mapped", "open_state"]

#: A reply takes milliseconds; without a timeout a peer that vanished without closing the connection
#: blocks the caller for good, a lease's heartbeat included (redis-py then retries a few times).
SOCKET_TIMEOUT_S = 5.0


class RedisJobStore(RedisCoordination):
    """JobStore on Redis; one instance per process wraps one Redis connection pool. Fan-in, unit
    commits and leases: `RedisCoordination` (services/state/redis_units.py)."""

    def __init__(self, client: redis.Redis) -> None:
        if not client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ConfigError("client", "RedisJobStore needs a Redis client built with decode_responses=True")
        # redis-py types replies as bytes | str; decode_responses=True (checked above) makes them str.
        self.r: Any = client
        self._create = client.register_script(CREATE)
        self._transition = client.register_script(TRANSITION)
        self._put_once = client.register_script(PUT_ONCE)
        self._cas_policy = client.register_script(CAS_POLICY)
        self._record_objects = client.register_script(RECORD_OBJECTS)
        self._register_coordination(client)

    @classmethod
    def from_url(cls, url: str) -> RedisJobStore:
        return cls(redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=3,
                                        socket_timeout=SOCKET_TIMEOUT_S, health_check_interval=30))

    # --- jobs ---
    @mapped
    def create_job(
        self, job_id: str, tenant: str, spec: dict[str, Any], max_active: int | None = None
    ) -> JobRecord:
        """Create a queued job; with `max_active`, refuse (TooManyJobs) when the tenant is at the limit."""
        now = repr(time.time())
        args: list[str | int] = [job_id, tenant, dumps(spec), now, -1 if max_active is None else max_active]
        rc = self._create(keys=[keys.job(job_id), keys.tenant(tenant, "jobs"), keys.tenant(tenant, "active"),
                                keys.ACTIVE_JOBS], args=args)
        if rc == -1:
            raise JobExists(f"job {job_id} already exists")
        if rc == -2:
            raise TooManyJobs(f"tenant {tenant} already has {max_active} active jobs; wait for one to finish")
        return self.get_job(job_id)

    @mapped
    def get_job(self, job_id: str) -> JobRecord:
        h = self.r.hgetall(keys.job(job_id))
        if not h:
            raise JobNotFound(job_id)
        return JobRecord.from_hash(h)

    @mapped
    def job_stamp(self, job_id: str) -> tuple[JobStatus, float]:
        status, created_at = self.r.hmget(keys.job(job_id), "status", "created_at")
        if status is None:
            raise JobNotFound(job_id)
        return JobStatus(status), float(created_at)

    @mapped
    def list_jobs(self, tenant: str, offset: int = 0, limit: int | None = None) -> list[JobRecord]:
        """The tenant's jobs, newest first; `limit` of them from `offset` (None: all)."""
        stop = -1 if limit is None else offset + limit - 1
        ids = self.r.zrevrange(keys.tenant(tenant, "jobs"), offset, stop) if limit != 0 else []
        pipe = self.r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(keys.job(job_id))
        return [JobRecord.from_hash(h) for h in pipe.execute() if h]

    @mapped
    def count_jobs(self, tenant: str) -> int:
        """Number of the tenant's jobs, whatever their status."""
        return int(self.r.zcard(keys.tenant(tenant, "jobs")))

    @mapped
    def active_jobs(self, tenant: str) -> int:
        """Number of the tenant's jobs not yet in a terminal status."""
        return int(self.r.scard(keys.tenant(tenant, "active")))

    @mapped
    def active_job_ids(self, tenant: str) -> list[str]:
        return sorted(self.r.smembers(keys.tenant(tenant, "active")))

    @mapped
    def all_active_job_ids(self) -> list[str]:
        """Every tenant's jobs not yet in a terminal status, sorted: one set, kept with the tenants' own."""
        return sorted(self.r.smembers(keys.ACTIVE_JOBS))

    @mapped
    def set_status(self, job_id: str, status: JobStatus, error: str | None = None) -> JobRecord:
        """Move the job to `status` atomically; InvalidTransition if not allowed from where it is.

        Setting the status it already has is a no-op (a redelivered task may repeat it).
        """
        status = JobStatus(status)
        allowed = [s.value for s, targets in TRANSITIONS.items() if status in targets]
        job = self.get_job(job_id)
        fence, holder = self._fence(job_id)
        rc, cur = self._transition(
            keys=[fence, keys.job(job_id), keys.tenant(job.tenant, "active"), keys.ACTIVE_JOBS],
            args=[holder, status.value, repr(time.time()), error or "", int(status.terminal), job_id, *allowed],
        )
        if rc == -1:
            raise JobNotFound(job_id)
        if rc == -2:
            raise InvalidTransition(job_id, JobStatus(cur), status)
        return self.get_job(job_id)

    @mapped
    def is_cancelled(self, job_id: str) -> bool:
        return self.r.hget(keys.job(job_id), "status") == JobStatus.CANCELLED.value

    @mapped
    def delete_job(self, job_id: str) -> None:
        """Remove every key of the job (tests, retention)."""
        job = self.get_job(job_id)
        found = list(self.r.scan_iter(match=keys.job(job_id) + "*", count=500))
        pipe = self.r.pipeline()
        if found:
            pipe.delete(*found)
        pipe.zrem(keys.tenant(job.tenant, "jobs"), job_id)
        pipe.srem(keys.tenant(job.tenant, "active"), job_id)
        pipe.srem(keys.ACTIVE_JOBS, job_id)
        pipe.execute()

    @mapped
    def index_active_jobs(self) -> int:
        """Once per deployment: copy every tenant's `active` set into the one set of active jobs (for
        jobs created before that set was kept). Each copy is one SUNIONSTORE, atomic with the
        scripts that end a job, so an ended job is never copied back. How many tenants it read."""
        if self.r.exists(keys.ACTIVE_INDEXED):
            return 0
        tenants = self.list_tenants()
        for tenant in tenants:
            self.r.sunionstore(keys.ACTIVE_JOBS, [keys.ACTIVE_JOBS, keys.tenant(tenant, "active")])
        self.r.set(keys.ACTIVE_INDEXED, "1")
        return len(tenants)

    @mapped
    def list_tenants(self) -> list[str]:
        """Every tenant with at least one job (a SCAN of the tenant indexes; fine at scrape rates)."""
        return sorted({keys.tenant_of(key) for key in self.r.scan_iter(match=keys.TENANT_JOBS, count=500)})

    # --- counters and metrics ---
    @mapped
    def incr_count(self, job_id: str, name: str, n: int = 1) -> int:
        return int(self._write(job_id, "HINCRBY", keys.job(job_id, "counts"), check_counter(name), n))

    @mapped
    def get_counts(self, job_id: str) -> dict[str, int]:
        raw = self.r.hgetall(keys.job(job_id, "counts"))
        return {name: int(raw.get(name, 0)) for name in COUNTER_NAMES}

    @mapped
    def append_metrics(self, job_id: str, metrics: dict[str, Any]) -> None:
        """Record one epoch's metrics; `metrics["epoch"]` (int) keys it, so a redelivery overwrites."""
        self._write(job_id, "HSET", keys.job(job_id, "metrics"), str(metrics_epoch(metrics)), dumps(metrics))

    @mapped
    def get_metrics(self, job_id: str) -> list[dict[str, Any]]:
        """Per-epoch metrics in epoch order."""
        raw = self.r.hgetall(keys.job(job_id, "metrics"))
        return [json.loads(raw[k]) for k in sorted(raw, key=int)]

    # --- stored objects ---
    def record_object(self, job_id: str, key: str, size: int) -> None:
        self.record_objects(job_id, {key: size})

    @mapped
    def record_objects(self, job_id: str, sizes: Mapping[str, int]) -> None:
        """Enter the objects' sizes in the job's ledger; `stored_bytes` moves by the change (one script)."""
        self._objects(job_id, [check_object(job_id, key, size) for key, size in sizes.items()])

    @mapped
    def forget_object(self, job_id: str, key: str) -> None:
        self._objects(job_id, [(check_object(job_id, key, 0)[0], -1)])

    def _objects(self, job_id: str, entries: list[tuple[str, int]]) -> None:
        """Ledger entries (size -1: deleted) in one fenced script: one round trip however many."""
        if not entries:
            return
        fence, holder = self._fence(job_id)
        if self._record_objects(keys=[fence, keys.job(job_id), keys.job(job_id, "objects")],
                                args=[holder, *(x for entry in entries for x in entry)]) == -1:
            raise JobNotFound(job_id)

    # --- policy version ---
    @mapped
    def policy_version(self, job_id: str) -> int:
        v = self.r.hget(keys.job(job_id), "policy_version")
        if v is None:
            raise JobNotFound(job_id)
        return int(v)

    @mapped
    def advance_policy(self, job_id: str, expected: int, new: int) -> bool:
        """Set the policy version to `new` only if it is still `expected`; False means someone did."""
        fence, holder = self._fence(job_id)
        rc = self._cas_policy(keys=[fence, keys.job(job_id)], args=[holder, int(expected), int(new)])
        if rc == -1:
            raise JobNotFound(job_id)
        return rc == 1

    # --- insert-once records ---
    @mapped
    def put_sample(self, job_id: str, sample_id: str, record: dict[str, Any]) -> bool:
        """Store a sample once; True (and `samples` += 1) only on the first insert."""
        return self.put_samples(job_id, {sample_id: record}) == 1

    @mapped
    def put_samples(self, job_id: str, records: Mapping[str, dict[str, Any]]) -> int:
        """`put_sample` for each, in one step; how many were inserted now."""
        return self._insert(job_id, "samples", {check_id("sample_id", k): v for k, v in records.items()}, "samples")

    @mapped
    def get_sample(self, job_id: str, sample_id: str) -> dict[str, Any] | None:
        return self.get_samples(job_id, [sample_id])[0]

    @mapped
    def get_samples(self, job_id: str, sample_ids: list[str]) -> list[dict[str, Any] | None]:
        raw = self.r.hmget(keys.job(job_id, "samples"), sample_ids) if sample_ids else []
        return [json.loads(r) if r is not None else None for r in raw]

    @mapped
    def update_sample(self, job_id: str, sample_id: str, updates: dict[str, Any]) -> bool:
        """Merge `updates` into a stored sample; True (and `scored` += 1) when this call set its first score."""
        return self.update_samples(job_id, {sample_id: updates}) == 1

    @mapped
    def update_samples(self, job_id: str, updates: Mapping[str, dict[str, Any]]) -> int:
        """`update_sample` for each, in one transaction; how many first scores it set."""
        return self._merge(job_id, "samples", updates, first="score", counter="scored")

    @mapped
    def update_pair(self, job_id: str, pair_id: str, updates: dict[str, Any]) -> bool:
        """Merge `updates` (e.g. `target_score`, `trained`) into a stored pair; True when this call
        set its first `target_score`. No counter moves: pairs are counted when inserted."""
        return self.update_pairs(job_id, {pair_id: updates}) == 1

    @mapped
    def update_pairs(self, job_id: str, updates: Mapping[str, dict[str, Any]]) -> int:
        """`update_pair` for each, in one transaction; how many first target scores it set."""
        return self._merge(job_id, "pairs", updates, first="target_score", counter="")

    def _merge(self, job_id: str, kind: str, updates: Mapping[str, dict[str, Any]], first: str, counter: str) -> int:
        """Merge each of `updates` into its record, all or none; how many set field `first` for the
        first time (`counter` moves by that in the same transaction). WATCH/MULTI rather than Lua so
        floats round-trip exactly through Python's json; a fenced store watches its lease too, so the
        transaction applies only while the lease it read is still the one in Redis."""
        if not updates:
            return 0
        key, counts = keys.job(job_id, kind), keys.job(job_id, "counts")
        fence, holder = self._fence(job_id)
        ids = list(updates)
        firsts = 0

        def txn(pipe: redis.client.Pipeline) -> None:
            nonlocal firsts
            if holder and pipe.get(fence) != holder:
                raise LeaseLost(f"{kind} {ids[0]}.. of job {job_id}: the lease on this unit is no longer held")
            merged: dict[Any, str] = {}  # redis-py types a mapping's keys invariantly
            firsts = 0  # again from the start when a watched key changed and this re-runs
            for rid, raw in zip(ids, pipe.hmget(key, ids), strict=True):
                if raw is None:
                    raise StateError(f"job {job_id}: no {kind[:-1]} {rid!r} to update")
                record = json.loads(raw)
                firsts += record.get(first) is None and updates[rid].get(first) is not None
                merged[rid] = dumps({**record, **updates[rid]})
            pipe.multi()
            pipe.hset(key, mapping=merged)
            if firsts and counter:
                pipe.hincrby(counts, counter, firsts)

        self.r.transaction(txn, key, *([fence] if holder else []))
        return firsts

    @mapped
    def list_samples(self, job_id: str) -> dict[str, dict[str, Any]]:
        """sample_id -> record, ordered by id."""
        return self._records(job_id, "samples")

    @mapped
    def put_pair(self, job_id: str, pair_id: str, record: dict[str, Any]) -> bool:
        """Store a preference pair once; True (and `pairs` += 1) only on the first insert."""
        return self.put_pairs(job_id, {pair_id: record}) == 1

    @mapped
    def put_pairs(self, job_id: str, records: Mapping[str, dict[str, Any]]) -> int:
        """`put_pair` for each, in one step; how many were inserted now."""
        return self._insert(job_id, "pairs", {check_id("pair_id", k): v for k, v in records.items()}, "pairs")

    @mapped
    def list_pairs(self, job_id: str) -> dict[str, dict[str, Any]]:
        return self._records(job_id, "pairs")

    @mapped
    def put_checkpoint(self, job_id: str, version: int, record: dict[str, Any]) -> bool:
        """Record the checkpoint for a policy version once (e.g. its LoRA object key)."""
        return self._insert(job_id, "checkpoints", {str(check_version(version)): {**record, "version": version}}, "") == 1

    @mapped
    def list_checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        """Checkpoint records in version order."""
        raw = self.r.hgetall(keys.job(job_id, "checkpoints"))
        return [json.loads(raw[k]) for k in sorted(raw, key=int)]

    def _insert(self, job_id: str, kind: str, records: Mapping[str, dict[str, Any]], counter: str) -> int:
        if not records:
            return 0
        fence, holder = self._fence(job_id)
        rc = int(self._put_once(keys=[fence, keys.job(job_id), keys.job(job_id, kind), keys.job(job_id, "counts")],
                                args=[holder, counter, *(x for rid, rec in records.items() for x in (rid, dumps(rec)))]))
        if rc == -1:
            raise JobNotFound(job_id)
        return rc

    def _records(self, job_id: str, kind: str) -> dict[str, dict[str, Any]]:
        raw = self.r.hgetall(keys.job(job_id, kind))
        return {k: json.loads(raw[k]) for k in sorted(raw)}


@functools.lru_cache(maxsize=8)
def _state_for(url: str, pid: int) -> RedisJobStore:
    return RedisJobStore.from_url(url)


def open_state(redis_url: str) -> RedisJobStore:
    """The process's RedisJobStore for this Redis URL (one connection pool per process, fork-safe)."""
    return _state_for(redis_url, os.getpid())
