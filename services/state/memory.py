"""The JobStore in this process's memory, for the embedded one-command runner (no Redis).

Laid out like the Redis backend's keys (a header per job, per-job tables created on first write),
so it answers as Redis does: the same id checks and errors, `max_active`, empty reads of unknown
jobs, and records stored as the same canonical JSON (what goes in comes back as Redis would
return it). A lock makes each operation atomic, as a Lua script or transaction is in Redis, and a
fenced write checks its lease under the same lock.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Mapping
from typing import Any, Self

from services.state.types import (
    COUNTER_NAMES,
    TRANSITIONS,
    InvalidTransition,
    JobExists,
    JobNotFound,
    JobRecord,
    JobStatus,
    Lease,
    LeaseLost,
    StateError,
    TooManyJobs,
    check_counter,
    check_expected,
    check_id,
    check_object,
    check_ttl,
    check_version,
    dumps,
    metrics_epoch,
)


class MemoryJobStore:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._heads: dict[str, dict[str, str]] = {}  # job id -> header hash (JobRecord.from_hash)
        self._tenant_jobs: dict[str, set[str]] = {}  # tenant -> job ids
        self._active: dict[str, set[str]] = {}  # tenant -> job ids not yet terminal
        self._tables: dict[tuple[str, str], dict[str, Any]] = {}  # (job id, table) -> field -> value
        self._done: dict[tuple[str, str], set[str]] = {}  # (job id, scope) -> members
        self._fired: set[tuple[str, str]] = set()
        self._units: set[tuple[str, str]] = set()  # (job id, unit) committed
        self._leases: dict[tuple[str, str], tuple[Lease, float]] = {}  # (job id, unit) -> (holder, expiry)
        self._fencing: tuple[str, Lease] | None = None  # (job id, lease) of a store from `fenced`

    def fenced(self, job_id: str, lease: Lease) -> Self:
        """This store's tables under its lock, its writes to `job_id` fenced by `lease`."""
        view = copy.copy(self)
        view._fencing = (check_id("job_id", job_id), lease)
        return view

    def _check_fence(self, job_id: str) -> None:
        """Under the lock, before a write: LeaseLost when the fencing lease is no longer live and ours."""
        if self._fencing is None:
            return
        fenced_job, lease = self._fencing
        assert job_id == fenced_job, f"a store fenced for job {fenced_job} wrote to job {job_id}"
        if self._live((job_id, lease.unit)) != lease:
            raise LeaseLost(f"job {job_id}: the lease on {lease.unit} is no longer held by this task")

    def _head(self, job_id: str) -> dict[str, str]:
        try:
            return self._heads[check_id("job_id", job_id)]
        except KeyError:
            raise JobNotFound(job_id) from None

    def _table(self, job_id: str, name: str) -> dict[str, Any]:
        """A per-job table, created on first use (as a Redis hash is by its first write)."""
        return self._tables.setdefault((check_id("job_id", job_id), name), {})

    def _peek(self, job_id: str, name: str) -> dict[str, Any]:
        return dict(self._tables.get((check_id("job_id", job_id), name), {}))

    # --- jobs ---
    def create_job(self, job_id: str, tenant: str, spec: dict[str, Any], max_active: int | None = None) -> JobRecord:
        check_id("job_id", job_id)
        check_id("tenant", tenant)
        with self._lock:
            if job_id in self._heads:
                raise JobExists(f"job {job_id} already exists")
            active = self._active.setdefault(tenant, set())
            if max_active is not None and len(active) >= max_active:
                raise TooManyJobs(f"tenant {tenant} already has {max_active} active jobs; wait for one to finish")
            now = repr(time.time())
            self._heads[job_id] = {"job_id": job_id, "tenant": tenant, "status": JobStatus.QUEUED.value,
                                   "spec": dumps(spec), "error": "", "created_at": now, "updated_at": now,
                                   "policy_version": "0"}
            self._tenant_jobs.setdefault(tenant, set()).add(job_id)
            active.add(job_id)
            return self.get_job(job_id)

    def get_job(self, job_id: str) -> JobRecord:
        with self._lock:
            return JobRecord.from_hash(self._head(job_id))

    def job_stamp(self, job_id: str) -> tuple[JobStatus, float]:
        with self._lock:
            head = self._head(job_id)
            return JobStatus(head["status"]), float(head["created_at"])

    def list_jobs(self, tenant: str, offset: int = 0, limit: int | None = None) -> list[JobRecord]:
        """The tenant's jobs, newest first (ties: the larger id first, as Redis's ZREVRANGE);
        `limit` of them from `offset` (None: all)."""
        check_id("tenant", tenant)
        with self._lock:
            jobs = [JobRecord.from_hash(self._heads[j]) for j in self._tenant_jobs.get(tenant, ())]
        ordered = sorted(jobs, key=lambda j: (j.created_at, j.job_id), reverse=True)
        return ordered[offset:] if limit is None else ordered[offset : offset + limit]

    def count_jobs(self, tenant: str) -> int:
        check_id("tenant", tenant)
        with self._lock:
            return len(self._tenant_jobs.get(tenant, ()))

    def list_tenants(self) -> list[str]:
        with self._lock:
            return sorted(t for t, jobs in self._tenant_jobs.items() if jobs)

    def active_jobs(self, tenant: str) -> int:
        with self._lock:
            return len(self._active.get(check_id("tenant", tenant), ()))

    def active_job_ids(self, tenant: str) -> list[str]:
        with self._lock:
            return sorted(self._active.get(check_id("tenant", tenant), ()))

    def all_active_job_ids(self) -> list[str]:
        with self._lock:
            return sorted(set().union(*self._active.values()))

    def set_status(self, job_id: str, status: JobStatus, error: str | None = None) -> JobRecord:
        status = JobStatus(status)
        with self._lock:
            head = self._head(job_id)
            self._check_fence(job_id)
            current = JobStatus(head["status"])
            if current != status:
                if status not in TRANSITIONS[current]:
                    raise InvalidTransition(job_id, current, status)
                head.update(status=status.value, error=error or "", updated_at=repr(time.time()))
                if status.terminal:
                    self._active[head["tenant"]].discard(job_id)
            return self.get_job(job_id)

    def is_cancelled(self, job_id: str) -> bool:
        with self._lock:
            head = self._heads.get(check_id("job_id", job_id))
            return head is not None and head["status"] == JobStatus.CANCELLED.value

    def delete_job(self, job_id: str) -> None:
        with self._lock:
            tenant = self._head(job_id)["tenant"]
            del self._heads[job_id]
            self._tenant_jobs[tenant].discard(job_id)
            self._active[tenant].discard(job_id)
            for store in (self._tables, self._done, self._leases):
                for key in [k for k in store if k[0] == job_id]:
                    del store[key]
            # in place: stores from `fenced` share these sets
            self._fired.difference_update({k for k in self._fired if k[0] == job_id})
            self._units.difference_update({k for k in self._units if k[0] == job_id})

    # --- counters and metrics ---
    def incr_count(self, job_id: str, name: str, n: int = 1) -> int:
        check_counter(name)
        with self._lock:
            self._check_fence(job_id)
            counts = self._table(job_id, "counts")
            counts[name] = counts.get(name, 0) + n
            return int(counts[name])

    def get_counts(self, job_id: str) -> dict[str, int]:
        with self._lock:
            counts = self._peek(job_id, "counts")
        return {name: int(counts.get(name, 0)) for name in COUNTER_NAMES}

    def append_metrics(self, job_id: str, metrics: dict[str, Any]) -> None:
        epoch = metrics_epoch(metrics)
        with self._lock:
            self._check_fence(job_id)
            self._table(job_id, "metrics")[str(epoch)] = dumps(metrics)

    def get_metrics(self, job_id: str) -> list[dict[str, Any]]:
        with self._lock:
            raw = self._peek(job_id, "metrics")
        return [json.loads(raw[k]) for k in sorted(raw, key=int)]

    # --- stored objects ---
    def record_object(self, job_id: str, key: str, size: int) -> None:
        self.record_objects(job_id, {key: size})

    def record_objects(self, job_id: str, sizes: Mapping[str, int]) -> None:
        self._objects(job_id, [check_object(job_id, key, size) for key, size in sizes.items()])

    def forget_object(self, job_id: str, key: str) -> None:
        self._objects(job_id, [(check_object(job_id, key, 0)[0], None)])

    def _objects(self, job_id: str, entries: list[tuple[str, int | None]]) -> None:
        """Each entry's ledger line set to its size (None: removed), in order, the header's totals
        moved by the change, all under one lock as Redis does it in one script."""
        if not entries:
            return
        with self._lock:
            self._check_fence(job_id)
            head, ledger = self._head(job_id), self._table(job_id, "objects")
            for key, size in entries:
                old = ledger.pop(key, None)
                if size is not None:
                    ledger[key] = size
                head["stored_bytes"] = str(int(head.get("stored_bytes", 0)) + (size or 0) - (old or 0))
                head["stored_objects"] = str(int(head.get("stored_objects", 0)) + (size is not None) - (old is not None))

    # --- policy version ---
    def policy_version(self, job_id: str) -> int:
        return self.get_job(job_id).policy_version

    def advance_policy(self, job_id: str, expected: int, new: int) -> bool:
        with self._lock:
            self._check_fence(job_id)
            head = self._head(job_id)
            if int(head["policy_version"]) != int(expected):
                return False
            head["policy_version"] = str(int(new))
            return True

    # --- insert-once records ---
    def _insert(self, job_id: str, kind: str, records: Mapping[str, dict[str, Any]], counter: str) -> int:
        with self._lock:
            self._check_fence(job_id)
            self._head(job_id)
            table = self._table(job_id, kind)
            new = {rid: dumps(record) for rid, record in records.items() if rid not in table}
            table.update(new)
            if counter and new:
                self.incr_count(job_id, counter, len(new))
            return len(new)

    def _merge(self, job_id: str, kind: str, updates: Mapping[str, dict[str, Any]], first: str, counter: str) -> int:
        """All of `updates` or, when a record is missing, none (as the Redis transaction)."""
        with self._lock:
            self._check_fence(job_id)
            table = self._peek(job_id, kind)
            missing = next((rid for rid in updates if rid not in table), None)
            if missing is not None:
                raise StateError(f"job {job_id}: no {kind[:-1]} {missing!r} to update")
            merged, firsts = {}, 0
            for rid, upd in updates.items():
                record = json.loads(table[rid])
                firsts += record.get(first) is None and upd.get(first) is not None
                merged[rid] = dumps({**record, **upd})
            if merged:
                self._table(job_id, kind).update(merged)
            if firsts and counter:
                self.incr_count(job_id, counter, firsts)
            return firsts

    def _records(self, job_id: str, kind: str) -> dict[str, dict[str, Any]]:
        with self._lock:
            raw = self._peek(job_id, kind)
        return {k: json.loads(raw[k]) for k in sorted(raw)}

    def put_sample(self, job_id: str, sample_id: str, record: dict[str, Any]) -> bool:
        return self.put_samples(job_id, {sample_id: record}) == 1

    def put_samples(self, job_id: str, records: Mapping[str, dict[str, Any]]) -> int:
        return self._insert(job_id, "samples", {check_id("sample_id", k): v for k, v in records.items()}, "samples")

    def get_sample(self, job_id: str, sample_id: str) -> dict[str, Any] | None:
        return self.get_samples(job_id, [sample_id])[0]

    def get_samples(self, job_id: str, sample_ids: list[str]) -> list[dict[str, Any] | None]:
        with self._lock:
            table = self._peek(job_id, "samples")
            raw = [table.get(sid) for sid in sample_ids]
        return [json.loads(r) if r is not None else None for r in raw]

    def update_sample(self, job_id: str, sample_id: str, updates: dict[str, Any]) -> bool:
        return self.update_samples(job_id, {sample_id: updates}) == 1

    def update_samples(self, job_id: str, updates: Mapping[str, dict[str, Any]]) -> int:
        return self._merge(job_id, "samples", updates, first="score", counter="scored")

    def list_samples(self, job_id: str) -> dict[str, dict[str, Any]]:
        return self._records(job_id, "samples")

    def put_pair(self, job_id: str, pair_id: str, record: dict[str, Any]) -> bool:
        return self.put_pairs(job_id, {pair_id: record}) == 1

    def put_pairs(self, job_id: str, records: Mapping[str, dict[str, Any]]) -> int:
        return self._insert(job_id, "pairs", {check_id("pair_id", k): v for k, v in records.items()}, "pairs")

    def update_pair(self, job_id: str, pair_id: str, updates: dict[str, Any]) -> bool:
        return self.update_pairs(job_id, {pair_id: updates}) == 1

    def update_pairs(self, job_id: str, updates: Mapping[str, dict[str, Any]]) -> int:
        return self._merge(job_id, "pairs", updates, first="target_score", counter="")

    def list_pairs(self, job_id: str) -> dict[str, dict[str, Any]]:
        return self._records(job_id, "pairs")

    def put_checkpoint(self, job_id: str, version: int, record: dict[str, Any]) -> bool:
        return self._insert(job_id, "checkpoints", {str(check_version(version)): {**record, "version": version}}, "") == 1

    def list_checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        raw = self._records(job_id, "checkpoints")
        return [raw[k] for k in sorted(raw, key=int)]

    # --- fan-in ---
    def mark_done(self, job_id: str, scope: str, member: str, expected: int) -> bool:
        key = (check_id("job_id", job_id), check_id("scope", scope))
        check_expected(expected)
        with self._lock:
            self._check_fence(job_id)
            members = self._done.setdefault(key, set())
            members.add(member)
            if len(members) >= expected and key not in self._fired:
                self._fired.add(key)
                return True
            return False

    def done_count(self, job_id: str, scope: str) -> int:
        with self._lock:
            return len(self._done.get((check_id("job_id", job_id), check_id("scope", scope)), ()))

    # --- units of work: commits and leases (expiry on the monotonic clock, as Redis's PX) ---
    def commit_unit(self, job_id: str, unit: str) -> bool:
        key = (check_id("job_id", job_id), check_id("unit", unit))
        with self._lock:
            self._check_fence(job_id)
            first = key not in self._units
            self._units.add(key)
            return first

    def unit_committed(self, job_id: str, unit: str) -> bool:
        with self._lock:
            return (check_id("job_id", job_id), check_id("unit", unit)) in self._units

    def committed_units(self, job_id: str) -> set[str]:
        check_id("job_id", job_id)
        with self._lock:
            return {unit for job, unit in self._units if job == job_id}

    def committed_count(self, job_id: str) -> int:
        return len(self.committed_units(job_id))

    def _live(self, key: tuple[str, str]) -> Lease | None:
        held = self._leases.get(key)
        if held is None or held[1] <= time.monotonic():
            self._leases.pop(key, None)
            return None
        return held[0]

    def acquire_lease(self, job_id: str, lease: Lease, ttl_s: float) -> Lease | None:
        key, ttl_ms = (check_id("job_id", job_id), check_id("unit", lease.unit)), check_ttl(ttl_s)
        with self._lock:
            cur = self._live(key)
            if cur is not None and cur != lease:
                return cur
            self._leases[key] = (lease, time.monotonic() + ttl_ms / 1000)
            return None

    def renew_lease(self, job_id: str, lease: Lease, ttl_s: float) -> bool:
        key, ttl_ms = (check_id("job_id", job_id), check_id("unit", lease.unit)), check_ttl(ttl_s)
        with self._lock:
            if self._live(key) != lease:
                return False
            self._leases[key] = (lease, time.monotonic() + ttl_ms / 1000)
            return True

    def release_lease(self, job_id: str, lease: Lease) -> None:
        key = (check_id("job_id", job_id), check_id("unit", lease.unit))
        with self._lock:
            if self._live(key) == lease:
                del self._leases[key]

    def leases(self, job_id: str) -> list[Lease]:
        check_id("job_id", job_id)
        with self._lock:
            live = [self._live(k) for k in sorted(self._leases) if k[0] == job_id]
            return [lease for lease in live if lease is not None]
