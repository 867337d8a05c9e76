"""Jobs and their records: create (202 + START_JOB enqueued), list, get, cancel, samples, pairs, checkpoints.

Thin on purpose: validation is JobSpec's, persistence is the JobStore's, status codes are api.errors'.
Records are loaded through services.records (one serializer, shared with the workers) and projected
onto public schemas; object keys become proxy URLs under /v1/jobs/{id}/objects/ (and, on request,
presigned store URLs).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Query, Response

from api.deps import EnqueueDep, JobDep, SettingsDep, StateDep, StoreFactoryDep, TenantDep
from api.schemas import (
    CheckpointPublic,
    CheckpointsPublic,
    Counts,
    JobCreate,
    JobCreated,
    JobPublic,
    JobPurged,
    JobsPublic,
    JobSummary,
    PairPublic,
    PairsPublic,
    RunningUnit,
    SamplePublic,
    SamplesPublic,
)
from dfusion_core.errors import ConfigError
from dfusion_core.storage import BlobStore
from services.modelcheck import check_models, pin_revision
from services.records import CheckpointRecord, PairRecord, SampleRecord, load_all
from services.retention import purge_job
from services.state.types import InvalidTransition, JobStatus
from services.storage import presigned_url
from services.telemetry import Telemetry

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

PresignQuery = Annotated[bool, Query(description="also return presigned object-store URLs when the store has them")]


def object_url(job_id: str, key: Any) -> str | None:
    """Proxy path for an object key of this job (None when the record has no such key yet)."""
    if not isinstance(key, str) or not key:
        return None
    return f"/v1/jobs/{job_id}/objects/{quote(key, safe='/')}"


class _Urls:
    """Turns keys into (proxy, direct) URLs; direct only when asked, so listings don't need the store."""

    def __init__(self, job_id: str, store: BlobStore | None, expires_s: int) -> None:
        self.job_id, self.store, self.expires_s = job_id, store, expires_s

    def proxy(self, key: Any) -> str | None:
        return object_url(self.job_id, key)

    def direct(self, key: Any) -> str | None:
        if self.store is None or not isinstance(key, str) or not key.startswith(f"jobs/{self.job_id}/"):
            return None
        return presigned_url(self.store, key, self.expires_s)


@router.post("", status_code=202, response_model=JobCreated)
def create_job(
    body: JobCreate, tenant: TenantDep, settings: SettingsDep, state: StateDep, enqueue: EnqueueDep
) -> JobCreated:
    """Validate the spec against this deployment's limits, record the job, enqueue its start."""
    check_models(body, settings)
    body = pin_revision(body, settings)  # every worker loads the commit `main` (or the ref) is at now
    if body.total_samples > settings.max_samples_per_job:
        raise ConfigError(
            "samples_per_prompt",
            f"samples_per_prompt * len(prompts) * epochs = {body.total_samples} exceeds this server's "
            f"limit of {settings.max_samples_per_job} samples per job",
        )
    job_id = uuid.uuid4().hex
    job = state.create_job(job_id, tenant, body.model_dump(mode="json"), settings.max_concurrent_jobs_per_tenant)
    try:
        enqueue(job_id)
    except Exception as e:
        # Free the tenant's slot: a job nobody will start must not count as active.
        state.set_status(job_id, JobStatus.FAILED, error=f"could not enqueue: {e}")
        raise
    return JobCreated(id=job.job_id, status=job.status)


#: A page of the job list: each job's summary validates its spec, so an unbounded list costs time
#: and memory in proportion to the tenant's history (bench/load.py found it: bench/RESULTS.md).
PAGE_DEFAULT, PAGE_MAX = 50, 500
#: Redis ranks are signed 64-bit: an offset past that made the store's ZREVRANGE fail (a 500 the API
#: fuzz test found). No tenant has 2**40 jobs, so a larger offset is refused as the bad input it is.
OFFSET_MAX = 2**40
LimitQuery = Annotated[int, Query(ge=1, le=PAGE_MAX, description="jobs per page")]
OffsetQuery = Annotated[int, Query(ge=0, le=OFFSET_MAX, description="jobs to skip, newest first (a page's next_offset)")]


