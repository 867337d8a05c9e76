"""Permanent failures (a corrupt trajectory, an unloadable model) fail the job at once with a
readable reason; the failing task is not redelivered, and nothing is left queued or unacked."""

from __future__ import annotations

import signal
import time

import pytest

from devstack.procs import signal_all, wait_for
from services.queue import QUEUES
from services.telemetry import Telemetry
from tests.integration.stack_helpers import small_job, task_events
from workers import keys

pytestmark = pytest.mark.integration


def _assert_settled(stack, worker: str, offset: int, task: str, max_starts: int) -> None:
    """Each `task` ran at most once, and nothing is left for the broker to hand out again."""
    time.sleep(3)  # a redelivery would show up here: the pool process is free again at once
    starts = [e for e in task_events(stack, worker, offset) if e.kind == "start" and e.task == task]
    assert len(starts) <= max_starts and len({e.kwargs for e in starts}) == len(starts), starts
    state = stack.state()
    assert Telemetry(state.r).queue_depths(QUEUES) == dict.fromkeys(QUEUES, 0)
    assert state.r.hlen("unacked") == 0  # kombu's Redis transport: delivered, not yet acknowledged


def test_rel_corrupt_trajectory_fails_the_job(rstack):
    spec = small_job()
    offset = rstack.log_size("worker-fuse")
    fuser = [rstack.processes()["worker-fuse"].pid, *rstack.pool_children("worker-fuse")]
    signal_all(fuser, signal.SIGSTOP)  # fusion waits until the trajectories are damaged
    try:
        job_id = rstack.submit(spec)
        state = rstack.state()
        wait_for(lambda: state.get_counts(job_id)["scored"] == 8, 120, "all samples scored")
        store = rstack.store()
        for bundle in {keys.split_ref(r["trajectory_key"])[0] for r in state.list_samples(job_id).values()}:
            store.put(bundle, b"\x00not a safetensors file")
    finally:
        signal_all(fuser, signal.SIGCONT)
    job = rstack.wait_job(job_id, timeout_s=120)
    assert job["status"] == "failed", job
    assert job["error"].startswith("fuse: TrajectoryError: object jobs/"), job["error"]
    assert "/samples/" in job["error"] and "not a dfusion trajectory" in job["error"], job["error"]
    assert job["counts"]["pairs"] == 0 and job["counts"]["trained_steps"] == 0
    _assert_settled(rstack, "worker-fuse", offset, "dfusion.fuse", max_starts=2)


def test_rel_unloadable_model_fails_the_job(rstack):
    offset = rstack.log_size("worker-sample")
    job_id = rstack.submit(small_job(model="broken"))
    job = rstack.wait_job(job_id, timeout_s=120)
    assert job["status"] == "failed", job
    assert job["error"].startswith("sample: ConfigError: ") and "/nonexistent/dfusion-model" in job["error"], job
    assert job["counts"]["samples"] == 0
    _assert_settled(rstack, "worker-sample", offset, "dfusion.sample", max_starts=4)
