"""Fairness between jobs in the Celery workers (docs/fairness.md): the stages' dispatch goes through
`services.state.admission`, so at most `Settings.queued_per_job` tasks of a job wait in each stage
queue, and each task a worker takes lets the next held task of its job in.

`FairDispatch` is the Context's `dispatch`; the task wrapper (workers.celery_app) calls `started`
for every delivery it takes, before anything else. With `queued_per_job` 0 the stages publish as
they always did (one FIFO per stage) and `started` does nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.queue import ROUTES
from services.settings import Settings
from services.state.admission import Admission, Held
from services.state.redis import open_state
from workers.flow import unit_of
from workers.redelivery import broker_redis_url

Publish = Callable[..., None]  # publish(task_name, **kwargs)


class FairDispatch:
    """dispatch(task_name, job_id=..., **kwargs): publish now, or hold behind the job's waiting tasks."""

    def __init__(self, admission: Admission | None, publish: Publish) -> None:
        self.admission, self.publish = admission, publish

    def __call__(self, name: str, **kwargs: Any) -> None:
        job_id = kwargs.get("job_id")
        if self.admission is None or job_id is None:
            self.publish(name, **kwargs)
            return
        task = Held(name, dict(kwargs), unit_of(name, kwargs))
        if self.admission.admit(job_id, ROUTES[name], task):
            self.publish(name, **kwargs)

    def started(self, name: str, job_id: str, kwargs: dict[str, Any]) -> None:
        """A worker took this delivery of `name`: publish what the job's held queue lets in."""
        if self.admission is None or name not in ROUTES:
            return
        for task in self.admission.started(job_id, ROUTES[name], unit_of(name, kwargs)):
            self.publish(task.name, **task.kwargs)


def for_settings(settings: Settings, publish: Publish) -> FairDispatch:
    """Admission with `queued_per_job` > 0 on a Redis broker, the state's or its own (the redelivery
    sweep that recovers a held task lost in a crash runs only there); otherwise plain publishing."""
    on = settings.queued_per_job > 0 and broker_redis_url(settings.broker()) is not None
    return FairDispatch(Admission(open_state(settings.redis_url).r, settings.queued_per_job) if on else None, publish)
