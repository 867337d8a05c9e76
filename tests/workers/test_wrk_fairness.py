"""Fair admission (services.state.admission, workers.fairness) on the real Redis: at most `cap` tasks
of a job wait in a queue, the rest enter in order as the job's tasks are taken, jobs interleave in
the queue's FIFO, every unit is published exactly once, and the lost-message sweep does not mistake
a held task for a lost one. The broker is stood in for by a list the test pops (its FIFO order is
all that matters here); the stack test (tests/integration/test_it_fairness.py) uses the real one."""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Iterator
from typing import Any

import pytest

from services.jobspec import JobSpec
from services.queue import SAMPLE, SCORE
from services.settings import Settings
from services.state import JobStatus
from services.state.admission import Admission, held_units
from services.state.redis import RedisJobStore
from workers import redelivery
from workers.fairness import FairDispatch, for_settings
from workers.flow import JobFlow, TaskRef, unit_of

pytestmark = pytest.mark.integration


@pytest.fixture
def state(redis_url: str) -> Iterator[RedisJobStore]:
    st = RedisJobStore.from_url(redis_url)
    yield st
    for key in st.r.scan_iter(match="dfusion:*"):
        st.r.delete(key)
    st.r.close()


class Broker:
    """What the workers see: one FIFO of published tasks per queue (here one: sample)."""

    def __init__(self) -> None:
        self.queue: deque[tuple[str, dict[str, Any]]] = deque()
        self.published: list[str] = []

    def publish(self, name: str, **kwargs: Any) -> None:
        self.queue.append((name, kwargs))
        self.published.append(f"{kwargs['job_id']}/{unit_of(name, kwargs)}")

    def take(self, fair: FairDispatch) -> str:
        """A worker takes the next task (and the wrapper reports it started)."""
        name, kwargs = self.queue.popleft()
        fair.started(name, kwargs["job_id"], {k: v for k, v in kwargs.items() if k != "job_id"})
        return f"{kwargs['job_id']}/{unit_of(name, kwargs)}"


def _job(state: RedisJobStore, name: str, prompts: int = 1) -> str:
    spec = JobSpec.model_validate({"model": "sim", "samples_per_prompt": 4, "sampling": {"batch_size": 4},
                                   "prompts": [{"text": "a cat", "items": ["cat"], "mask_thresholds": [0.5]}] * prompts})
    job_id = f"{name}-{uuid.uuid4().hex[:8]}"
    state.create_job(job_id, "acme", spec.model_dump(mode="json"))
    state.set_status(job_id, JobStatus.RUNNING)
    return job_id


def _dispatch_samples(fair: FairDispatch, job_id: str, prompts: int) -> None:
    for p in range(prompts):
        fair(SAMPLE, job_id=job_id, epoch=0, prompt=p, batch=0)


def test_a_job_waits_at_most_cap_tasks_and_the_rest_enter_in_order(state) -> None:
    broker, admission = Broker(), Admission(state.r, cap=2)
    fair = FairDispatch(admission, broker.publish)
    job = _job(state, "big", 5)
    _dispatch_samples(fair, job, 5)
    assert [u.split("/")[1] for u in broker.published] == ["sample-e0-p0-b0", "sample-e0-p1-b0"]
    assert admission.depth(job, "sample") == (2, 3)
    assert broker.take(fair) == f"{job}/sample-e0-p0-b0"  # taken: p2 enters behind p1
    assert [u.split("/")[1] for u in broker.published][2:] == ["sample-e0-p2-b0"]
    fair.started(SAMPLE, job, {"epoch": 0, "prompt": 0, "batch": 0})  # a redelivery of a taken unit frees nothing
    assert admission.depth(job, "sample") == (2, 2)
    while broker.queue:
        broker.take(fair)
    assert broker.published == [f"{job}/sample-e0-p{p}-b0" for p in range(5)]  # each once, in flow order
    assert admission.depth(job, "sample") == (0, 0)


def test_jobs_take_turns_in_the_queue(state) -> None:
    broker = Broker()
    fair = FairDispatch(Admission(state.r, cap=2), broker.publish)
    big, small = _job(state, "big", 40), _job(state, "small")
    _dispatch_samples(fair, big, 40)
    broker.take(fair)  # the big job is running
    _dispatch_samples(fair, small, 1)
    order = []
    while broker.queue:
        order.append(broker.take(fair))
    # FIFO alone would put the small job's task behind all 39 of the big job's; here 2 are ahead of it
    assert order.index(f"{small}/sample-e0-p0-b0") == 2
    assert sorted(order) == sorted(set(order)) and len(order) == 40  # every unit exactly once


def test_a_reenqueued_waiting_unit_is_published_again(state) -> None:
    """A fan-in's completer re-enqueues until confirmed: a unit already waiting goes out again (as
    without admission; the duplicate delivery finds it committed or leased and does nothing)."""
    broker = Broker()
    fair = FairDispatch(Admission(state.r, cap=1), broker.publish)
    job = _job(state, "j")
    fair(SCORE, job_id=job, epoch=0, prompt=0, batch=0)
    fair(SCORE, job_id=job, epoch=0, prompt=0, batch=0)
    assert len(broker.published) == 2


def test_an_ended_job_publishes_no_more(state) -> None:
    broker, admission = Broker(), Admission(state.r, cap=1)
    fair = FairDispatch(admission, broker.publish)
    job = _job(state, "j", 4)
    _dispatch_samples(fair, job, 4)
    state.set_status(job, JobStatus.CANCELLED)
    broker.take(fair)
    assert len(broker.published) == 1 and admission.depth(job, "sample") == (0, 0)


def test_without_a_cap_dispatch_publishes_at_once(state) -> None:
    broker = Broker()
    _dispatch_samples(FairDispatch(None, broker.publish), _job(state, "j", 3), 3)
    assert len(broker.published) == 3


def test_the_lost_sweep_does_not_resend_held_tasks(state) -> None:
    broker, admission = Broker(), Admission(state.r, cap=1)
    fair = FairDispatch(admission, broker.publish)
    job = _job(state, "j", 3)
    state.commit_unit(job, unit_of("dfusion.start_job", {}))  # started: its 3 sample tasks are due
    assert len(JobFlow.of(JobSpec.model_validate(state.get_job(job).spec)).outstanding({"start_job"})) == 3
    _dispatch_samples(fair, job, 3)
    assert held_units(state.r, [job], ["sample"]) == {(job, "sample-e0-p1-b0"), (job, "sample-e0-p2-b0")}
    # the published message is in no Redis queue (the stand-in broker has it), so it reads as lost
    ours = lambda found: [x for x in found if x[0] == job]  # noqa: E731 - any other job in the db is not ours
    assert ours(redelivery.lost(state.r, state, grace=10, now=1000.0)) == []  # first sight: the clock starts
    lost_now = ours(redelivery.lost(state.r, state, grace=10, now=1020.0))
    assert lost_now == [(job, TaskRef(SAMPLE, epoch=0, prompt=0, batch=0))]  # the one published, not the held


def test_admission_is_on_by_default_with_the_redis_broker_only(redis_url: str) -> None:
    assert Settings().queued_per_job == 2
    on = for_settings(Settings(redis_url=redis_url), print)
    assert on.admission is not None and on.admission.cap == 2
    assert for_settings(Settings(redis_url=redis_url, queued_per_job=0), print).admission is None
    amqp = Settings(redis_url=redis_url, broker_url="amqp://guest@127.0.0.1:5672//")
    assert for_settings(amqp, print).admission is None  # no lost-message sweep there
