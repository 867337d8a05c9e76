"""kill -9 of the sampler, the fuser and the trainer mid-task: the job still completes with exactly
the expected samples, pairs, training steps and objects, and the lost task runs again within a
30 s (not after the broker's visibility timeout, 6 h on the test stack as deployed).

Two ways a worker dies: its pool process alone (the OOM killer's usual victim; the worker's main
process notices and requeues the task at once, `task_reject_on_worker_lost`), or the whole worker
(main process and pool, as when a host dies; the message stays unacked in Redis, its unit's lease
expires within seconds, and another worker's redelivery sweep restores it: workers.redelivery).
"""

from __future__ import annotations

import pytest

from tests.integration.stack_helpers import kill_mid_task, restart_delay, small_job
from workers.audit import assert_exact_outputs

pytestmark = pytest.mark.integration

#: Lease TTL (6 s) + the sweep's grace after delivery (12 s) + its interval (2 s), with room for a loaded machine.
MAX_REDELIVERY_S = 30


def _kill_and_finish(stack, worker: str, task: str, spec: dict, whole_worker: bool) -> float:
    offset = stack.log_size(worker)
    restarts = stack.processes()[worker].restarts
    job_id = stack.submit(spec)
    ev, killed_at = kill_mid_task(stack, worker, task, offset, whole_worker=whole_worker)
    delay = restart_delay(stack, worker, ev, killed_at, offset)
    job = stack.wait_job(job_id, timeout_s=240)
    assert job["status"] == "succeeded", job
    assert_exact_outputs(stack.state(), stack.store(), job_id, spec)
    if whole_worker:  # the supervisor brought the worker back
        assert stack.processes()[worker].restarts == restarts + 1
    print(f"{task} back {delay:.1f}s after the kill")
    return delay


def test_rel_sampler_pool_process_killed(rstack):
    delay = _kill_and_finish(rstack, "worker-sample", "dfusion.sample", small_job(), whole_worker=False)
    assert delay < 30, f"sample task took {delay:.1f}s to come back after its pool process died"


def test_rel_fuser_worker_killed(rstack):
    delay = _kill_and_finish(rstack, "worker-fuse", "dfusion.fuse", small_job(), whole_worker=True)
    assert delay < MAX_REDELIVERY_S, f"fuse task took {delay:.1f}s to be redelivered after its worker died"


def test_rel_trainer_worker_killed(rstack):
    spec = small_job(epochs=2)
    delay = _kill_and_finish(rstack, "worker-train", "dfusion.train", spec, whole_worker=True)
    assert delay < MAX_REDELIVERY_S, f"train task took {delay:.1f}s to be redelivered after its worker died"
