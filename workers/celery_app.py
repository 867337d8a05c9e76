"""Celery task bodies registered on the app from services.queue. Each task is one stage call.

Retries name only transient infrastructure errors (Redis or S3 unreachable), with backoff;
anything else is permanent (a corrupt trajectory, an unloadable model, an item the tokenizer
cannot find) and fails the job at once with a readable reason instead of being redelivered.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from celery import Task
from celery.exceptions import Reject
from celery.signals import worker_process_init
from kombu.exceptions import OperationalError

import workers.telemetry  # noqa: F401  (Celery signals: job/task ids on log records, task metrics to Redis)
from services.queue import (
    COMPARE,
    FUSE,
    SAMPLE,
    SCORE,
    SCORE_TARGETS,
    START_JOB,
    TRAIN,
    get_app,
    send,
    worker_argv,
)
from services.settings import get_settings
from services.state.compares import open_compares
from services.state.redis import open_state
from services.state.types import LeaseLost, StateUnavailable
from services.storage import StorageUnavailable, open_store
from workers import compare as compares
from workers import fairness, leases, redelivery, retention, stages
from workers.runtime import Runtime, configure_sim, pick_device

log = logging.getLogger(__name__)
app = get_app()
# kombu's OperationalError: the broker could not be reached to enqueue the next stage.
TRANSIENT = (StorageUnavailable, StateUnavailable, ConnectionError, TimeoutError, OperationalError)

_ctx: stages.Context | None = None
_ctx_lock = threading.Lock()


def context() -> stages.Context:
    """One Context per worker process, built on first use (after fork: no CUDA in the parent)."""
    global _ctx
    with _ctx_lock:
        if _ctx is None:
            settings = get_settings()
            if settings.torch_threads:
                import torch

                torch.set_num_threads(settings.torch_threads)
            configure_sim(settings.sim_denoiser_ms, settings.sim_scorer_ms)
            _ctx = stages.Context(
                state=open_state(settings.redis_url),
                store=open_store(settings),
                dispatch=fairness.for_settings(settings, lambda name, **kw: send(app, name, **kw)),
                runtime=Runtime(models=dict(settings.models), device=pick_device(settings.device),
                                hub=settings.hub()),
            )
        return _ctx


@worker_process_init.connect
def _reset_after_fork(**_: Any) -> None:
    global _ctx
    _ctx = None
    settings = get_settings()
    # Any Redis broker (the state's Redis or its own); RabbitMQ returns a dead consumer's messages itself.
    if sweeper := redelivery.for_settings(app, settings, open_state(settings.redis_url)):
        sweeper.start()
    if settings.retention_days:
        state = open_state(settings.redis_url)
        retention.RetentionSweeper(state.r, state, open_store(settings), settings.retention_days,
                                   settings.retention_sweep_s).start()


def fail_job(job_id: str, reason: str) -> None:
    """The stages' failure policy (stages.fail_job) on this process's state."""
    stages.fail_job(context().state, job_id, reason)


def _run(task: Task, stage: Callable[..., None], job_id: str, **kwargs: Any) -> None:
    extra = {"job_id": job_id, "task_id": task.request.id}
    try:
        computed = _once(task, stage, job_id, kwargs, extra)
    except LeaseLost as exc:
        # Another delivery took the unit over (or will: re-queued, so the unit keeps a message
        # should nobody hold it). Nothing of this run was stored past the loss; the job goes on.
        countdown = _requeue(task, job_id, kwargs)
        log.warning("%s lost its lease on %s and stopped, its writes refused (%s); re-queued in %g s",
                    task.name, leases.unit_of(task.name, kwargs), exc, countdown, extra=extra)
        return
    except TRANSIENT as exc:
        settings = get_settings()
        if task.request.retries >= settings.task_max_retries:
            fail_job(job_id, f"{task.name}: infrastructure unavailable after {task.request.retries} retries: {exc}")
            return
        delay = min(30, 2 ** task.request.retries)
        log.warning("%s transient failure, retry in %ss: %s", task.name, delay, exc, extra=extra)
        try:
            raise task.retry(exc=exc, countdown=delay, max_retries=settings.task_max_retries) from exc
        except Reject as rej:
            # Celery rejects *without* requeue when the retry cannot be published (the broker is
            # what failed): the message would be dropped and the job would hang. Keep it instead.
            log.warning("%s retry not published (%s); requeueing", task.name, rej.reason, extra=extra)
            raise Reject(exc, requeue=True) from exc
    except Exception as exc:
        log.exception("%s failed permanently", task.name, extra=extra)
        fail_job(job_id, stages.failure_reason(task.name, exc))
        return
    if computed:
        log.info("%s %s done", task.name, kwargs, extra=extra)


def _once(task: Task, stage: Callable[..., None], job_id: str, kwargs: dict[str, Any], extra: dict[str, Any]) -> bool:
    """Compute the task's unit unless it is committed or running elsewhere; False when it was not.

    Done means done: a committed unit returns at once. A unit whose lease is alive is another
    delivery's: this one re-queues itself with a countdown (so the unit still has a message if
    that holder dies) and returns. Otherwise the stage runs under the lease, its state and object
    writes fenced by it (workers.leases), then commits, fenced too: LeaseLost once it is lost.
    """
    ctx, settings = context(), get_settings()
    if isinstance(ctx.dispatch, fairness.FairDispatch):
        ctx.dispatch.started(task.name, job_id, kwargs)  # the job's next held task takes this one's place
    unit = leases.unit_of(task.name, kwargs)
    if ctx.state.unit_committed(job_id, unit):
        return _duplicate(task, unit, "already committed", extra)
    lease = leases.new_lease(unit, task.request.id, f"{task.request.hostname}:{os.getpid()}")
    holder = ctx.state.acquire_lease(job_id, lease, settings.lease_ttl_s)
    if holder is not None:
        countdown = _requeue(task, job_id, kwargs)
        return _duplicate(task, unit, f"running on {holder.worker} (task {holder.task_id}); "
                                      f"re-queued in {countdown:g} s", extra)
    with leases.Heartbeat(ctx.state, job_id, lease, settings.lease_ttl_s) as beat:
        state = ctx.state.fenced(job_id, lease)
        fenced = replace(ctx, state=state, store=leases.FencedStore(ctx.store, beat, state))
        if ctx.state.unit_committed(job_id, unit):  # its holder committed between the check and the lease
            return _duplicate(task, unit, "already committed", extra)
        log.info("%s %s start", task.name, kwargs, extra=extra)
        if pause := settings.test_stage_sleep.get(workers.telemetry.stage_of(task.name)):
            time.sleep(pause)  # tests only: a task longer than the visibility timeout
        try:
            stage(fenced, job_id, **kwargs)
        except Exception:
            beat.check()  # a stale delivery's error is not the job's to fail on: LeaseLost instead
            raise
        fenced.state.commit_unit(job_id, unit)
    return True


def _requeue(task: Task, job_id: str, kwargs: dict[str, Any]) -> float:
    """Send the task again after half a lease TTL: the unit keeps a message whoever ends up with it."""
    countdown = get_settings().lease_ttl_s / 2
    task.apply_async(kwargs={"job_id": job_id, **kwargs}, countdown=countdown)
    return countdown


def _duplicate(task: Task, unit: str, reason: str, extra: dict[str, Any]) -> bool:
    log.info("%s duplicate delivery of %s: %s", task.name, unit, reason, extra=extra)
    workers.telemetry.duplicate(task.name)
    return False


@app.task(name=START_JOB, bind=True)
def start_job(self: Task, job_id: str) -> None:
    _run(self, lambda ctx, j: stages.start_job(ctx, j), job_id)


@app.task(name=SAMPLE, bind=True)
def sample(self: Task, job_id: str, epoch: int, prompt: int, batch: int) -> None:
    _run(self, stages.sample, job_id, epoch=epoch, prompt=prompt, batch=batch)


@app.task(name=SCORE, bind=True)
def score(self: Task, job_id: str, epoch: int, prompt: int, batch: int) -> None:
    _run(self, stages.score, job_id, epoch=epoch, prompt=prompt, batch=batch)


@app.task(name=SCORE_TARGETS, bind=True)
def score_targets(self: Task, job_id: str, epoch: int, prompt: int, chunk: int) -> None:
    _run(self, stages.score_targets, job_id, epoch=epoch, prompt=prompt, chunk=chunk)


@app.task(name=FUSE, bind=True)
def fuse(self: Task, job_id: str, epoch: int, prompt: int, chunk: int) -> None:
    _run(self, stages.fuse, job_id, epoch=epoch, prompt=prompt, chunk=chunk)


@app.task(name=TRAIN, bind=True)
def train(self: Task, job_id: str, epoch: int) -> None:
    _run(self, stages.train, job_id, epoch=epoch)


@app.task(name=COMPARE, bind=True)
def compare(self: Task, job_id: str, compare_id: str) -> None:
    """A policy beside its base (workers/compare.py): its own unit `compare-<id>`, never the job's failure."""
    store = open_compares(get_settings().redis_url)
    _run(self, lambda ctx, j, **kw: compares.compare(ctx, j, compares=store, **kw), job_id, compare_id=compare_id)


def worker_main(queues: list[str], concurrency: int = 1, loglevel: str = "INFO") -> None:
    """`dfusion worker`: one process per GPU; prefork with one child so a killed child's task
    is redelivered (acks_late + reject_on_worker_lost) and the model loads after fork."""
    hostname = f"{'+'.join(queues)}-{os.getpid()}@%h"
    app.worker_main(worker_argv(queues, hostname, concurrency, loglevel))
