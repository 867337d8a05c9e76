"""Fairness on the stack (docs/fairness.md): a 1-prompt job submitted while a 24-prompt job samples
is not queued behind all of it.

The check is an order, not a time: the small job must succeed while the big one is still sampling.
In one FIFO its sample task would wait behind the big job's 23 others (about 30 s of sampling with
the sim's 60 ms calls); with `queued_per_job` 2 it waits behind at most 2, and the whole small job
(4 steps) takes a few seconds. The broker's sample queue never holds more than 2 of a job's tasks,
and the small job's outputs are exact (nothing missing, nothing twice). Measured: 10.9 s for the
small job with admission, 184 s with one FIFO (`queued_per_job` 0), after all of the big job's
sampling; docs/fairness.md.
"""

from __future__ import annotations

import pytest
import redis

from devstack.harness import Stack
from devstack.procs import wait_for
from tests.integration.test_it_sim import SIM_JOB
from workers.audit import assert_exact_outputs

pytestmark = pytest.mark.integration

BIG = {**SIM_JOB, "prompts": SIM_JOB["prompts"] * 24, "sampling": {"num_steps": 20, "batch_size": 4}, "seed": 31}
SMALL = {**SIM_JOB, "seed": 32}


def test_a_small_job_is_not_queued_behind_a_big_one(stack: Stack) -> None:
    state = stack.state()
    big = stack.submit(BIG)
    wait_for(lambda: state.get_counts(big)["samples"] > 0, 120, "the big job's first samples")
    with redis.Redis.from_url(stack.facts["redis_url"]) as broker:
        assert broker.llen("sample") <= 2  # 24 sample tasks ready, 2 in the queue
        small = stack.submit(SMALL)
        assert stack.wait_job(small, 120)["status"] == "succeeded"
    sampled = state.get_counts(big)["samples"]
    assert sampled < 24 * 4, "the big job finished sampling before the small job ended: it was queued behind it"
    wait_for(lambda: not state.leases(small), 60, "the small job's last unit to return")
    assert_exact_outputs(stack.state(), stack.store(), small, SMALL)  # every sample, pair, step and object once
    with stack.client() as c:
        assert c.delete(f"/v1/jobs/{big}").status_code == 202
    wait_for(lambda: not state.leases(big), 60, "the big job's last unit to return")
    with stack.client() as c:  # leave the shared stack as it was
        wait_for(lambda: c.delete(f"/v1/jobs/{big}", params={"purge": "true"}).status_code == 200, 60, "purge")