@router.get("", response_model=JobsPublic)
def list_jobs(tenant: TenantDep, state: StateDep, limit: LimitQuery = PAGE_DEFAULT,
              offset: OffsetQuery = 0) -> JobsPublic:
    """The caller's jobs, newest first, a page at a time."""
    jobs = [JobSummary.from_record(j) for j in state.list_jobs(tenant, offset=offset, limit=limit)]
    total = state.count_jobs(tenant)
    following = offset + len(jobs)
    return JobsPublic(data=jobs, count=len(jobs), total=total, next_offset=following if following < total else None)


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job: JobDep, state: StateDep) -> JobPublic:
    summary = JobSummary.from_record(job)
    running = [RunningUnit(unit=lease.unit, worker=lease.worker, task_id=lease.task_id, since=lease.since)
               for lease in state.leases(job.job_id)]
    return JobPublic(
        **summary.model_dump(), counts=Counts(**state.get_counts(job.job_id)), metrics=state.get_metrics(job.job_id),
        running=running,
    )


PurgeQuery = Annotated[bool, Query(description="remove an ended job's objects and keys instead of cancelling it "
                                              "(200); 409 naming its status while it is queued or running")]


@router.delete("/{job_id}", status_code=202, response_model=JobCreated | JobPurged)
def cancel_job(job: JobDep, state: StateDep, stores: StoreFactoryDep, response: Response,
               purge: PurgeQuery = False) -> JobCreated | JobPurged:
    """Ask the workers to stop: they check `is_cancelled` between tasks. 409 if already finished.
    With `purge=true`: remove the ended job's objects and Redis keys (services.retention)."""
    if purge:
        result = purge_job(state, stores(), job.job_id, Telemetry(state.r).forget_job)
        response.status_code = 200
        return JobPurged(id=result.job_id, status=result.status, purged=True, objects=result.objects,
                         stored_bytes=result.stored_bytes)
    if job.status.terminal:
        raise InvalidTransition(job.job_id, job.status, JobStatus.CANCELLED)
    updated = state.set_status(job.job_id, JobStatus.CANCELLED)
    return JobCreated(id=updated.job_id, status=updated.status)


@router.get("/{job_id}/samples", response_model=SamplesPublic)
def list_samples(
    job: JobDep, state: StateDep, settings: SettingsDep, stores: StoreFactoryDep, presign: PresignQuery = False
) -> SamplesPublic:
    urls = _Urls(job.job_id, stores() if presign else None, settings.presign_expiry_s)
    data = [
        SamplePublic(
            id=r.id, epoch=r.epoch, prompt_index=r.prompt_index, policy_version=r.policy_version, prompt=r.prompt,
            score=r.score, image_url=urls.proxy(r.image_key), image_direct_url=urls.direct(r.image_key),
        )
        for r in load_all(SampleRecord, state.list_samples(job.job_id))
    ]
    return SamplesPublic(data=data, count=len(data))


@router.get("/{job_id}/pairs", response_model=PairsPublic)
def list_pairs(job: JobDep, state: StateDep) -> PairsPublic:
    urls = _Urls(job.job_id, None, 0)
    data = [
        PairPublic(
            id=r.id, epoch=r.epoch, prompt_index=r.prompt_index, base=r.base, reference=r.reference,
            base_score=r.base_score, reference_score=r.reference_score, target_score=r.target_score,
            trained=r.trained, target_image_url=urls.proxy(r.target_image_key),
            base_image_url=urls.proxy(r.base_image_key), reference_image_url=urls.proxy(r.reference_image_key),
            mask_url=urls.proxy(r.mask_key),
        )
        for r in load_all(PairRecord, state.list_pairs(job.job_id))
    ]
    return PairsPublic(data=data, count=len(data))


@router.get("/{job_id}/checkpoints", response_model=CheckpointsPublic)
def list_checkpoints(
    job: JobDep, state: StateDep, settings: SettingsDep, stores: StoreFactoryDep, presign: PresignQuery = False
) -> CheckpointsPublic:
    urls = _Urls(job.job_id, stores() if presign else None, settings.presign_expiry_s)
    data = [
        CheckpointPublic(version=r.version, url=urls.proxy(r.key), direct_url=urls.direct(r.key))
        for r in map(CheckpointRecord.load, state.list_checkpoints(job.job_id))
    ]
    return CheckpointsPublic(data=data, count=len(data))
