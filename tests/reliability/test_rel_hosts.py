"""Workers on two 'hosts' (network namespaces joined by veth pairs) against Redis and S3 on a third
(the root namespace, on an address of an interface the test adds); one host's link is cut mid-task and the
other host finishes the job, its lost task included.

The hosts are devstack/netns.py's; the test skips, saying why, where namespaces cannot be created.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from devstack.harness import running_stack
from devstack.netns import SERVER, NetnsUnavailable, set_link, worker_hosts, workers_on
from devstack.procs import signal_all
from tests.integration.stack_helpers import freeze_mid_task, small_job, task_events
from workers.audit import assert_exact_outputs

pytestmark = pytest.mark.integration


@pytest.fixture
def hosts() -> Iterator[dict[str, str]]:
    try:
        with worker_hosts() as made:
            yield made
    except NetnsUnavailable as e:
        pytest.skip(str(e))


def test_rel_host_link_cut_mid_task_other_host_finishes(hosts, tmp_path):
    with running_stack(tmp_path / "stack", host=SERVER, plan=workers_on(hosts)) as stack:
        spec = small_job()
        job_id = stack.submit(spec)
        # cut host A's only link while it runs a unit of the flow: a lost start_job is not sent
        # again as such (the sweep sends the flow's outstanding units), so it cannot be looked for
        ev, frozen = freeze_mid_task(stack, "worker-hostA", 0, task="dfusion.sample")
        try:
            set_link("hostA", up=False)
        finally:
            signal_all(frozen, signal.SIGCONT)
        job = stack.wait_job(job_id, timeout_s=240)
        assert job["status"] == "succeeded", job
        assert_exact_outputs(stack.state(), stack.store(), job_id, spec)
        # host B ran the task that was lost with host A
        redone = [e for e in task_events(stack, "worker-hostB", 0)
                  if e.kind == "start" and (e.task, e.kwargs) == (ev.task, ev.kwargs) and e.ts > ev.ts]
        assert redone, f"{ev.task} {ev.kwargs} was not run again on host B"
