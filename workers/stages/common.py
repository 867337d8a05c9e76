"""What every stage shares: the Context, the job's spec, `advance` (the job's flow applied:
fan-in, then enqueue), object I/O, and the failure policy both runners apply (the Celery tasks
and the embedded runner)."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

from dfusion_core.errors import TrajectoryError
from dfusion_core.trajectories import Trajectory, unpack_trajectories
from services.jobspec import JobSpec
from services.state import JobStatus, JobStore
from services.storage import each, io_timer
from workers import keys
from workers.context import Context, Dispatch
from workers.flow import Event, JobFlow, sent_scope

__all__ = ["Context", "Dispatch", "advance", "fail_job", "failure_reason", "fan_in", "get_all", "job_spec",
           "load_trajectories", "put_all", "sent"]

log = logging.getLogger(__name__)

#: The longest failure reason stored on a job.
MAX_REASON = 2000


#: Parsed specs this process keeps, by (job_id, created_at): a spec never changes after submission,
#: and reading and validating a 240-prompt spec every task made each task's cost grow with its job.
#: The creation time keeps two stores' jobs of one id apart (tests, the embedded runner).
_specs: OrderedDict[tuple[str, float], JobSpec] = OrderedDict()
_specs_lock = threading.Lock()
MAX_CACHED_SPECS = 64


def job_spec(ctx: Context, job_id: str) -> JobSpec | None:
    """The job's spec, or None when the job should do no more work (cancelled, failed, done)."""
    status, created_at = ctx.state.job_stamp(job_id)
    if status.terminal:
        log.info("job %s is %s: skipping", job_id, status.value)
        return None
    key = (job_id, created_at)
    with _specs_lock:
        spec = _specs.get(key)
        if spec is not None:
            _specs.move_to_end(key)
            return spec
    spec = JobSpec.model_validate(ctx.state.get_job(job_id).spec)
    with _specs_lock:
        _specs[key] = spec
        while len(_specs) > MAX_CACHED_SPECS:
            _specs.popitem(last=False)
    return spec


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


def load_trajectories(ctx: Context, refs: list[str]) -> list[Trajectory]:
    """The trajectories `refs` name (`keys.split_ref`), in their order: each distinct object is
    fetched once (all concurrently) and decoded once, however many of its members are named. A plain
    key is a whole single-trajectory object, as jobs stored before trajectories were bundled."""
    wanted: dict[str, set[str | None]] = {}
    for key, member in map(keys.split_ref, refs):
        wanted.setdefault(key, set()).add(member)
    names = list(wanted)
    loaded: dict[tuple[str, str | None], Trajectory] = {}
    for key, data in zip(names, get_all(ctx, names), strict=True):
        loaded |= {(key, m): t for m, t in _decode(key, data, wanted[key]).items()}
    return [loaded[keys.split_ref(ref)] for ref in refs]


def _decode(key: str, data: bytes, members: set[str | None]) -> dict[str | None, Trajectory]:
    """`members` of the object `key` (None: the object is one whole trajectory); a corrupt object
    or a missing member fails the job with an error naming both."""
    try:
        if members == {None}:
            return {None: Trajectory.from_bytes(data)}
        bundle: dict[str | None, Trajectory] = {m: t for m, t in unpack_trajectories(data).items()}
    except TrajectoryError as exc:
        raise TrajectoryError(f"object {key}: {exc}") from exc
    missing = sorted(str(m) for m in members - bundle.keys())
    if missing:
        raise TrajectoryError(f"object {key}: the bundle has no member {missing[0]!r}")
    return {m: bundle[m] for m in members}


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
