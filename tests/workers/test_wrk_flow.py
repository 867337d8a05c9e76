"""workers.flow without Redis: a job's events walked from start to end, fan-ins counted in a dict."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter
from collections.abc import Callable

import pytest

from services.jobspec import JobSpec
from services.queue import FUSE, SAMPLE, SCORE, SCORE_TARGETS, TRAIN
from tests.integration.stack_helpers import small_job
from workers import flow
from workers.flow import JobFlow, TaskRef


def walk(jf: JobFlow, pick: Callable[[int], int] = lambda n: 0,
         check: Callable[[list[TaskRef], set[str]], None] | None = None) -> tuple[list[TaskRef], int]:
    """Every task a job enqueues, in the order `pick` takes them from the queue (FIFO: the embedded
    runner's), and how many times the job finished. Fan-ins as `JobStore.mark_done` counts them:
    distinct members per scope. `check(queue, committed units)` runs before each task."""
    members: dict[str, set[str]] = {}
    queue, order, finished, committed = [], [], 0, set()

    def report(event: flow.Event) -> None:
        nonlocal finished
        finished += jf.finishes_job(event)
        gate = jf.gate(event)
        if gate is not None:
            done = members.setdefault(gate.scope, set())
            first = gate.member not in done
            done.add(gate.member)
            if not (first and len(done) == gate.expected):
                return
        queue.extend(jf.next_tasks(event))

    queue.append(flow.START)
    while queue:
        if check is not None:
            check(queue, committed)
        task = queue.pop(pick(len(queue)))
        committed.add(task.unit)
        if task != flow.START:
            order.append(task)
        report(flow.completed(task))
    return order, finished


def test_a_2_prompt_2_epoch_job_runs_every_unit_once_in_order():
    jf = JobFlow(epochs=2, prompts=2, samples_per_prompt=4, pairs_per_prompt=2, batch_size=2, plain=False)
    order, finished = walk(jf)
    assert finished == 1
    assert Counter(t.name for t in order) == {SAMPLE: 8, SCORE: 8, FUSE: 4, SCORE_TARGETS: 4, TRAIN: 2}
    assert len(set(order)) == len(order)  # no task twice
    epoch0 = [t for t in order if t.epoch == 0]
    assert order[: len(epoch0)] == epoch0  # epoch 1 starts after train(0)
    assert epoch0[:4] == [TaskRef(SAMPLE, 0, p, batch=b) for p in (0, 1) for b in (0, 1)]
    assert epoch0[-1] == TaskRef(TRAIN, 0) and order[-1] == TaskRef(TRAIN, 1)
    # fuse(e, p) only once every batch of prompt p is scored
    for t in (t for t in order if t.name == FUSE):
        first_fuse = order.index(t)
        scored = {x.batch for x in order[:first_fuse] if x.name == SCORE and (x.epoch, x.prompt) == (t.epoch, t.prompt)}
        assert scored == {0, 1}
    assert [t.kwargs() for t in order if t.name == SCORE_TARGETS][:2] == [
        {"epoch": 0, "prompt": 0, "chunk": 0}, {"epoch": 0, "prompt": 1, "chunk": 0}]


@pytest.mark.parametrize("plain", [False, True])
def test_outstanding_tasks_are_those_enqueued_and_not_yet_committed(plain: bool):
    """`outstanding` replays the flow from the committed units alone; at every point of a run (in
    any completion order) it must name exactly the tasks enqueued and not yet finished."""
    jf = JobFlow(epochs=2, prompts=2, samples_per_prompt=4, pairs_per_prompt=3, batch_size=2, plain=plain)

    def check(queue: list[TaskRef], committed: set[str]) -> None:
        assert sorted(t.unit for t in jf.outstanding(committed)) == sorted(t.unit for t in queue)

    for seed in range(5):
        order, finished = walk(jf, random.Random(seed).randrange, check)
        committed = {"start_job", *(t.unit for t in order)}
        assert finished == 1 and jf.outstanding(committed) == []


def test_plain_pairs_skip_score_targets_and_train_after_every_fuse():
    jf = JobFlow(epochs=2, prompts=2, samples_per_prompt=4, pairs_per_prompt=2, batch_size=1, plain=True)
    order, finished = walk(jf)
    assert finished == 1
    assert Counter(t.name for t in order) == {SAMPLE: 16, SCORE: 16, FUSE: 8, TRAIN: 2}
    trains = [i for i, t in enumerate(order) if t.name == TRAIN]
    fuses0 = [i for i, t in enumerate(order) if t.name == FUSE and t.epoch == 0]
    assert max(fuses0) < trains[0]


def test_units_and_ranges_come_from_the_spec():
    spec = JobSpec.model_validate(small_job(samples=12, batch=5, epochs=3))
    jf = JobFlow.of(spec)
    n = spec.expected_counts()
    assert (jf.epochs, jf.prompts, jf.pairs_per_prompt) == (3, len(spec.prompts), n.pairs_per_prompt)
    assert jf.batches == 3 and [jf.sample_range(b) for b in range(3)] == [range(0, 5), range(5, 10), range(10, 12)]
    pairs = [k for c in range(jf.chunks) for k in jf.chunk_range(c)]
    assert pairs == list(range(n.pairs_per_prompt))
    order, _ = walk(jf)
    assert sum(t.name == SCORE for t in order) == jf.epochs * jf.prompts * jf.batches
    assert sum(t.name == FUSE for t in order) == jf.epochs * jf.prompts * jf.chunks


def test_fan_in_scopes_keep_their_stored_names():
    """The scopes are Redis keys of running jobs: renaming one would strand a job mid-epoch."""
    jf = JobFlow(epochs=2, prompts=2, samples_per_prompt=4, pairs_per_prompt=2, batch_size=2, plain=False)
    assert jf.gate(flow.JobStarted()) == flow.FanIn("epoch-start-0", "go", 1)
    assert jf.gate(flow.Trained(0)) == flow.FanIn("epoch-start-1", "go", 1)
    assert jf.gate(flow.Trained(1)) is None and jf.next_tasks(flow.Trained(1)) == []
    assert jf.gate(flow.Scored(0, 1, 1)) == flow.FanIn("scored-e0-p001", "b1", 2)
    assert jf.gate(flow.Fused(0, 1, 0)) is None
    assert jf.gate(flow.TargetsScored(1, 1, 0)) == flow.FanIn("pairs-scored-e1", "p1-c0", 2)
    assert flow.train_commit(1) == flow.FanIn("trained-e1", "commit", 1)
    assert flow.sent_scope("scored-e0-p001") == "scored-e0-p001-sent"


def test_each_task_reports_its_own_event():
    assert flow.completed(TaskRef(SAMPLE, 1, 0, batch=1)) == flow.Sampled(1, 0, 1)
    assert flow.completed(TaskRef(SCORE, 1, 0, batch=1)) == flow.Scored(1, 0, 1)
    assert flow.completed(TaskRef(FUSE, 1, 0, chunk=1)) == flow.Fused(1, 0, 1)
    assert flow.completed(TaskRef(SCORE_TARGETS, 1, 0, chunk=1)) == flow.TargetsScored(1, 0, 1)
    assert flow.completed(TaskRef(TRAIN, 1)) == flow.Trained(1)
    assert flow.completed(flow.START) == flow.JobStarted() and flow.START.unit == "start_job"
    assert TaskRef(SCORE_TARGETS, 1, 0, chunk=3).unit == "score_targets-e1-p0-c3"


def test_flow_imports_no_infrastructure():
    code = "import sys, workers.flow; print(sorted(m for m in ('celery', 'kombu', 'redis', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
