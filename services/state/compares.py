"""Compare records (services.compare) in Redis, and in memory for the tests and the embedded runner.

One hash per job (`keys.compares`), compare id -> the record's JSON, so deleting a job deletes its
compares. A compare is not a unit of the job's flow: its records are written by the API (created,
queued) and by the one task that computes it (running, then succeeded or failed).

The API stores a new compare through `admit`, which also enters it in its tenant's compares
(`keys.tenant(tenant, "compares")`, job/compare id -> when asked for) and refuses one past the
tenant's limit. The task that ends a compare does not know its tenant: an entry whose compare has
ended, or whose job is gone, leaves at the tenant's next `admit`, as does one asked for more than
ACTIVE_FOR_S ago (its worker gave up on it).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Protocol

from services.compare import (
    ACTIVE_FOR_S,
    CompareNotFound,
    CompareRecord,
    CompareStatus,
    SeedResult,
    TooManyCompares,
)
from services.state import keys
from services.state.types import check_id, dumps


class CompareStore(Protocol):
    def put(self, record: CompareRecord) -> None:
        """Store (or overwrite) `record` under its job and id."""
        ...

    def get(self, job_id: str, compare_id: str) -> CompareRecord:
        """The record; CompareNotFound when the job has none with this id."""
        ...

    def list(self, job_id: str) -> list[CompareRecord]:
        """The job's compares, oldest first."""
        ...

    def admit(self, tenant: str, record: CompareRecord, limit: int, now: float) -> None:
        """Store a new compare of one of `tenant`'s jobs, unless the tenant has `limit` compares
        queued or running over all its jobs (asked for within ACTIVE_FOR_S of `now`): then
        TooManyCompares, and nothing is stored. One atomic step: concurrent requests cannot pass it together."""
        ...


def set_status(store: CompareStore, job_id: str, compare_id: str, status: CompareStatus, *,
               error: str | None = None, results: list[SeedResult] | None = None) -> CompareRecord:
    """Move a compare to `status` (with its error or results) and store it; returns the new record."""
    record = store.get(job_id, compare_id)
    updates: dict[str, Any] = {"status": status, "updated_at": time.time(), "error": error}
    if results is not None:
        updates["results"] = results
    new = record.model_copy(update=updates)
    store.put(new)
    return new


# KEYS: the tenant's compares (a sorted set), the job's compares (a hash). ARGV: member, created_at,
# cutoff (entries asked for then or before count no more), limit, compare id, record. 1 stored, 0 refused.
ADMIT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[5], ARGV[6])
return 1
"""


def _refused(tenant: str, limit: int) -> TooManyCompares:
    return TooManyCompares(f"tenant {tenant} already has {limit} compares queued or running over its jobs; "
                           "wait for one to finish")


class RedisCompareStore:
    def __init__(self, client: Any) -> None:
        self.r: Any = client  # built with decode_responses=True, as RedisJobStore's
        self._admit = client.register_script(ADMIT)

    def put(self, record: CompareRecord) -> None:
        from services.state.redis import mapped

        mapped(self.r.hset)(keys.compares(record.job_id), check_id("compare_id", record.id), dumps(record.dump()))

    def get(self, job_id: str, compare_id: str) -> CompareRecord:
        from services.state.redis import mapped

        raw = mapped(self.r.hget)(keys.compares(job_id), check_id("compare_id", compare_id))
        if raw is None:
            raise CompareNotFound(compare_id)
        return CompareRecord.load(json.loads(raw))

    def list(self, job_id: str) -> list[CompareRecord]:
        from services.state.redis import mapped

        raw = mapped(self.r.hgetall)(keys.compares(job_id))
        return sorted((CompareRecord.load(json.loads(v)) for v in raw.values()), key=lambda r: r.created_at)

    def admit(self, tenant: str, record: CompareRecord, limit: int, now: float) -> None:
        from services.state.redis import mapped

        active = keys.tenant(tenant, "compares")
        mapped(self._forget_ended)(active)
        args = [f"{record.job_id}/{record.id}", repr(record.created_at), repr(now - ACTIVE_FOR_S), limit,
                check_id("compare_id", record.id), dumps(record.dump())]
        if not int(mapped(self._admit)(keys=[active, keys.compares(record.job_id)], args=args)):
            raise _refused(tenant, limit)

    def _forget_ended(self, active: str) -> None:
        """Drop the entries of compares that ended or whose job is gone (a handful: at most `limit`
        recent ones, and the old ones ADMIT drops)."""
        members = self.r.zrange(active, 0, -1)
        pipe = self.r.pipeline(transaction=False)
        for member in members:
            job_id, _, compare_id = member.partition("/")
            pipe.hget(keys.compares(job_id), compare_id)
        ended = [m for m, raw in zip(members, pipe.execute(), strict=True)
                 if raw is None or CompareRecord.load(json.loads(raw)).status.terminal]
        if ended:
            self.r.zrem(active, *ended)


class MemoryCompareStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[tuple[str, str], str] = {}
        self._tenants: dict[str, set[tuple[str, str]]] = {}  # tenant -> (job id, compare id) admitted

    def put(self, record: CompareRecord) -> None:
        with self._lock:
            self._records[(check_id("job_id", record.job_id), check_id("compare_id", record.id))] = dumps(record.dump())

    def get(self, job_id: str, compare_id: str) -> CompareRecord:
        with self._lock:
            raw = self._records.get((check_id("job_id", job_id), check_id("compare_id", compare_id)))
        if raw is None:
            raise CompareNotFound(compare_id)
        return CompareRecord.load(json.loads(raw))

    def list(self, job_id: str) -> list[CompareRecord]:
        with self._lock:
            raws = [v for (j, _), v in self._records.items() if j == job_id]
        return sorted((CompareRecord.load(json.loads(v)) for v in raws), key=lambda r: r.created_at)

    def admit(self, tenant: str, record: CompareRecord, limit: int, now: float) -> None:
        with self._lock:
            mine = self._tenants.setdefault(check_id("tenant", tenant), set())
            active = [r for r in map(CompareRecord.load, (json.loads(self._records[k]) for k in mine))
                      if not r.status.terminal and r.created_at > now - ACTIVE_FOR_S]
            if len(active) >= limit:
                raise _refused(tenant, limit)
            key = (check_id("job_id", record.job_id), check_id("compare_id", record.id))
            mine.add(key)
            self._records[key] = dumps(record.dump())


def open_compares(redis_url: str) -> RedisCompareStore:
    """Compares on the process's connection pool for this Redis URL (the one open_state uses)."""
    from services.state.redis import open_state

    return RedisCompareStore(open_state(redis_url).r)
