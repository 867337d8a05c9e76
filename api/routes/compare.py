"""Compare a job's trained policy with its base: create (202 + `dfusion.compare` enqueued), get, list.

The work runs on a sample worker (workers/compare.py); this process only checks the request against
the job (services.compare.resolve: 409 while the job runs, 422 naming `version` for one it never
published; 429 past the job's or the tenant's limit of compares queued or running), stores the
queued record and enqueues the task by name, so it loads no torch.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated

from celery import Celery
from fastapi import APIRouter, Depends

from api.deps import JobDep, SettingsDep, StateDep, get_celery
from api.errors import QueueUnavailable
from api.routes.jobs import object_url
from api.schemas import CompareCreated, ComparePublic, ComparesPublic, MaskPublic, SeedComparePublic
from services import queue
from services.compare import (
    MAX_TENANT_COMPARES,
    CompareCreate,
    CompareRecord,
    CompareStatus,
    check_room,
    resolve,
)
from services.records import CheckpointRecord
from services.state.compares import RedisCompareStore, open_compares, set_status
from services.state.redis import RedisJobStore
from services.state.types import JobRecord

router = APIRouter(prefix="/v1/jobs", tags=["compare"])


def get_compares(settings: SettingsDep) -> RedisCompareStore:
    return open_compares(settings.redis_url)


ComparesDep = Annotated[RedisCompareStore, Depends(get_compares)]
CeleryDep = Annotated[Celery, Depends(get_celery)]


def compare_path(job_id: str, compare_id: str) -> str:
    return f"/v1/jobs/{job_id}/compare/{compare_id}"


@router.post("/{job_id}/compare", status_code=202, response_model=CompareCreated)
def create_compare(body: CompareCreate, job: JobDep, state: StateDep, compares: ComparesDep,
                   celery: CeleryDep) -> CompareCreated:
    """Sample the prompt with each seed by the base and by a policy version of this finished job."""
    record = submit(job, body, state, compares, celery)
    return CompareCreated(id=record.id, status=record.status.value, url=compare_path(job.job_id, record.id))


def submit(job: JobRecord, body: CompareCreate, state: RedisJobStore, compares: RedisCompareStore,
           celery: Celery) -> CompareRecord:
    """Check `body` against the job, store its queued record, enqueue its task (the JSON API and the page)."""
    versions = [CheckpointRecord.load(c).version for c in state.list_checkpoints(job.job_id)]
    now = time.time()
    record = resolve(job, versions, body, uuid.uuid4().hex, now)
    check_room(job.job_id, compares.list(job.job_id), now)
    # Counted per tenant as well: a compare is exempt from the stages' fair admission (docs/fairness.md).
    compares.admit(job.tenant, record, MAX_TENANT_COMPARES, now)
    try:
        queue.send(celery, queue.COMPARE, job_id=job.job_id, compare_id=record.id)
    except Exception as e:  # kombu/redis raise many types; all mean "broker did not take it"
        set_status(compares, job.job_id, record.id, CompareStatus.FAILED, error=f"could not enqueue: {e}")
        raise QueueUnavailable(f"could not enqueue compare {record.id} of job {job.job_id}: {e}") from e
    return record


@router.get("/{job_id}/compare", response_model=ComparesPublic)
def list_compares(job: JobDep, compares: ComparesDep) -> ComparesPublic:
    data = [public(r) for r in compares.list(job.job_id)]
    return ComparesPublic(data=data, count=len(data))


@router.get("/{job_id}/compare/{compare_id}", response_model=ComparePublic)
def get_compare(job: JobDep, compare_id: str, compares: ComparesDep) -> ComparePublic:
    return public(compares.get(job.job_id, compare_id))


def public(r: CompareRecord) -> ComparePublic:
    def url(key: str) -> str:
        return object_url(r.job_id, key) or ""

    results = [
        SeedComparePublic(seed=s.seed, base_image_url=url(s.base_image_key), trained_image_url=url(s.trained_image_key),
                          base_score=s.base_score, trained_score=s.trained_score,
                          masks=[MaskPublic(item=item, url=url(k)) for item, k in zip(r.items, s.mask_keys, strict=False)])
        for s in r.results
    ]
    n = len(results)
    return ComparePublic(
        id=r.id, job_id=r.job_id, status=r.status.value, prompt=r.prompt, items=r.items,
        mask_thresholds=r.mask_thresholds, seeds=r.seeds, version=r.version, created_at=r.created_at,
        updated_at=r.updated_at, error=r.error, results=results,
        base_mean_score=sum(s.base_score for s in results) / n if n else None,
        trained_mean_score=sum(s.trained_score for s in results) / n if n else None,
    )
