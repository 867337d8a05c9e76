"""Infrastructure settings (URLs, credentials, limits) for every dfusion process.

One `Settings` object, read from the environment once through the cached `get_settings()`
and injected everywhere else, so nothing else in the code base reads `os.environ` and tests
override settings by constructing `Settings(...)` directly. Hyperparameters live in
`dfusion_core.config`, not here. Secrets have no default.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, PositiveInt, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from dfusion_core.hub import HubOptions
from dfusion_core.registry import MODELS

#: The worker queues, one per stage kind: the one place they are listed (here, below
#: `services.queue`, which routes tasks to them, because the worker placement below is keyed by them).
QUEUES = ("sample", "score", "fuse", "train")
#: stage queue -> a positive count; from the environment as `sample=2,fuse=2` or a JSON object.
StageCounts = Annotated[dict[str, PositiveInt], NoDecode]


def _alias(name: str) -> AliasChoices:
    """Accept both `DFUSION_<NAME>` and the plain `<NAME>` conventional in compose files."""
    return AliasChoices(f"DFUSION_{name}", name)


class Settings(BaseSettings):
    """Everything a process needs to reach Redis and the object store, plus service limits."""

    model_config = SettingsConfigDict(env_prefix="DFUSION_", extra="ignore", frozen=True)

    redis_url: str = Field(default="redis://127.0.0.1:6379/0", validation_alias=_alias("REDIS_URL"))
    s3_endpoint: str | None = Field(
        default=None, validation_alias=_alias("S3_ENDPOINT"), description="host:port of the S3 server; None = local dir"
    )
    s3_access_key: str | None = Field(default=None, validation_alias=_alias("S3_ACCESS_KEY"))
    s3_secret_key: str | None = Field(default=None, validation_alias=_alias("S3_SECRET_KEY"), repr=False)
    s3_bucket: str = Field(default="dfusion", validation_alias=_alias("S3_BUCKET"))
    s3_secure: bool = Field(default=False, description="use https to reach the S3 endpoint")
    storage_dir: Path = Field(default=Path(".dfusion/blobs"), description="local blob dir used when s3_endpoint is None")
    models: dict[str, str] = Field(
        default_factory=dict,
        description="model name -> local diffusers folder on the workers; 'tiny' and 'toy' are built in; "
                    "any other 'owner/name' is a Hugging Face Hub id",
    )
    hf_hub_cache: Path | None = Field(
        default=None, validation_alias=_alias("HF_HUB_CACHE"),
        description="the Hugging Face hub cache Hub ids resolve through; None = huggingface_hub's (HF_HOME/hub)",
    )
    hf_hub_offline: bool = Field(
        default=False, validation_alias=_alias("HF_HUB_OFFLINE"),
        description="never reach the Hub: Hub ids load from the cache only, and the API rejects uncached ones",
    )
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    auth_required: bool = True
    max_concurrent_jobs_per_tenant: int = Field(default=4, ge=1)
    max_samples_per_job: int = Field(default=4096, ge=1)
    max_body_bytes: int = Field(default=1 << 20, ge=1, description="largest request body the API accepts, bytes")
    presign_expiry_s: int = Field(default=300, ge=1, le=7 * 24 * 3600, description="presigned URL lifetime, seconds")
    broker_url: str | None = Field(
        default=None, validation_alias=_alias("BROKER_URL"),
        description="Celery broker (redis://... or amqp://...); None = redis_url. Redis stays the coordinator",
    )
    visibility_timeout_s: int = Field(
        default=6 * 3600, ge=1,
        description="Redis broker: seconds before an unacked message is redelivered; above the longest task "
                    "(leases, not this, bring a dead worker's task back)",
    )
    lease_ttl_s: float = Field(
        default=6.0, gt=0, le=300, description="seconds a running unit's lease outlives its last renewal (every ttl/3)"
    )
    test_stage_sleep: dict[str, float] = Field(
        default_factory=dict, description="tests only: stage -> seconds each of its tasks sleeps inside its lease"
    )
    sim_denoiser_ms: float = Field(
        default=60.0, ge=0, le=60000,
        description="the `sim` model (dfusion_core/sim.py): milliseconds each denoiser call waits, using no CPU",
    )
    sim_scorer_ms: float = Field(
        default=20.0, ge=0, le=60000, description="the `sim` scorer: milliseconds each scoring call waits"
    )
    retention_days: float | None = Field(
        default=None, gt=0, le=36500,
        description="purge a succeeded, failed or cancelled job's objects and keys this many days after it ended "
                    "(the workers sweep every retention_sweep_s); None = keep every job until purged by hand",
    )
    retention_sweep_s: float = Field(
        default=600.0, ge=1, le=7 * 24 * 3600, description="seconds between retention sweeps (one worker sweeps)"
    )
    queued_per_job: int = Field(
        default=2, ge=0, le=100000,
        description="tasks of one job waiting in a stage's queue at a time; its other ready tasks are held in "
                    "Redis and enter one per task of it a worker takes, so the queue serves active jobs in turn "
                    "(docs/fairness.md); 0 = no limit: one first-in-first-out queue per stage",
    )
    task_max_retries: int = Field(default=5, ge=0)
    device: str | None = Field(default=None, description="torch device of a worker (cuda:N, cpu); None = the GPU if any")
    torch_threads: int | None = Field(default=None, ge=1, description="CPU threads per worker process; None = torch's default")
    worker_concurrency: StageCounts = Field(
        default_factory=dict,
        description="the local stack (devstack): stage queue -> prefork children of its worker (celery -c), "
                    "e.g. 'sample=2,fuse=2'; a stage left out runs 1. Each child loads its own models",
    )
    worker_threads: StageCounts = Field(
        default_factory=dict,
        description="the local stack (devstack): stage queue -> torch threads of each child of its worker, "
                    "e.g. 'train=2'; a stage left out runs torch_threads",
    )

    @field_validator("worker_concurrency", "worker_threads", mode="before")
    @classmethod
    def _stage_counts_from_text(cls, value: Any) -> Any:
        return _stage_counts(value) if isinstance(value, str) else value

    @field_validator("worker_concurrency", "worker_threads")
    @classmethod
    def _known_stages(cls, value: dict[str, int]) -> dict[str, int]:
        if unknown := [stage for stage in value if stage not in QUEUES]:
            raise ValueError(f"unknown stage(s) {', '.join(map(repr, unknown))}; the stages are {', '.join(QUEUES)}")
        return value

    def broker(self) -> str:
        """The Celery broker URL: `broker_url`, else Redis."""
        return self.broker_url or self.redis_url

    def hub(self) -> HubOptions:
        """How Hub ids resolve in this process (offline False leaves it to huggingface_hub)."""
        return HubOptions(cache_dir=self.hf_hub_cache, offline=True if self.hf_hub_offline else None)

    def model_names(self) -> list[str]:
        """Names a job may ask for: the built-in models (`dfusion_core.registry`) plus the configured ones."""
        return sorted({*MODELS, *self.models})


def _stage_counts(text: str) -> Mapping[str, Any]:
    """`sample=2,fuse=2` (or the JSON object `{"sample": 2, "fuse": 2}`) as a mapping; the counts
    are validated by the field that reads it. An empty string is the empty mapping."""
    text = text.strip()
    if text.startswith("{"):
        return dict(json.loads(text))  # a JSONDecodeError is a ValueError: pydantic reports it on the field
    counts: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        stage, eq, count = (s.strip() for s in item.partition("="))
        if not (stage and eq and count) or stage in counts:
            raise ValueError(f"{item!r} in {text!r}: write stage=N once per stage, comma-separated, e.g. sample=2,fuse=2")
        counts[stage] = count
    return counts


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
