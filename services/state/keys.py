"""The Redis key layout: the only place job-state keys are built (all under `dfusion:`).

Per-job keys share the hash tag `{job_id}` so a job's multi-key scripts stay in one cluster slot.
"""

from __future__ import annotations

from services.state.types import check_id

PREFIX = "dfusion"
#: SCAN pattern matching every tenant's job index (`tenant_of` reads the tenant back).
TENANT_JOBS = f"{PREFIX}:tenant:*:jobs"
#: Every tenant's jobs not yet in a terminal status (a set of job ids), kept in the same atomic
#: steps as each tenant's `active` set, so a sweep over active jobs reads one key, not the keyspace.
ACTIVE_JOBS = f"{PREFIX}:active"
#: Set once the tenants' active sets written before ACTIVE_JOBS existed have been copied into it.
ACTIVE_INDEXED = f"{PREFIX}:active:indexed"


def job(job_id: str, *parts: str) -> str:
    """`dfusion:job:{<id>}` (the header hash) or one of its parts (`counts`, `samples`, ...)."""
    return ":".join((PREFIX, "job", "{" + check_id("job_id", job_id) + "}", *parts))



def lease(job_id: str, unit: str) -> str:
    """`dfusion:job:{<id>}:lease:<unit>`: the unit's holder, with a TTL (unit names are check_id'd)."""
    return job(job_id, "lease", unit)

def compares(job_id: str) -> str:
    """`dfusion:job:{<id>}:compares`: compare id -> its record (a part of the job: deleted with it)."""
    return job(job_id, "compares")


def tenant(name: str, part: str) -> str:
    """The tenant's `jobs` index (a sorted set by creation time), `active` set, `tokens` set or
    `compares` (those queued or running over its jobs, a sorted set by when they were asked for)."""
    return f"{PREFIX}:tenant:{check_id('tenant', name)}:{part}"


def tenant_of(jobs_key: str) -> str:
    """The tenant of a key matched by TENANT_JOBS."""
    return jobs_key[len(f"{PREFIX}:tenant:") : -len(":jobs")]


def token(digest: str) -> str:
    """Token digest -> tenant."""
    return f"{PREFIX}:token:{digest}"
