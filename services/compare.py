"""Comparing a trained policy with its base: the request, its record, and the rules that check it.

`POST /v1/jobs/{id}/compare` stores a `CompareRecord` (queued) and enqueues `dfusion.compare`
with the job id and the compare id; a sample worker loads the job's policy version, samples the
prompt with each seed twice from the same noise (adapters off: the base; on: the trained policy),
scores both with the job's scorer and, when items are given, keeps the trained model's item masks
(`workers/compare.py`). The record then holds one `SeedResult` per seed with object keys the API
turns into proxy URLs. Pure pydantic (no torch, no Redis): the API and the workers share it.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationInfo, field_validator

from dfusion_core.errors import ConfigError
from services.jobspec import MAX_PROMPT_CHARS, JobSpec, words
from services.records import _Record
from services.state.types import JobRecord, JobStatus, StateError

#: Most seeds one compare samples (each is two images, and item masks, on a GPU worker).
MAX_COMPARE_SEEDS = 8
#: An item's mask threshold when the request gives none and the job has none for that word.
DEFAULT_MASK_THRESHOLD = 0.01
#: Most compares of one job queued or running at once (each holds a sample worker for a while).
MAX_ACTIVE_COMPARES = 4
#: Most compares of one tenant queued or running at once, over all its jobs. The tenant's job limit
#: counts only unfinished jobs and a compare needs a finished one, so without this a tenant with
#: many could fill the sample queue ahead of every other job's stage tasks, which fair admission
#: lets in a few at a time (docs/fairness.md). 8: the places the defaults give a tenant's running
#: jobs there (queued_per_job 2 x max_concurrent_jobs_per_tenant 4).
MAX_TENANT_COMPARES = 8
#: A compare still unfinished this long after it was asked for no longer counts as active.
ACTIVE_FOR_S = 3600.0


class JobNotFinished(StateError):
    """The job is still queued or running: its policy is still changing (HTTP 409)."""

    def __init__(self, job_id: str, status: JobStatus) -> None:
        self.job_id, self.status = job_id, status
        super().__init__(f"job: {job_id} is {status.value}; compare needs a finished job "
                         f"(wait for it: dfusion watch {job_id})")


class CompareNotFound(StateError, KeyError):
    """No compare with this id for this job (HTTP 404)."""

    def __str__(self) -> str:
        return f"compare not found: {self.args[0]}" if self.args else "compare not found"


class TooManyCompares(StateError):
    """The job already has MAX_ACTIVE_COMPARES compares queued or running, or its tenant
    MAX_TENANT_COMPARES (HTTP 429)."""


class CompareStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (CompareStatus.SUCCEEDED, CompareStatus.FAILED)


class CompareCreate(BaseModel):
    """Body of POST /v1/jobs/{id}/compare."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    prompt: str = Field(..., min_length=1, max_length=MAX_PROMPT_CHARS, description="the prompt to sample")
    items: list[str] = Field(default_factory=list, max_length=8,
                             description="words of the prompt whose item masks the trained model shows")
    mask_thresholds: list[float] | None = Field(
        None, max_length=8, description="one per item, in [0, 1] (mask_mode 'absolute'); left out: the job's "
        f"threshold for the same word, else {DEFAULT_MASK_THRESHOLD}")
    seeds: StrictInt | list[StrictInt] = Field(
        4, description=f"how many seeds (1..{MAX_COMPARE_SEEDS}: seeds 0..n-1) or the seeds themselves "
        f"(1..{MAX_COMPARE_SEEDS} distinct ints in [0, 2^31 - 1])")
    version: int | None = Field(None, ge=1, description="the policy version to compare; left out: the job's latest")

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the prompt is blank")
        return v

    @field_validator("items")
    @classmethod
    def _items(cls, v: list[str], info: ValidationInfo) -> list[str]:
        prompt_words = words(info.data.get("prompt") or "")
        for item in v:
            item_words = words(item)
            if not item_words:
                raise ValueError(f"item {item!r} has no word in it")
            n = len(item_words)
            if not any(prompt_words[i : i + n] == item_words for i in range(len(prompt_words) - n + 1)):
                raise ValueError(f"item {item!r} is not a word of the prompt")
        return v

    @field_validator("mask_thresholds")
    @classmethod
    def _thresholds(cls, v: list[float] | None, info: ValidationInfo) -> list[float] | None:
        if v is None:
            return v
        if "items" in info.data and len(v) != len(info.data["items"]):
            raise ValueError(f"{len(v)} values for {len(info.data['items'])} items; give one per item")
        for t in v:
            if not 0.0 <= t <= 1.0:
                raise ValueError(f"threshold {t} is outside [0, 1]")
        return v

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds_type(cls, v: object) -> object:
        def integer(x: object) -> bool:
            return isinstance(x, int) and not isinstance(x, bool)

        if not integer(v) and not (isinstance(v, list) and all(integer(x) for x in v)):
            raise ValueError(f"give a count (an integer) or a list of integer seeds, got {v!r:.40}")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: int | list[int]) -> int | list[int]:
        n = v if isinstance(v, int) else len(v)
        if not 1 <= n <= MAX_COMPARE_SEEDS:
            raise ValueError(f"give 1 to {MAX_COMPARE_SEEDS} seeds, got {n}")
        if isinstance(v, list):
            if len(set(v)) != len(v):
                raise ValueError("seeds repeat; give distinct seeds")
            if any(not 0 <= s <= 2**31 - 1 for s in v):
                raise ValueError("each seed must be in [0, 2^31 - 1]")
        return v

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)


