"""The job's stages as plain functions over a Context (state, store, dispatch, runtime).

Celery tasks (workers/celery_app.py) and the embedded runner call exactly these. Each stage:
validate -> fetch inputs -> one core call -> store outputs (deterministic keys) -> update
state -> enqueue what became ready. Fan-in is by exactly-once `mark_done`, never by chords; a
re-run member of a complete fan-in re-enqueues until the enqueue is confirmed (`common.fan_in`).

Flow per epoch e (policy version e):
  sample(e, p, b) -> score(e, p, b) -> [all batches of prompt p scored] fuse(e, p, c)
  -> score_targets(e, p, c) (fused targets scored on their own images; plain pairs need none)
  -> [every chunk of every prompt has scored pairs] train(e): resumes train(e-1)'s trainer,
     trains the pairs that carry a preference, all prompts mixed
  -> publish version e+1, evaluate, then epoch e+1 or done.

Modules: `common` (Context, fan-in, object I/O, the failure policy), `sampling` (start_job,
start_epoch, sample), `scoring` (score, score_targets), `fusing` (fuse), `training` (train).
"""

from workers.stages.common import Context, Dispatch, fail_job, failure_reason
from workers.stages.fusing import fuse
from workers.stages.sampling import sample, start_epoch, start_job
from workers.stages.scoring import score, score_targets
from workers.stages.training import train

__all__ = [
    "Context", "Dispatch", "fail_job", "failure_reason", "fuse", "sample", "score", "score_targets", "start_epoch",
    "start_job", "train",
]
