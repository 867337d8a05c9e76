"""Request and response bodies: the `JobCreate` / `JobPublic` family of the HTTP API.

`JobCreate` is `services.jobspec.JobSpec` itself (one validation, shared with the workers), so a
job body the API accepts is exactly a spec the workers can run. Response models are separate and
only ever carry what a tenant may see: ids, counts, scores and URLs, never raw object-store keys.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from services.jobspec import JobSpec
from services.state.types import JobRecord, JobStatus


class JobCreate(JobSpec):
    """Body of POST /v1/jobs: the job spec (prompts with item words, model, budget, hyperparameters).

    NaN and Infinity are refused by the spec itself (Python's json accepts them; Redis JSON does not)."""


class JobCreated(BaseModel):
    """Answer to a create or cancel: where the job stands now."""

    id: str
    status: JobStatus


class JobPurged(BaseModel):
    """Answer to a purge (`DELETE /v1/jobs/{id}?purge=true`): the job is gone, with its objects."""

    id: str
    status: JobStatus = Field(description="the status the job had when it was purged")
    purged: bool = True
    objects: int = Field(description="objects removed from the store")
    stored_bytes: int = Field(0, description="bytes those objects took (the job's stored_bytes when purged)")


class Counts(BaseModel):
    samples: int = 0
    scored: int = 0
    pairs: int = 0
    trained_steps: int = 0


class SpecSummary(BaseModel):
    """What was asked for, in a few fields (the full spec stays server-side)."""

    model: str
    revision: str | None = Field(None, description="Hub ids: the branch, tag or commit loaded (None: main)")
    variant: str | None = Field(None, description="the model's weights variant, e.g. fp16")
    report_to: str = "none"
    prompts: list[str]
    samples_per_prompt: int
    epochs: int
    total_samples: int
    expected_counts: dict[str, int] = Field(
        default_factory=dict, description="final samples / scored / pairs counts of the whole job")
    algorithm: str | None = None
    pairs: str | None = None
    pair_filter: str | None = None
    preset: str | None = Field(None, description="the model's preset the job got under its own values (None: none)")
    scorer: str | None = None
    sampling: dict[str, Any] = Field(default_factory=dict, description="the sampling settings used")
    fusion: dict[str, Any] = Field(default_factory=dict, description="the fusion settings used")
    training: dict[str, Any] = Field(default_factory=dict, description="the training settings used")
    eval_seeds: int | None = Field(None, description="samples per held-out prompt")
    train_eval_seeds: int = Field(0, description="fresh seeds per prompt of the before/after evaluation on the "
                                                 "job's own prompts (0: off)")

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> SpecSummary:
        s = JobSpec.model_validate(spec)
        return cls(
            model=s.model, revision=s.revision, variant=s.variant, report_to=s.report_to,
            prompts=[p.text for p in s.prompts], samples_per_prompt=s.samples_per_prompt,
            epochs=s.epochs, total_samples=s.total_samples, expected_counts=s.expected_counts().total,
            algorithm=s.training.algorithm, pairs=s.training.pairs, pair_filter=s.training.pair_filter,
            preset=s.preset, scorer=s.scorer, sampling=s.sampling.model_dump(mode="json"),
            fusion=s.fusion.model_dump(mode="json"), training=s.training.model_dump(mode="json"),
            eval_seeds=s.eval_seeds, train_eval_seeds=s.train_eval_seeds,
        )


class JobSummary(BaseModel):
    """One row of GET /v1/jobs."""

    id: str
    status: JobStatus
    created_at: float = Field(description="unix seconds")
    updated_at: float
    policy_version: int
    error: str | None = None
    stored_bytes: int = Field(0, description="bytes the job's objects (images, trajectories, pairs, checkpoints) "
                                             "take in the object store now, until it is purged")
    stored_objects: int = Field(0, description="how many objects the job keeps in the object store")
    spec: SpecSummary

    @classmethod
    def from_record(cls, job: JobRecord) -> JobSummary:
        return cls(
            id=job.job_id, status=job.status, created_at=job.created_at, updated_at=job.updated_at,
            policy_version=job.policy_version, error=job.error, stored_bytes=job.stored_bytes,
            stored_objects=job.stored_objects, spec=SpecSummary.from_spec(job.spec),
        )


class RunningUnit(BaseModel):
    """A unit of work a worker is computing now (from its lease, renewed every few seconds)."""

    unit: str = Field(description="stage and indices, e.g. train-e0 or sample-e0-p1-b2")
    worker: str = Field(description="the Celery node and process running it")
    task_id: str
    since: float = Field(description="unix seconds when it started")


class JobPublic(JobSummary):
    """GET /v1/jobs/{id}: the header plus live counters, per-epoch metrics and running units."""

    counts: Counts
    metrics: list[dict[str, Any]] = Field(default_factory=list, description="one dict per finished epoch")
    running: list[RunningUnit] = Field(
        default_factory=list, description="units with a live lease: a long task is listed; a stuck one's lease expires"
    )


class JobsPublic(BaseModel):
    data: list[JobSummary]
    count: int = Field(description="jobs in this page")
    total: int = Field(description="the tenant's jobs in all")
    next_offset: int | None = Field(None, description="offset of the next page; None on the last one")


class SamplePublic(BaseModel):
    id: str
    epoch: int | None = None
    prompt_index: int | None = None
    policy_version: int | None = None
    prompt: str | None = None
    score: float | None = None
    image_url: str | None = Field(None, description="proxy path served by this API")
    image_direct_url: str | None = Field(None, description="presigned store URL, when asked for and available")


class SamplesPublic(BaseModel):
    data: list[SamplePublic]
    count: int


class PairPublic(BaseModel):
    id: str
    epoch: int | None = None
    prompt_index: int | None = None
    base: str | None = Field(None, description="sample id of the base (loser) image")
    reference: str | None = Field(None, description="sample id of the reference (winner) image")
    base_score: float | None = None
    reference_score: float | None = None
    target_score: float | None = Field(None, description="the scorer on the target's own image; None until scored")
    trained: bool | None = Field(None, description="whether the pair filter kept it for training; None until trained")
    target_image_url: str | None = None
    base_image_url: str | None = None
    reference_image_url: str | None = None
    mask_url: str | None = None


class PairsPublic(BaseModel):
    data: list[PairPublic]
    count: int


class CheckpointPublic(BaseModel):
    version: int
    url: str | None = Field(None, description="proxy path of the LoRA safetensors")
    direct_url: str | None = None


class CheckpointsPublic(BaseModel):
    data: list[CheckpointPublic]
    count: int


class Health(BaseModel):
    status: str
    redis: str
    storage: str


# --- compare: a trained policy beside its base (services.compare) ---------------------------------
class CompareCreated(BaseModel):
    """Answer to POST /v1/jobs/{id}/compare: the compare's id and where to read it."""

    id: str
    status: str = Field(description="queued | running | succeeded | failed")
    url: str = Field(description="GET it until its status is succeeded or failed")


class MaskPublic(BaseModel):
    item: str = Field(description="the item word")
    url: str = Field(description="proxy path of the trained model's binary item mask (PNG, white = item)")


class SeedComparePublic(BaseModel):
    """One seed: the base and the trained image from the same noise, with their scores."""

    seed: int
    base_image_url: str
    trained_image_url: str
    base_score: float
    trained_score: float
    masks: list[MaskPublic] = Field(default_factory=list, description="one per item, in the request's order")


class ComparePublic(BaseModel):
    """GET /v1/jobs/{id}/compare/{compare_id}."""

    id: str
    job_id: str
    status: str = Field(description="queued | running | succeeded | failed")
    prompt: str
    items: list[str]
    mask_thresholds: list[float] = Field(description="the thresholds used (mask_mode 'absolute'; the relative "
                                                     "modes ignore them)")
    seeds: list[int]
    version: int = Field(description="the policy version compared with the base (version 0)")
    created_at: float
    updated_at: float
    error: str | None = None
    results: list[SeedComparePublic] = Field(default_factory=list, description="one per seed once succeeded")
    base_mean_score: float | None = None
    trained_mean_score: float | None = None


class ComparesPublic(BaseModel):
    data: list[ComparePublic]
    count: int
