"""Compare records (services.compare) in Redis, and in memory for the tests and the embedded runner.

One hash per job (`keys.compares`), compare id -> the record's JSON, so deleting a job deletes its
compares. A compare is not a unit of the job's flow: its records are written by the API (created,
queued) and by the one task that computes it (running, then succeeded or failed).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Protocol

from services.compare import CompareNotFound, CompareRecord, CompareStatus, SeedResult
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


class RedisCompareStore:
    def __init__(self, client: Any) -> None:
        self.r: Any = client  # built with decode_responses=True, as RedisJobStore's

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


class MemoryCompareStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[tuple[str, str], str] = {}

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


def open_compares(redis_url: str) -> RedisCompareStore:
    """Compares on the process's connection pool for this Redis URL (the one open_state uses)."""
    from services.state.redis import open_state

    return RedisCompareStore(open_state(redis_url).r)
