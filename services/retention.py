"""Retention: remove a finished job's objects and Redis keys, on request or once it is old enough.

`purge_job` removes one job: every object under its prefix `jobs/<id>/` in the store, then its keys
in Redis (`JobStore.delete_job`: the job's own keys, all under its hash tag, and its entries in its
tenant's indexes; its stored-bytes count and ledger among them, so its line leaves /metrics), then
its telemetry high-water mark. Nothing outside that prefix and those keys is touched: no other
job's and no other tenant's. Objects go first, so a purge cut short leaves the job listed and a
second purge finishes it.

Only a job that has ended (succeeded, failed or cancelled) is purged, and only once none of its
units is still running: a cancelled job's task that started before the cancel holds a lease until
it returns, and could write objects after the purge. Both are refused with `PurgeRefused` (HTTP
409) naming the state. A delivery of a purged job's task finds no job and stores nothing.

`expired_jobs` / `purge_expired`: the ended jobs whose last status change is older than the
retention period (`Settings.retention_days`), which the workers sweep (workers/retention.py) and
`dfusion purge --expired` purges at once. Torch-free.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from dfusion_core.storage import BlobStore
from services.state import JobStatus, JobStore
from services.state.types import JobNotFound, JobRecord, StateError, objects_prefix

log = logging.getLogger(__name__)

DAY_S = 24 * 3600.0
#: Object deletes run concurrently: each is a round trip, and a big job has thousands of objects.
DELETE_THREADS = 8
#: What else a process keeps about a job, dropped after its purge (`Telemetry.forget_job`).
Forget = Callable[[str], None]


class PurgeRefused(StateError):
    """The job has not ended, or units of it are still running: its data may still change (HTTP 409)."""

    def __init__(self, job_id: str, status: JobStatus, running: int = 0) -> None:
        self.job_id, self.status, self.running = job_id, status, running
        if running:
            why = (f"job {job_id} is {status.value} but {running} of its units are still running; "
                   "purge it once they return (a few seconds)")
        else:
            why = (f"job {job_id} is {status.value}; only a succeeded, failed or cancelled job can be purged "
                   f"(wait for it to end, or cancel it first: DELETE /v1/jobs/{job_id})")
        super().__init__(why)


@dataclass(frozen=True)
class PurgeResult:
    """What a purge removed: the job, its tenant, its status when purged, how many objects, and the
    bytes its objects took (the job's `stored_bytes` when purged)."""

    job_id: str
    tenant: str
    status: JobStatus
    objects: int
    stored_bytes: int = 0


def check_purgeable(state: JobStore, job: JobRecord) -> None:
    """PurgeRefused unless the job has ended and none of its units still runs."""
    if not job.status.terminal:
        raise PurgeRefused(job.job_id, job.status)
    running = state.leases(job.job_id)
    if running:
        raise PurgeRefused(job.job_id, job.status, len(running))


def purge_job(state: JobStore, store: BlobStore, job_id: str, forget: Forget | None = None) -> PurgeResult:
    """Remove the job's objects and keys; PurgeRefused while it can still change, JobNotFound if absent.

    `forget(job_id)`, when given, drops what else the caller's process keeps about the job
    (the API and workers pass `Telemetry.forget_job`)."""
    job = state.get_job(job_id)
    check_purgeable(state, job)
    prefix = objects_prefix(job_id)
    names = store.list(prefix)
    assert all(n.startswith(prefix) for n in names), f"the store listed keys outside {prefix}"
    with ThreadPoolExecutor(max_workers=DELETE_THREADS) as pool:
        list(pool.map(store.delete, names))
    state.delete_job(job_id)
    if forget is not None:
        forget(job_id)
    log.info("purged job %s of tenant %s (%s): %d objects, %d bytes", job_id, job.tenant, job.status.value,
             len(names), job.stored_bytes, extra={"job_id": job_id})
    return PurgeResult(job_id, job.tenant, job.status, len(names), job.stored_bytes)


def expired_jobs(state: JobStore, retention_s: float, now: float | None = None) -> list[JobRecord]:
    """Every tenant's ended jobs whose last status change is more than `retention_s` ago, oldest first."""
    cutoff = (time.time() if now is None else now) - retention_s
    jobs = [j for t in state.list_tenants() for j in state.list_jobs(t) if j.status.terminal and j.updated_at < cutoff]
    return sorted(jobs, key=lambda j: j.updated_at)


def purge_expired(state: JobStore, store: BlobStore, retention_s: float, now: float | None = None,
                  forget: Forget | None = None) -> list[PurgeResult]:
    """Purge every expired job; one that cannot be purged yet (units running) or is gone is skipped."""
    done = []
    for job in expired_jobs(state, retention_s, now):
        try:
            done.append(purge_job(state, store, job.job_id, forget))
        except (PurgeRefused, JobNotFound) as exc:  # another sweep took it, or a unit still returns
            log.info("retention: skipping job %s: %s", job.job_id, exc, extra={"job_id": job.job_id})
    return done
