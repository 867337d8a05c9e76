"""The task wrapper's error policy (workers.celery_app._run), without a broker.

Transient errors retry with exponential backoff; when the retry itself cannot be published (the
broker is what failed) Celery would reject the message *without* requeue and drop it, stranding
the job, so the wrapper requeues it instead. Permanent errors fail the job once, without retry.

What is real and what is not, plainly: the wrapper, its done-check, lease, fenced state and store
are the production code on the in-memory JobStore and a local-dir store. The Celery task is a
stand-in (`FakeTask`) whose `retry` raises what `celery.app.task.Task.retry` raises (Retry, or
Reject(requeue=False) when publishing the retry fails), `context` and `fail_job` are patched to
that store, and the stages only raise. So this checks the wrapper's decision for each error, not
that a broker really keeps the requeued message: no stack, no broker, no worker process.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from celery.exceptions import Reject, Retry

from dfusion_core.storage import LocalDirStore
from services.state.memory import MemoryJobStore
from services.state.types import StateUnavailable
from services.storage import StorageUnavailable
from workers import celery_app
from workers.runtime import Runtime
from workers.stages import Context


class FakeTask:
    name = "dfusion.score"

    def __init__(self, retries: int = 0, publish_fails: bool = False) -> None:
        self.request = SimpleNamespace(id="task-1", retries=retries, hostname="score@test")
        self.publish_fails = publish_fails
        self.countdowns: list[int] = []

    def retry(self, exc=None, countdown=None, max_retries=None, **_):
        if self.publish_fails:  # what celery.app.task.Task.retry raises when apply_async fails
            raise Reject(exc, requeue=False)
        self.countdowns.append(countdown)
        raise Retry(exc=exc, when=countdown)


def _raising(exc: Exception):
    def stage(ctx, job_id, **kwargs):
        raise exc
    return stage


@pytest.fixture
def failures(monkeypatch, tmp_path):
    failed: list[tuple[str, str]] = []
    # the wrapper's done-check, lease and fenced state and store are real; the stages here only raise
    ctx = Context(state=MemoryJobStore(), store=LocalDirStore(tmp_path), dispatch=lambda name, **kw: None,
                  runtime=Runtime(models={}))
    monkeypatch.setattr(celery_app, "context", lambda: ctx)
    monkeypatch.setattr(celery_app, "fail_job", lambda job_id, reason: failed.append((job_id, reason)))
    return failed


@pytest.mark.parametrize("retries, countdown", [(0, 1), (1, 2), (3, 8), (4, 16)])
def test_rel_transient_error_retries_with_backoff(failures, retries, countdown):
    task = FakeTask(retries=retries)
    with pytest.raises(Retry):
        celery_app._run(task, _raising(StorageUnavailable("put 'k': cannot reach the object store")), "j1")
    assert task.countdowns == [countdown] and failures == []


def test_rel_retry_that_cannot_be_published_is_requeued_not_dropped(failures):
    task = FakeTask(publish_fails=True)
    with pytest.raises(Reject) as info:
        celery_app._run(task, _raising(StateUnavailable("cannot reach Redis")), "j1")
    assert info.value.requeue is True and failures == []


def test_rel_transient_error_past_the_retry_cap_fails_the_job(failures):
    task = FakeTask(retries=celery_app.get_settings().task_max_retries)
    celery_app._run(task, _raising(StorageUnavailable("down")), "j1")
    assert len(failures) == 1 and "infrastructure unavailable" in failures[0][1]


def test_rel_permanent_error_fails_the_job_once_without_retry(failures):
    task = FakeTask()
    celery_app._run(task, _raising(ValueError("item 'cat' not in prompt")), "j1")
    assert failures == [("j1", "score: ValueError: item 'cat' not in prompt")] and task.countdowns == []
