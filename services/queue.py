"""The Celery application as configuration only: broker, routing and delivery settings.

Torch-free, so the API can enqueue by task name; `workers.celery_app` registers the task
bodies on this same app. Settings follow DESIGN §2 for long GPU tasks: late acks with
reject-on-worker-lost (a killed worker's task is redelivered), prefetch 1, and on the Redis
broker a visibility timeout of hours (a running task's lease says it is alive; see
`transport_options`). The broker is Redis or RabbitMQ (`Settings.broker_url`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

# The worker queues, one per stage kind, are listed in services.settings (the local stack's worker
# placement is keyed by them); the rest of the code imports them from here.
from services.settings import QUEUES as QUEUES
from services.settings import Settings, get_settings

if TYPE_CHECKING:  # Celery loads with the app, so the task names import without it (workers.flow)
    from celery import Celery

# Task names: the one place they are spelled (workers register bodies under them, stages enqueue them).
START_JOB = "dfusion.start_job"
SAMPLE = "dfusion.sample"
SCORE = "dfusion.score"  # a batch of samples
SCORE_TARGETS = "dfusion.score_targets"  # the fused targets of a chunk of pairs
FUSE = "dfusion.fuse"
TRAIN = "dfusion.train"  # one unit per epoch
COMPARE = "dfusion.compare"  # a trained policy beside its base (services.compare); not part of a job's flow

# task name -> queue
ROUTES = {
    START_JOB: "score",  # bookkeeping only: any light queue
    SAMPLE: "sample",
    SCORE: "score",
    SCORE_TARGETS: "score",
    FUSE: "fuse",
    TRAIN: "train",
    COMPARE: "sample",  # it samples: where the models are loaded
}


def worker_argv(queues: Sequence[str], hostname: str, concurrency: int = 1, loglevel: str = "INFO") -> list[str]:
    """The `celery worker` arguments of every dfusion worker: its queues and node name, prefork with
    `concurrency` children (each loads its models after fork and holds its own leases; a killed
    child's task is redelivered), prefetch 1 per child, task events.

    Without gossip and mingle: dfusion uses neither (no worker election, no revoked-task sync; a
    dead worker's task comes back through its lease, workers.redelivery), and gossip makes every
    worker read every other worker's heartbeat, a cost that grows with the square of the worker
    count. Heartbeats are still sent (Flower shows the workers), and remote control still answers
    (devstack's health probe asks each worker for its queues)."""
    return ["worker", "-Q", ",".join(queues), "-n", hostname, "-c", str(concurrency),
            "--prefetch-multiplier", "1", "-l", loglevel, "-E", "--without-gossip", "--without-mingle"]


def worker_command(python: str, queues: Sequence[str], hostname: str, concurrency: int = 1) -> list[str]:
    """A worker as its own process (the local stack, the tests): `python -m celery -A workers.celery_app worker ...`."""
    return [python, "-m", "celery", "-A", "workers.celery_app", *worker_argv(queues, hostname, concurrency)]


def make_app(settings: Settings) -> Celery:
    from celery import Celery

    app = Celery("dfusion", broker=settings.broker(), backend=None)
    app.conf.update(
        task_routes={name: {"queue": q} for name, q in ROUTES.items()},
        task_default_queue="score",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=None,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        # Publishing (the API's enqueue, a stage enqueueing the next, a task's retry) rides out a
        # Redis restart (~30 s) instead of kombu's default ~1 s: Celery drops a message whose
        # retry cannot be published (Reject, requeue=False), which would strand the job.
        task_publish_retry_policy={"max_retries": 15, "interval_start": 0.5, "interval_step": 0.5,
                                   "interval_max": 2.0},
        broker_transport_options=transport_options(settings),
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
    )
    return app


def transport_options(settings: Settings) -> dict[str, Any]:
    """Redis transport: a visibility timeout above the longest task (hours: a running task's lease,
    not this timeout, says it is alive, and `workers.redelivery` brings back a dead worker's task
    once its lease expires). RabbitMQ has no visibility timeout: it returns a dead consumer's
    unacknowledged messages at once (its consumer_timeout must exceed the longest task)."""
    if not settings.broker().startswith(("redis://", "rediss://", "unix://")):
        return {"confirm_publish": True}  # amqp: a publish returns once the broker has the message
    return {
        "visibility_timeout": settings.visibility_timeout_s,
        # kombu's own sweep (every consumer) restores unacked messages older than the timeout;
        # its defaults (10 s x 10 calls, a 300 s mutex) would bound redelivery with a short one.
        "unacked_restore_interval": restore_interval_s(settings.visibility_timeout_s),
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": 30,  # a sweep takes milliseconds
        "socket_timeout": 10,
        "socket_connect_timeout": 5,
        # No `retry_on_timeout`: it gives redis-py's connections one retry of their own, and the
        # worker's pub/sub read (remote control) then reconnects a connection Redis dropped,
        # re-subscribes and blocks on it with no timeout. A Redis restart hung every worker that
        # way (tests/reliability/test_rel_infra.py). Without it the error reaches kombu, whose
        # consumer reconnects everything.
    }


def restore_interval_s(visibility_timeout_s: int) -> int:
    """Seconds between sweeps for expired unacked messages: a quarter of the timeout, 1..10 s."""
    return max(1, min(10, visibility_timeout_s // 4))


@lru_cache(maxsize=1)
def get_app() -> Celery:
    return make_app(get_settings())


def send(app: Celery, name: str, **kwargs: Any) -> None:
    """Enqueue a task by name; payloads carry ids and keys, never tensors."""
    app.send_task(name, kwargs=kwargs, queue=ROUTES[name])
