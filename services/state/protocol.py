"""The job-state contract the workers and the API program against.

Two backends keep it: `redis.RedisJobStore` (the service) and `memory.MemoryJobStore` (the embedded
one-command runner). One test suite runs against both (tests/services/test_svc_state.py).

Rules both keep:
- Ids (job, tenant, record, scope) are checked with `types.check_id`: a bad one is a ConfigError.
- Reading the header of an unknown job (`get_job`, `policy_version`, `advance_policy`,
  `set_status`, `delete_job`) or inserting a record into one raises JobNotFound, a StateError.
  Per-job reads of an unknown job (counts, records, metrics, fan-in sizes) are empty; counter,
  metrics and fan-in writes do not look the job up (Redis would pay a round trip for it).
- Records are insert-once and bump their counter in the same atomic step; updates merge.
- Status moves only along `types.TRANSITIONS`; repeating the current status is a no-op.
- A job's stored bytes are a ledger of its objects (key -> size), each write of a key replacing its
  entry, with the header's `stored_bytes` / `stored_objects` moved in the same atomic step.
- `mark_done` is True exactly once per scope, for the call that completes it.
- A unit of work (`workers.leases.unit_of`) is committed once; while it runs, one lease names its
  holder and lives `ttl_s` past its last renewal.
- A store from `fenced(job_id, lease)` writes to that job only while `lease` is live and its
  holder's, checked in the same atomic step as the write: otherwise the write raises LeaseLost and
  changes nothing. Its reads, and its lease calls, are the plain store's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from services.state.types import JobRecord, JobStatus, Lease


class JobStore(Protocol):
    # --- jobs ---
    def create_job(
        self, job_id: str, tenant: str, spec: dict[str, Any], max_active: int | None = None
    ) -> JobRecord:
        """A queued job; TooManyJobs when `max_active` is given and the tenant is at it."""
        ...

    def get_job(self, job_id: str) -> JobRecord: ...

    def job_stamp(self, job_id: str) -> tuple[JobStatus, float]:
        """The job's status and creation time: one small read, whatever the spec's size, for a worker
        that keeps parsed specs by (job_id, created_at) instead of reading one every task."""
        ...

    def list_jobs(self, tenant: str, offset: int = 0, limit: int | None = None) -> list[JobRecord]:
        """The tenant's jobs, newest first; `limit` of them from `offset` (None: all)."""
        ...

    def count_jobs(self, tenant: str) -> int:
        """Number of the tenant's jobs, whatever their status."""
        ...

    def list_tenants(self) -> list[str]:
        """Every tenant with at least one job, sorted."""
        ...

    def active_jobs(self, tenant: str) -> int:
        """The tenant's jobs not yet in a terminal status."""
        ...

    def active_job_ids(self, tenant: str) -> list[str]:
        """The ids of those jobs, sorted."""
        ...

    def all_active_job_ids(self) -> list[str]:
        """Every tenant's jobs not yet in a terminal status, sorted (one read: no scan of tenants)."""
        ...

    def set_status(self, job_id: str, status: JobStatus, error: str | None = None) -> JobRecord: ...

    def is_cancelled(self, job_id: str) -> bool: ...

    def delete_job(self, job_id: str) -> None: ...

    # --- counters and metrics ---
    def incr_count(self, job_id: str, name: str, n: int = 1) -> int: ...

    def get_counts(self, job_id: str) -> dict[str, int]: ...

    def append_metrics(self, job_id: str, metrics: dict[str, Any]) -> None:
        """One epoch's metrics, keyed by `metrics["epoch"]`: a redelivery overwrites."""
        ...

    def get_metrics(self, job_id: str) -> list[dict[str, Any]]: ...

    # --- stored objects ---
    def record_object(self, job_id: str, key: str, size: int) -> None:
        """The object `key` (under `objects_prefix(job_id)`) now holds `size` bytes in the store: the
        job's `stored_bytes` / `stored_objects` move by the difference from what was recorded for
        that key, so writing a key again (a redelivery, a rerun) is not counted twice."""
        ...

    def record_objects(self, job_id: str, sizes: Mapping[str, int]) -> None:
        """`record_object` for each key of `sizes`, all in one atomic step (on Redis one round trip:
        a task's batch of puts is entered at once, after they landed). Empty: nothing happens."""
        ...

    def forget_object(self, job_id: str, key: str) -> None:
        """The object `key` was deleted from the store: its recorded bytes leave the job's counts."""
        ...

    # --- policy version ---
    def policy_version(self, job_id: str) -> int: ...

    def advance_policy(self, job_id: str, expected: int, new: int) -> bool:
        """Compare-and-set; False when the version is no longer `expected`."""
        ...

    # --- insert-once records ---
    def put_sample(self, job_id: str, sample_id: str, record: dict[str, Any]) -> bool: ...

    def put_samples(self, job_id: str, records: Mapping[str, dict[str, Any]]) -> int:
        """`put_sample` for each (sample id -> record) in one step; how many were inserted now."""
        ...

    def get_sample(self, job_id: str, sample_id: str) -> dict[str, Any] | None: ...

    def get_samples(self, job_id: str, sample_ids: list[str]) -> list[dict[str, Any] | None]:
        """`get_sample` for each, in one read."""
        ...

    def update_sample(self, job_id: str, sample_id: str, updates: dict[str, Any]) -> bool:
        """True (and `scored` += 1) when this call set the sample's first score."""
        ...

    def update_samples(self, job_id: str, updates: Mapping[str, dict[str, Any]]) -> int:
        """`update_sample` for each, all or none (StateError naming a missing one); how many first
        scores it set."""
        ...

    def list_samples(self, job_id: str) -> dict[str, dict[str, Any]]: ...

    def put_pair(self, job_id: str, pair_id: str, record: dict[str, Any]) -> bool: ...

    def put_pairs(self, job_id: str, records: Mapping[str, dict[str, Any]]) -> int:
        """`put_pair` for each in one step; how many were inserted now."""
        ...

    def update_pair(self, job_id: str, pair_id: str, updates: dict[str, Any]) -> bool:
        """True when this call set the pair's first `target_score`; no counter moves."""
        ...

    def update_pairs(self, job_id: str, updates: Mapping[str, dict[str, Any]]) -> int:
        """`update_pair` for each, all or none; how many first target scores it set."""
        ...

    def list_pairs(self, job_id: str) -> dict[str, dict[str, Any]]: ...

    def put_checkpoint(self, job_id: str, version: int, record: dict[str, Any]) -> bool: ...

    def list_checkpoints(self, job_id: str) -> list[dict[str, Any]]: ...

    # --- fan-in ---
    def mark_done(self, job_id: str, scope: str, member: str, expected: int) -> bool: ...

    def done_count(self, job_id: str, scope: str) -> int: ...

    # --- units of work: commits and leases ---
    def commit_unit(self, job_id: str, unit: str) -> bool:
        """Record that `unit` finished (outputs stored, next stage enqueued); True the first time."""
        ...

    def unit_committed(self, job_id: str, unit: str) -> bool: ...

    def committed_units(self, job_id: str) -> set[str]: ...

    def committed_count(self, job_id: str) -> int:
        """How many units of the job are committed (without reading them)."""
        ...

    def acquire_lease(self, job_id: str, lease: Lease, ttl_s: float) -> Lease | None:
        """Take `lease.unit` for `ttl_s` seconds; None when taken (or already ours), else the live holder."""
        ...

    def renew_lease(self, job_id: str, lease: Lease, ttl_s: float) -> bool:
        """Extend our lease by `ttl_s`; False when it expired or another holder has the unit now."""
        ...

    def release_lease(self, job_id: str, lease: Lease) -> None:
        """Drop our lease (a no-op when it is no longer ours)."""
        ...

    def leases(self, job_id: str) -> list[Lease]:
        """The job's live leases (its running units), by unit."""
        ...

    def fenced(self, job_id: str, lease: Lease) -> JobStore:
        """This store for the task holding `lease`: each write to `job_id` (status, counters,
        metrics, policy, records, fan-in, commits) is made only while the lease is still its own,
        else LeaseLost. A stalled task that lost its unit to another delivery can then change nothing."""
        ...
