"""The job's stages as plain functions over a Context (state, store, dispatch, runtime).

Celery tasks (workers/celery_app.py) and the embedded runner call exactly these. Each stage:
validate -> fetch inputs -> one core call -> store outputs (deterministic keys) -> update
state -> `advance` with the event it completed. What an event makes ready, and which fan-in it
joins, is `workers.flow`'s alone (the job's life, read top to bottom there). Fan-in is by
exactly-once `mark_done`, never by chords; a re-run member of a complete fan-in re-enqueues
until the enqueue is confirmed (`common.fan_in`).

Modules: `common` (Context, advance, fan-in, object I/O, the failure policy), `sampling`
(start_job, sample), `scoring` (score, score_targets), `fusing` (fuse), `training` (train).
"""

from workers.stages.common import Context, Dispatch, advance, fail_job, failure_reason
from workers.stages.fusing import fuse
from workers.stages.sampling import sample, start_job
from workers.stages.scoring import score, score_targets
from workers.stages.training import train

__all__ = [
    "Context", "Dispatch", "advance", "fail_job", "failure_reason", "fuse", "sample", "score", "score_targets",
    "start_job", "train",
]
