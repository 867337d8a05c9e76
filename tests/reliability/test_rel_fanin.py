"""Fan-in survives losing the broker between firing and enqueueing (no stack: MemoryJobStore).

A fan-in fires exactly once (`mark_done`); if the task that fired it dies, or cannot reach the
broker, before it has enqueued the next stage, its redelivery must enqueue it, or the job would
hang in `running` forever. Once the enqueue is confirmed, redeliveries enqueue nothing again.

What is real and what is not, plainly: the stages' flow code (`stages.advance`, `workers.flow`) and
the in-memory JobStore are the production code; the broker is a stand-in (`Broker`) that records
sends and raises ConnectionError from a chosen send on, and a "redelivery" is the test calling
the stage again. So this checks that re-running the firing task enqueues what the first run did
not, and nothing once it did: not a Celery worker, a real broker or Redis.
"""

from __future__ import annotations

import pytest

from services.jobspec import JobSpec
from services.queue import TRAIN
from services.state.memory import MemoryJobStore
from services.state.types import JobStatus
from tests.integration.stack_helpers import small_job
from workers import flow, stages


class Broker:
    """Records enqueued tasks; unreachable from the `fail_after`-th send on (0-based)."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.sent: list[tuple[str, dict]] = []
        self.fail_after = fail_after

    def __call__(self, name: str, **kwargs) -> None:
        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            raise ConnectionError("broker unreachable")
        self.sent.append((name, kwargs))


def _job(state: MemoryJobStore, **over) -> str:
    state.create_job("j1", "alice", small_job(**over))
    state.set_status("j1", JobStatus.RUNNING)
    return "j1"


def _ctx(state: MemoryJobStore, broker: Broker) -> stages.Context:
    return stages.Context(state=state, store=None, dispatch=broker, runtime=None)  # type: ignore[arg-type]


def test_rel_epoch_start_enqueue_lost_midway_is_redone_by_redelivery():
    state = MemoryJobStore()
    job = _job(state, samples=8, batch=2)  # four sample tasks
    jf = flow.JobFlow.of(JobSpec.model_validate(state.get_job(job).spec))
    down = Broker(fail_after=2)  # two enqueued, then the broker goes away
    with pytest.raises(ConnectionError):
        stages.advance(_ctx(state, down), job, jf, flow.JobStarted())

    again = Broker()
    stages.advance(_ctx(state, again), job, jf, flow.JobStarted())  # the redelivered task
    assert [kw["batch"] for _, kw in again.sent] == [0, 1, 2, 3]

    later = Broker()
    stages.advance(_ctx(state, later), job, jf, flow.JobStarted())  # enqueue confirmed: nothing more
    assert later.sent == []


def test_rel_train_enqueue_lost_is_redone_only_by_a_member():
    """train(e) follows the epoch's last chunk of scored pairs, over every prompt: one unit per epoch."""
    state = MemoryJobStore()
    body = small_job(samples=8, batch=2, prompts=[{"text": "a cat"}, {"text": "a dog"}], training={"pairs": "plain"})
    job = _job(state, **body)
    jf = flow.JobFlow.of(JobSpec.model_validate(body))  # 2 prompts x 4 pairs in 2 chunks each: 4 members
    members = [flow.Fused(0, p, c) for p in range(2) for c in range(2)]  # plain pairs: fused = scored
    for event in members[:3]:  # not complete yet: nothing
        stages.advance(_ctx(state, Broker()), job, jf, event)
    with pytest.raises(ConnectionError):
        stages.advance(_ctx(state, Broker(fail_after=0)), job, jf, members[3])  # fires, enqueue lost

    retried = Broker()
    stages.advance(_ctx(state, retried), job, jf, members[3])
    assert retried.sent == [(TRAIN, {"job_id": job, "epoch": 0})]

    for event in members:
        late = Broker()
        stages.advance(_ctx(state, late), job, jf, event)
        assert late.sent == []
