"""Embedded mode: a whole job in one process, with local-directory storage and no Redis.

The same stage functions the Celery workers run, fed from an in-process FIFO instead of the
broker, with `MemoryJobStore` standing in for Redis. The run folder holds the job's objects
(images, masks, pairs, trajectory bundles, checkpoints/<version>/) plus metrics.json and report.html,
and with `report_to` the job's curves: tensorboard/, wandb/ or mlflow.db (workers/tracking.py).
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dfusion_core.errors import DFusionError
from dfusion_core.storage import LocalDirStore
from reports.job import write_report
from services.jobspec import JobSpec
from services.queue import FUSE, SAMPLE, SCORE, SCORE_TARGETS, START_JOB, TRAIN
from services.records import PairRecord, SampleRecord, load_all
from services.state.memory import MemoryJobStore
from workers import keys, stages
from workers.runtime import Runtime, pick_device
from workers.tracking import job_tracker

log = logging.getLogger(__name__)

STAGES: dict[str, Callable[..., None]] = {
    SAMPLE: stages.sample,
    SCORE: stages.score,
    FUSE: stages.fuse,
    SCORE_TARGETS: stages.score_targets,
    TRAIN: stages.train,
}


class JobDirStore(LocalDirStore):
    """A LocalDirStore rooted at the run folder: key 'jobs/<id>/x' lives at '<root>/x'."""

    def __init__(self, root: Path, job_id: str) -> None:
        super().__init__(root)
        self.prefix = keys.job_prefix(job_id)

    def _path(self, key: str) -> Path:
        return super()._path(key.removeprefix(self.prefix))

    def list(self, prefix: str = "") -> list[str]:
        return [self.prefix + k for k in super().list(prefix.removeprefix(self.prefix))]


@dataclass(frozen=True)
class RunResult:
    job_id: str
    out: Path
    status: str
    counts: dict[str, int]
    metrics: list[dict[str, Any]]
    error: str | None


Progress = Callable[[dict[str, int], dict[str, int]], None]  # (counts, totals)


def run_embedded(
    spec: JobSpec,
    out: str | Path,
    *,
    models: dict[str, str] | None = None,
    device: str | None = None,
    job_id: str = "local",
    progress: Progress | None = None,
) -> RunResult:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.json").write_text(spec.model_dump_json(indent=2))
    state = MemoryJobStore()
    state.create_job(job_id, "local", spec.model_dump(mode="json"))
    queue: deque[tuple[str, dict[str, Any]]] = deque()
    ctx = stages.Context(
        state=state,
        store=JobDirStore(out, job_id),
        dispatch=lambda name, **kw: queue.append((name, kw)),
        runtime=Runtime(models=dict(models or {}), device=pick_device(device)),
    )
    totals = expected_totals(spec)
    name = START_JOB
    # the train stage logs each epoch to it (tracking.report_epoch); a missing library stops us here
    with job_tracker(spec.report_to, job_id, out):
        try:
            stages.start_job(ctx, job_id)
            while queue:
                name, kwargs = queue.popleft()
                STAGES[name](ctx, **kwargs)
                if progress is not None:
                    progress(state.get_counts(job_id), totals)
        except Exception as exc:  # the workers' policy: any failed stage fails the job with a readable reason
            log.error("%s failed", name, exc_info=not isinstance(exc, DFusionError))
            stages.fail_job(state, job_id, stages.failure_reason(name, exc))
    job = state.get_job(job_id)
    metrics = state.get_metrics(job_id)
    samples = load_all(SampleRecord, state.list_samples(job_id))
    pairs = load_all(PairRecord, state.list_pairs(job_id))
    local = lambda key: key.removeprefix(keys.job_prefix(job_id))  # noqa: E731 - object key -> run-folder path
    (out / "metrics.json").write_text(json.dumps({"status": job.status.value, "epochs": metrics}, indent=2))
    (out / "samples.json").write_text(json.dumps([s.dump() for s in samples], indent=1))
    (out / "pairs.json").write_text(json.dumps([p.dump() for p in pairs], indent=1))
    write_report(out / "report.html", spec, samples, pairs, metrics, local)
    return RunResult(job_id, out, job.status.value, state.get_counts(job_id), metrics, job.error)


def expected_totals(spec: JobSpec) -> dict[str, int]:
    """Final value of each progress counter (optimizer steps depend on the pair filter: 0 = unknown)."""
    return {**spec.expected_counts().total, "trained_steps": 0}
