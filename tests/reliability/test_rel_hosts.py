"""Workers on two 'hosts' (network namespaces joined by veth pairs) against Redis and S3 on a third
(the root namespace, on an address of an interface the test adds); one host's link is cut mid-task and the
other host finishes the job, its lost task included.

Addresses are private (10.231.0.0/16) and exist only on interfaces this test creates; it skips,
saying why, where namespaces cannot be created (no root, no CAP_SYS_ADMIN, no `ip`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from devstack.procs import ProcessSpec
from services.queue import QUEUES, worker_command
from tests.integration.stack_helpers import (
    assert_exact_outputs,
    freeze_mid_task,
    running_stack,
    signal_all,
    small_job,
    task_events,
)

pytestmark = pytest.mark.integration

SERVER = "10.231.0.1"  # Redis, S3 and the API's backends listen here (root namespace)
TAG = f"{os.getpid() % 100000}"
HOSTS = {"hostA": (f"dfxA{TAG}", 1), "hostB": (f"dfxB{TAG}", 2)}  # name -> (netns, subnet index)
SERVER_LINK = f"dfxs{TAG}"


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", "netns", "exec", ns, "ip", *args] if ns else ["ip", *args]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=10)


def _veth(i: int, side: str) -> str:
    return f"dfx{side}{i}x{TAG}"  # at most 15 characters


@pytest.fixture
def hosts() -> Iterator[dict[str, str]]:
    if not shutil.which("ip"):
        pytest.skip("network namespaces: the `ip` tool (iproute2) is not installed")
    probe = subprocess.run(["ip", "netns", "add", HOSTS["hostA"][0]], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"network namespaces cannot be created here: {probe.stderr.strip()}")
    try:
        # the server's address, on a veth pair kept in the root namespace (the dummy driver may be missing)
        _ip("link", "add", SERVER_LINK, "type", "veth", "peer", "name", f"{SERVER_LINK}p")
        _ip("addr", "add", f"{SERVER}/32", "dev", SERVER_LINK)
        _ip("link", "set", f"{SERVER_LINK}p", "up")
        _ip("link", "set", SERVER_LINK, "up")
        for name, (ns, i) in HOSTS.items():
            if name != "hostA":
                _ip("netns", "add", ns)
            root_end, host_end = _veth(i, "r"), _veth(i, "h")
            _ip("link", "add", root_end, "type", "veth", "peer", "name", host_end)
            _ip("link", "set", host_end, "netns", ns)
            _ip("addr", "add", f"10.231.{i}.1/24", "dev", root_end)
            _ip("link", "set", root_end, "up")
            _ip("link", "set", "lo", "up", ns=ns)
            _ip("addr", "add", f"10.231.{i}.2/24", "dev", host_end, ns=ns)
            _ip("link", "set", host_end, "up", ns=ns)
            _ip("route", "add", f"{SERVER}/32", "via", f"10.231.{i}.1", ns=ns)
        yield {name: ns for name, (ns, _) in HOSTS.items()}
    finally:
        for ns, i in HOSTS.values():
            _kill_inside(ns)  # a worker cut off mid-request may outlive the stack's shutdown
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            subprocess.run(["ip", "link", "del", _veth(i, "r")], capture_output=True)  # and its peer
        subprocess.run(["ip", "link", "del", SERVER_LINK], capture_output=True)


def _kill_inside(ns: str) -> None:
    """SIGKILL the processes left in a namespace this test created (its workers)."""
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
    for pid in map(int, pids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _workers_on(hosts: dict[str, str]):
    def plan(specs: list[ProcessSpec]) -> list[ProcessSpec]:
        env = next(s.env for s in specs if s.name.startswith("worker-"))
        out = [s for s in specs if not s.name.startswith("worker-")]
        for name, ns in hosts.items():
            cmd = ["ip", "netns", "exec", ns, *worker_command(sys.executable, QUEUES, f"{name}@%h")]
            out.append(ProcessSpec(f"worker-{name}", cmd, env=env, queues=list(QUEUES), restart=True))
        return out
    return plan


def test_rel_host_link_cut_mid_task_other_host_finishes(hosts, tmp_path):
    with running_stack(tmp_path / "stack", host=SERVER, plan=_workers_on(hosts)) as stack:
        spec = small_job()
        job_id = stack.submit(spec)
        # cut host A's only link while it runs a task (any stage)
        ev, frozen = freeze_mid_task(stack, "worker-hostA", 0)
        ns, i = HOSTS["hostA"]
        try:
            _ip("link", "set", _veth(i, "h"), "down", ns=ns)
        finally:
            signal_all(frozen, signal.SIGCONT)
        job = stack.wait_job(job_id, timeout_s=240)
        assert job["status"] == "succeeded", job
        assert_exact_outputs(stack, job_id, spec)
        # host B ran the task that was lost with host A
        redone = [e for e in task_events(stack, "worker-hostB", 0)
                  if e.kind == "start" and (e.task, e.kwargs) == (ev.task, ev.kwargs) and e.ts > ev.ts]
        assert redone, f"{ev.task} {ev.kwargs} was not run again on host B"
