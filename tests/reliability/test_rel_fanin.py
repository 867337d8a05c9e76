"""Fan-in survives losing the broker between firing and enqueueing (no stack: MemoryState).

A fan-in fires exactly once (`mark_done`); if the task that fired it dies, or cannot reach the
broker, before it has enqueued the next stage, its redelivery must enqueue it, or the job would
hang in `running` forever. Once the enqueue is confirmed, redeliveries enqueue nothing again.
"""

from __future__ import annotations

import pytest

from services.memstate import MemoryState
from services.state_types import JobStatus
from tests.integration.stack_helpers import small_job
from workers import stages


class Broker:
    """Records enqueued tasks; unreachable from the `fail_after`-th send on (0-based)."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.sent: list[tuple[str, dict]] = []
        self.fail_after = fail_after

    def __call__(self, name: str, **kwargs) -> None:
        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            raise ConnectionError("broker unreachable")
        self.sent.append((name, kwargs))


def _job(state: MemoryState, **over) -> str:
    state.create_job("j1", "alice", small_job(**over))
    state.set_status("j1", JobStatus.RUNNING)
    return "j1"


def _ctx(state: MemoryState, broker: Broker) -> stages.Context:
    return stages.Context(state=state, store=None, dispatch=broker, runtime=None)  # type: ignore[arg-type]


def test_rel_epoch_start_enqueue_lost_midway_is_redone_by_redelivery():
    state = MemoryState()
    job = _job(state, samples=8, batch=2)  # four sample tasks
    down = Broker(fail_after=2)  # two enqueued, then the broker goes away
    with pytest.raises(ConnectionError):
        stages.start_epoch(_ctx(state, down), job, 0)

    again = Broker()
    stages.start_epoch(_ctx(state, again), job, 0)  # the redelivered task
    assert [kw["batch"] for _, kw in again.sent] == [0, 1, 2, 3]

    later = Broker()
    stages.start_epoch(_ctx(state, later), job, 0)  # enqueue confirmed: nothing more
    assert later.sent == []


def test_rel_train_ready_enqueue_lost_is_redone_only_by_a_member():
    state = MemoryState()
    job = _job(state)
    stages._train_ready(_ctx(state, Broker()), job, 0, 1, "prev")  # half of the fan-in: nothing yet
    with pytest.raises(ConnectionError):
        stages._train_ready(_ctx(state, Broker(fail_after=0)), job, 0, 1, "fused")  # fires, enqueue lost

    retried = Broker()
    stages._train_ready(_ctx(state, retried), job, 0, 1, "fused")
    assert retried.sent == [("dfusion.train", {"job_id": job, "epoch": 0, "prompt": 1})]

    for member in ("fused", "prev"):
        late = Broker()
        stages._train_ready(_ctx(state, late), job, 0, 1, member)
        assert late.sent == []
