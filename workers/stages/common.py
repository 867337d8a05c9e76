"""What every stage shares: the Context, the job's spec, `advance` (the job's flow applied:
fan-in, then enqueue), object I/O, and the failure policy both runners apply (the Celery tasks
and the embedded runner)."""

from __future__ import annotations

import logging

from dfusion_core.errors import TrajectoryError
from dfusion_core.trajectories import Trajectory
from services.jobspec import JobSpec
from services.state import JobStatus, JobStore
from services.storage import each, io_timer
from workers.context import Context, Dispatch
from workers.flow import Event, JobFlow, sent_scope

__all__ = ["Context", "Dispatch", "advance", "fail_job", "failure_reason", "fan_in", "get_all", "job_spec",
           "load_trajectory", "put_all", "sent"]

log = logging.getLogger(__name__)

#: The longest failure reason stored on a job.
MAX_REASON = 2000


def job_spec(ctx: Context, job_id: str) -> JobSpec | None:
    """The job's spec, or None when the job should do no more work (cancelled, failed, done)."""
    job = ctx.state.get_job(job_id)
    if job.status.terminal:
        log.info("job %s is %s: skipping", job_id, job.status.value)
        return None
    return JobSpec.model_validate(job.spec)


# --- the flow ----------------------------------------------------------------------------------
def advance(ctx: Context, job_id: str, flow: JobFlow, event: Event) -> None:
    """Enqueue what `event` makes ready (`JobFlow.next_tasks`), once its fan-in has completed."""
    gate = flow.gate(event)
    if gate is not None and not fan_in(ctx, job_id, gate.scope, gate.member, gate.expected):
        return
    for task in flow.next_tasks(event):
        ctx.dispatch(task.name, job_id=job_id, **task.kwargs())
    if gate is not None:
        sent(ctx, job_id, gate.scope)


def fan_in(ctx: Context, job_id: str, scope: str, member: str, expected: int) -> bool:
    """Whether this call must enqueue what follows `scope` (then call `sent` once it has).

    True for the call that completes the scope, and again for a re-run of a member of a complete
    scope whose enqueue was never confirmed: the completer may have died (or lost the broker)
    between firing and enqueueing, and nothing else would ever enqueue the next stage. Stages are
    idempotent, so the rare duplicate (a member re-run while the completer is still enqueueing)
    only costs time; confirmed scopes are not re-enqueued, so redeliveries never cascade.
    """
    if ctx.state.mark_done(job_id, scope, member, expected):
        return True
    return ctx.state.done_count(job_id, scope) >= expected and ctx.state.done_count(job_id, sent_scope(scope)) == 0


def sent(ctx: Context, job_id: str, scope: str) -> None:
    ctx.state.mark_done(job_id, sent_scope(scope), "ok", 1)


# --- objects -----------------------------------------------------------------------------------
def put_all(ctx: Context, objects: list[tuple[str, bytes, str]]) -> None:
    """Store a task's objects as one batch: concurrently on S3, and under a lease (the Celery
    tasks) behind one lease check and with one ledger write (`FencedStore.put_many`)."""
    with io_timer():
        ctx.store.put_many(objects)


def get_all(ctx: Context, keys_: list[str]) -> list[bytes]:
    with io_timer():
        return each(ctx.store.get, keys_)


def load_trajectory(key: str, data: bytes) -> Trajectory:
    """A stored trajectory; a corrupt one fails the job with an error naming its object."""
    try:
        return Trajectory.from_bytes(data)
    except TrajectoryError as exc:
        raise TrajectoryError(f"object {key}: {exc}") from exc


# --- failure policy ----------------------------------------------------------------------------
def failure_reason(stage: str, exc: BaseException) -> str:
    """`score: ValueError: ...`: the stage (task name without `dfusion.`), the error's type and text."""
    return f"{stage.removeprefix('dfusion.')}: {type(exc).__name__}: {exc}"


def fail_job(state: JobStore, job_id: str, reason: str) -> None:
    """Mark the job failed with `reason` unless it has already ended. Never raises: the failure
    being reported is what matters, not a second one while recording it."""
    try:
        if not state.get_job(job_id).status.terminal:
            state.set_status(job_id, JobStatus.FAILED, reason[:MAX_REASON])
    except Exception:  # noqa: BLE001 - never mask the original failure
        log.exception("could not mark job %s failed", job_id)
