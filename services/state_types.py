"""Types of the job-state layer: errors, the status enum with its transitions, the job record.

Separate from `state.py` so the API can import them for schemas without a Redis client.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

from dfusion_core.errors import DFusionError


class StateError(DFusionError):
    """A job-state operation failed."""


class StateUnavailable(StateError):
    """Redis could not be reached: transient, worth retrying."""


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
    """A job's header as stored in Redis; counters and records are fetched separately."""

    job_id: str
    tenant: str
    status: JobStatus
    spec: dict[str, Any]
    error: str | None
    created_at: float  # unix seconds
    updated_at: float
    policy_version: int

    @classmethod
    def from_hash(cls, h: dict[str, str]) -> JobRecord:
        return cls(
            job_id=h["job_id"], tenant=h["tenant"], status=JobStatus(h["status"]),
            spec=json.loads(h["spec"]), error=h.get("error") or None,
            created_at=float(h["created_at"]), updated_at=float(h["updated_at"]),
            policy_version=int(h.get("policy_version", 0)),
        )
