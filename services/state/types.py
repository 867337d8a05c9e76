"""What both job-state backends share: errors, the status enum with its transitions, the job
record, and the argument checks each backend applies before it touches anything.

Free of Redis so the API can import them for schemas, and the in-memory backend without a client.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from typing import Any

from dfusion_core.errors import ConfigError, DFusionError

#: The per-job counters (`incr_count`, `get_counts`); records bump theirs when first inserted.
COUNTER_NAMES = ("samples", "scored", "pairs", "trained_steps")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


class StateError(DFusionError):
    """A job-state operation failed."""


class StateUnavailable(StateError):
    """Redis could not be reached: transient, worth retrying."""


class LeaseLost(StateError):
    """A fenced write refused: the task's lease on its unit expired or passed to another delivery,
    so what it computed is no longer its to store (`JobStore.fenced`)."""


class JobNotFound(StateError, KeyError):
    """No job with this id."""

    def __str__(self) -> str:
        return f"job not found: {self.args[0]}" if self.args else "job not found"


class JobExists(StateError):
    """A job with this id was already created."""


class InvalidTransition(StateError):
    """The requested status change is not allowed from the job's current status."""

    def __init__(self, job_id: str, current: JobStatus, requested: JobStatus) -> None:
        self.job_id, self.current, self.requested = job_id, current, requested
        super().__init__(f"job {job_id}: cannot go from {current.value} to {requested.value}")


class TooManyJobs(StateError):
    """The tenant already has the maximum number of active jobs."""


class JobStatus(enum.StrEnum):
    """Lifecycle of a job; see TRANSITIONS."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


#: Allowed moves; terminal states have none. Setting the current status again is a no-op.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


@dataclass(frozen=True)
class JobRecord:
    """A job's header (a hash of strings in either backend); counters and records are fetched separately.

    `stored_bytes` / `stored_objects`: what the job keeps under `objects_prefix(job_id)` in the
    object store, kept with each write there (`JobStore.record_object`), so a listing reads them
    with the header instead of listing the store."""

    job_id: str
    tenant: str
    status: JobStatus
    spec: dict[str, Any]
    error: str | None
    created_at: float  # unix seconds
    updated_at: float
    policy_version: int
    stored_bytes: int = 0
    stored_objects: int = 0

    @classmethod
    def from_hash(cls, h: dict[str, str]) -> JobRecord:
        return cls(
            job_id=h["job_id"], tenant=h["tenant"], status=JobStatus(h["status"]),
            spec=json.loads(h["spec"]), error=h.get("error") or None,
            created_at=float(h["created_at"]), updated_at=float(h["updated_at"]),
            policy_version=int(h.get("policy_version", 0)), stored_bytes=int(h.get("stored_bytes", 0)),
            stored_objects=int(h.get("stored_objects", 0)),
        )


@dataclass(frozen=True)
class Lease:
    """Who computes a unit of a job right now. The holding worker renews it every few seconds; when
    the worker dies it expires, and the unit's next delivery takes over."""

    unit: str  # the unit of work: `train-e0`, `sample-e0-p1-b2` (workers.leases.unit_of)
    worker: str  # the Celery node and process that runs it
    task_id: str
    since: float  # unix seconds when it was taken
    token: str  # unique per execution: a second delivery of the same task id is another holder

    def dump(self) -> str:
        return dumps({"worker": self.worker, "task_id": self.task_id, "since": self.since, "token": self.token})

    @classmethod
    def load(cls, unit: str, raw: str) -> Lease:
        d = json.loads(raw)
        return cls(unit=unit, worker=d["worker"], task_id=d["task_id"], since=float(d["since"]), token=d["token"])


def check_ttl(ttl_s: float) -> int:
    """A lease's time to live in milliseconds (Redis PX)."""
    if not ttl_s > 0:
        raise ConfigError("ttl_s", f"must be > 0 seconds, got {ttl_s!r}")
    return max(1, round(ttl_s * 1000))


# --- argument checks (both backends, so a bad id fails the same way everywhere) -----------------
def check_id(field: str, value: str) -> str:
    """A job, tenant, record or scope id: 1-128 chars of [A-Za-z0-9_.:-], alphanumeric first."""
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise ConfigError(field, f"must be 1-128 chars of [A-Za-z0-9_.:-] starting alphanumeric, got {value!r}")
    return value


def objects_prefix(job_id: str) -> str:
    """Where a job's objects live in the store (workers.keys builds every key under it from this)."""
    return f"jobs/{check_id('job_id', job_id)}/"


def check_object(job_id: str, key: str, size: int) -> tuple[str, int]:
    """An object of the job (its key under `objects_prefix`) and its size in bytes (an int >= 0)."""
    prefix = objects_prefix(job_id)
    if not isinstance(key, str) or not key.startswith(prefix) or key == prefix:
        raise ConfigError("key", f"must be an object key under {prefix!r}, got {key!r}")
    if not isinstance(size, int) or size < 0:
        raise ConfigError("size", f"must be a number of bytes (an int >= 0), got {size!r}")
    return key, size


def check_counter(name: str) -> str:
    if name not in COUNTER_NAMES:
        raise ConfigError("name", f"counter must be one of {COUNTER_NAMES}, got {name!r}")
    return name


def metrics_epoch(metrics: dict[str, Any]) -> int:
    """The epoch that keys one epoch's metrics."""
    epoch = metrics.get("epoch")
    if not isinstance(epoch, int) or epoch < 0:
        raise ConfigError("metrics", f"needs an integer 'epoch' >= 0, got {epoch!r}")
    return epoch


def check_version(version: int) -> int:
    if not isinstance(version, int) or version < 0:
        raise ConfigError("version", f"must be an int >= 0, got {version!r}")
    return version


def check_expected(expected: int) -> int:
    if expected < 1:
        raise ConfigError("expected", f"must be >= 1, got {expected}")
    return expected


def dumps(obj: Any) -> str:
    """How records are stored: canonical JSON, no NaN (the backends read back what Redis would)."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, allow_nan=False)