class SeedResult(_Record):
    """One seed's outcome: the base and the trained image from the same noise, their scores, and the
    trained model's item masks (one per requested item, same order; empty without items)."""

    seed: int
    base_image_key: str
    trained_image_key: str
    base_score: float
    trained_score: float
    mask_keys: list[str] = Field(default_factory=list)


class CompareRecord(_Record):
    """A compare request as resolved against its job, and its outcome (`results`, one per seed)."""

    id: str
    job_id: str
    status: CompareStatus = CompareStatus.QUEUED
    prompt: str
    items: list[str] = Field(default_factory=list)
    mask_thresholds: list[float] = Field(default_factory=list)
    seeds: list[int]
    version: int = Field(ge=1)
    created_at: float
    updated_at: float
    error: str | None = None
    results: list[SeedResult] = Field(default_factory=list)


def resolve(job: JobRecord, checkpoints: Sequence[int], body: CompareCreate, compare_id: str,
            now: float) -> CompareRecord:
    """The record of `body` against its job: JobNotFinished (409) while the job runs, ConfigError
    (422, naming `version`) for a version the job has not published."""
    if not job.status.terminal:
        raise JobNotFinished(job.job_id, job.status)
    have = sorted(checkpoints)
    if not have:
        raise ConfigError("version", f"job {job.job_id} published no trained policy version "
                          f"(status {job.status.value}); nothing to compare with its base")
    version = body.version if body.version is not None else have[-1]
    if version not in have:
        raise ConfigError("version", f"unknown version {version}; job {job.job_id} has versions "
                          f"{', '.join(map(str, have))}")
    return CompareRecord(
        id=compare_id, job_id=job.job_id, prompt=body.prompt, items=list(body.items),
        mask_thresholds=thresholds_for(JobSpec.model_validate(job.spec), body), seeds=body.seed_list,
        version=version, created_at=now, updated_at=now,
    )


def thresholds_for(spec: JobSpec, body: CompareCreate) -> list[float]:
    """The request's thresholds, else each item's threshold in the job's prompts (the first prompt
    naming that word), else DEFAULT_MASK_THRESHOLD. Relative mask modes ignore them."""
    if body.mask_thresholds is not None:
        return list(body.mask_thresholds)
    known: dict[str, float] = {}
    for p in spec.prompts:
        for item, thr in zip(p.items, p.mask_thresholds, strict=True):
            known.setdefault(item.lower(), thr)
    return [known.get(item.lower(), DEFAULT_MASK_THRESHOLD) for item in body.items]


def check_room(job_id: str, records: Sequence[CompareRecord], now: float) -> None:
    """TooManyCompares when the job has MAX_ACTIVE_COMPARES compares queued or running (asked for
    within ACTIVE_FOR_S: one whose worker gave up on it does not block the job for good)."""
    active = [r for r in records if not r.status.terminal and now - r.created_at < ACTIVE_FOR_S]
    if len(active) >= MAX_ACTIVE_COMPARES:
        raise TooManyCompares(f"job {job_id} already has {len(active)} compares queued or running; "
                              "wait for one to finish")
