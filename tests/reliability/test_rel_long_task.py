"""Tasks that outlive the broker's visibility timeout, and a worker killed mid-task, on a queue with
two workers: every unit computes exactly once (issue 16).

A stack with a 3 s visibility timeout whose train tasks sleep 9 s inside their lease
(DFUSION_TEST_STAGE_SLEEP), and two train workers. On Redis, kombu redelivers the running train
message every few seconds; the other worker finds the lease alive, re-queues it and never computes.
The same two tests run with RabbitMQ as the broker under `make test-all` (marker `rabbitmq`: another
stack, ~85 s on two cores) when one listens on 127.0.0.1:5672 and rabbitmqctl can make a private
vhost; otherwise they skip.

The 9 s train task is the real train stage behind a test hook: `Settings.test_stage_sleep`
(DFUSION_TEST_STAGE_SLEEP) makes the task wrapper sleep inside the lease before the stage runs. The
hook is in the production wrapper (workers.celery_app._once), off unless the setting is given;
everything else (stack, broker, leases, redelivery) is the service's own.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import replace

import pytest

from devstack.harness import Stack, running_stack
from devstack.procs import signal_all, wait_for
from services.queue import QUEUES, worker_command
from services.state import keys as state_keys
from tests.integration.stack_helpers import Event, kill_mid_task, small_job, task_events
from workers import keys
from workers.audit import assert_exact_outputs

pytestmark = pytest.mark.integration

VISIBILITY_S = 3
SLEEP_S = 3 * VISIBILITY_S
TRAINERS = ("worker-train", "worker-train-2")
RABBIT = ("127.0.0.1", 5672)


def _two_trainers(specs: list) -> list:
    """The stack's plan with a second train worker (its own Celery node name), and one worker for
    the other queues instead of one each: these tests watch the train queue only, and every worker
    process costs seconds of CPU to start (torch) on the machine the test waits on."""
    train = next(s for s in specs if s.name == "worker-train")
    command = [("train2@%h" if part == "train@%h" else part) for part in train.command]
    others = [q for q in QUEUES if q != "train"]
    prep = replace(train, name="worker-prep", queues=others,
                   command=worker_command(train.command[0], others, "prep@%h"))
    kept = [s for s in specs if not s.name.startswith("worker-") or s.name == "worker-train"]
    return [*kept, prep, replace(train, name="worker-train-2", command=command)]


@contextmanager
def _rabbit_vhost() -> Iterator[str]:
    """A private RabbitMQ vhost for one stack (queues are named per stage: stacks must not share them)."""
    with socket.socket() as s:
        s.settimeout(0.5)
        if s.connect_ex(RABBIT) != 0:
            pytest.skip("no RabbitMQ on 127.0.0.1:5672")
    ctl = shutil.which("rabbitmqctl")
    vhost = f"dfusion-test-{uuid.uuid4().hex[:8]}"
    run = lambda *args: subprocess.run([ctl, *args], capture_output=True, timeout=60)  # noqa: E731
    if ctl is None or run("add_vhost", vhost).returncode != 0:
        pytest.skip("RabbitMQ listens but rabbitmqctl cannot add a vhost here")
    try:
        run("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield vhost
    finally:
        run("delete_vhost", vhost)


@pytest.fixture(scope="module", params=["redis", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def lstack(request, tmp_path_factory) -> Iterator[Stack]:
    env = {"DFUSION_VISIBILITY_TIMEOUT_S": str(VISIBILITY_S), "DFUSION_LEASE_TTL_S": "3",
           "DFUSION_TEST_STAGE_SLEEP": json.dumps({"train": SLEEP_S}), "DFUSION_DEBUG_LOGGERS": "services.storage"}
    with _rabbit_vhost() if request.param == "rabbitmq" else nullcontext(None) as vhost:
        if vhost is not None:
            env["DFUSION_BROKER_URL"] = f"amqp://guest:guest@{RABBIT[0]}:{RABBIT[1]}/{vhost}"
        with running_stack(tmp_path_factory.mktemp(f"lstack-{request.param}"), env=env, plan=_two_trainers) as s:
            s.facts["broker"] = request.param
            yield s


def _train_log(stack: Stack, offsets: dict[str, int]) -> str:
    return "".join(stack.log_since(w, offsets[w]) for w in TRAINERS)


def _assert_trained_once(stack: Stack, job_id: str, offsets: dict[str, int], starts: int = 1) -> str:
    """train-e0 started `starts` times, computed once, and wrote each of its objects once."""
    log = _train_log(stack, offsets)
    train_starts = [e for w in TRAINERS for e in task_events(stack, w, offsets[w])
                    if e.task == "dfusion.train" and e.kind == "start"]
    assert len(train_starts) == starts, train_starts
    puts = re.findall(rf"put (jobs/{job_id}/\S+) \(", log)
    assert puts, "object writes are not logged (DFUSION_DEBUG_LOGGERS)"
    assert len(puts) == len(set(puts)), sorted(p for p in puts if puts.count(p) > 1)
    return log


def test_rel_task_longer_than_visibility_timeout_computes_once(lstack: Stack) -> None:
    offsets = {w: lstack.log_size(w) for w in TRAINERS}
    spec = small_job(samples=4, batch=4)
    job_id = lstack.submit(spec)
    job = lstack.wait_job(job_id, timeout_s=240)
    assert job["status"] == "succeeded", job
    assert_exact_outputs(lstack.state(), lstack.store(), job_id, spec)
    log = _assert_trained_once(lstack, job_id, offsets)
    if lstack.facts["broker"] == "redis":  # RabbitMQ has no visibility timeout: nothing to duplicate
        assert "dfusion.train duplicate delivery of train-e0: running on" in log, "the timeout never redelivered"
    with lstack.client() as c:
        metrics = c.get("/metrics").text
    if lstack.facts["broker"] == "redis":
        assert re.search(r'dfusion_duplicate_deliveries_total\{stage="train"\} [1-9]', metrics), metrics[-2000:]


def test_rel_trainer_killed_mid_task_other_worker_redoes_it(lstack: Stack) -> None:
    offsets = {w: lstack.log_size(w) for w in TRAINERS}
    spec = small_job(samples=4, batch=4)
    job_id = lstack.submit(spec)
    victim = wait_for(lambda: next((w for w in TRAINERS if any(
        e.task == "dfusion.train" and e.kind == "start" for e in task_events(lstack, w, offsets[w]))), None),
        240, "a train task to start")
    with lstack.client() as c:
        running = c.get(f"/v1/jobs/{job_id}").json()["running"]
    assert [r["unit"] for r in running] == ["train-e0"], running
    ev, killed_at = kill_mid_task(lstack, victim, "dfusion.train", offsets[victim], whole_worker=True)
    other = next(w for w in TRAINERS if w != victim)
    again = wait_for(lambda: next((e for e in task_events(lstack, other, offsets[other])
                                   if e.task == "dfusion.train" and e.kind == "start" and e.ts > killed_at - 0.5),
                                  None), 60, "the other trainer to take train-e0 over")
    delay = again.ts - killed_at
    job = lstack.wait_job(job_id, timeout_s=240)
    assert job["status"] == "succeeded", job
    assert_exact_outputs(lstack.state(), lstack.store(), job_id, spec)
    _assert_trained_once_after_kill(lstack, job_id, offsets)
    print(f"{lstack.facts['broker']}: train-e0 taken over {delay:.1f}s after the kill")
    assert delay < 30, f"train-e0 came back {delay:.1f}s after its worker died"


def _assert_trained_once_after_kill(stack: Stack, job_id: str, offsets: dict[str, int]) -> None:
    """Two starts (the killed one, the takeover); the killed one died before writing anything."""
    _assert_trained_once(stack, job_id, offsets, starts=2)


def test_rel_stalled_trainer_writes_nothing_once_replaced(lstack: Stack) -> None:
    """A trainer frozen (SIGSTOP) mid-training past its lease's TTL is replaced: the other trainer
    takes the unit over and finishes the job. Thawed, the stale one is fenced out: it changes no
    job state in Redis (not even to the same value) and stores no object over the winner's."""
    if lstack.facts["broker"] != "redis":
        pytest.skip("RabbitMQ keeps a frozen consumer's message while its connection lives: nothing takes over")
    offsets = {w: lstack.log_size(w) for w in TRAINERS}
    spec = small_job(samples=4, batch=4)
    job_id = lstack.submit(spec)

    def train_start() -> tuple[str, Event] | None:
        return next(((w, e) for w in TRAINERS for e in task_events(lstack, w, offsets[w])
                     if e.task == "dfusion.train" and e.kind == "start"), None)

    stale, start = wait_for(train_start, 240, "a train task to start")
    time.sleep(max(0.0, start.ts + SLEEP_S + 0.5 - time.time()))  # past its stage sleep: training
    frozen, frozen_at = lstack.pool_children(stale), time.time()
    signal_all(frozen, signal.SIGSTOP)
    try:
        job = lstack.wait_job(job_id, timeout_s=240)
        assert job["status"] == "succeeded", job
        other = next(w for w in TRAINERS if w != stale)
        assert any(e.task == "dfusion.train" and e.kind == "start" and e.ts > frozen_at
                   for e in task_events(lstack, other, offsets[other])), "train-e0 ended before it was frozen"
        state, store = lstack.state(), lstack.store()
        wait_for(lambda: not state.leases(job_id), 30, "the replacement to release its lease")
        state.r.config_set("notify-keyspace-events", "KA")
        events = state.r.pubsub()
        events.psubscribe(f"__keyspace@0__:{state_keys.job(job_id)}*")
        objects = {k: store.get(k) for k in store.list(keys.job_prefix(job_id))}
        thawed_at = lstack.log_size(stale)
    finally:
        signal_all(frozen, signal.SIGCONT)
    ended = wait_for(lambda: re.search(r"lost its lease on train-e0|dfusion\.train \{[^}]*\} done",
                                       lstack.log_since(stale, thawed_at)), 120, "the stale trainer to end its task")
    time.sleep(1.0)
    writes = []
    while (msg := events.get_message(timeout=0.5)) is not None:
        if msg["type"] == "pmessage":
            writes.append((msg["channel"].split(":", 1)[1], msg["data"]))
    events.close()
    assert writes == [], f"the stale trainer wrote job state: {writes}"
    assert {k: store.get(k) for k in store.list(keys.job_prefix(job_id))} == objects
    assert "lost its lease" in ended.group(0)
    assert_exact_outputs(lstack.state(), lstack.store(), job_id, spec)
