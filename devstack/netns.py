"""Worker "hosts" on this machine: network namespaces joined by veth pairs to a server address in the
root namespace, where Redis and S3 then listen (`devstack.harness.running_stack(host=SERVER,
plan=workers_on(hosts))`). The reliability suite (tests/reliability/test_rel_hosts.py) and the
chaos soak (bench/chaos.py) cut a host's link to see its worker vanish from the network while it
keeps running.

Addresses are private (10.231.0.0/16) and exist only on interfaces created here. `worker_hosts`
raises `NetnsUnavailable`, saying why, where namespaces cannot be created (no root, no
CAP_SYS_ADMIN, no `ip`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator

from devstack.procs import ProcessSpec
from services.queue import QUEUES, worker_command

SERVER = "10.231.0.1"  # Redis, S3 and the API's backends listen here (root namespace)
TAG = f"{os.getpid() % 100000}"
HOSTS = {"hostA": (f"dfxA{TAG}", 1), "hostB": (f"dfxB{TAG}", 2)}  # name -> (netns, subnet index)
SERVER_LINK = f"dfxs{TAG}"


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made on this machine; the message says why."""


def ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", "netns", "exec", ns, "ip", *args] if ns else ["ip", *args]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=10)


def veth(i: int, side: str) -> str:
    return f"dfx{side}{i}x{TAG}"  # at most 15 characters


@contextlib.contextmanager
def worker_hosts() -> Iterator[dict[str, str]]:
    """Two hosts (name -> netns) that reach SERVER; everything is removed on exit."""
    if not shutil.which("ip"):
        raise NetnsUnavailable("network namespaces: the `ip` tool (iproute2) is not installed")
    probe = subprocess.run(["ip", "netns", "add", HOSTS["hostA"][0]], capture_output=True, text=True)
    if probe.returncode != 0:
        raise NetnsUnavailable(f"network namespaces cannot be created here: {probe.stderr.strip()}")
    try:
        # the server's address, on a veth pair kept in the root namespace (the dummy driver may be missing)
        ip("link", "add", SERVER_LINK, "type", "veth", "peer", "name", f"{SERVER_LINK}p")
        ip("addr", "add", f"{SERVER}/32", "dev", SERVER_LINK)
        ip("link", "set", f"{SERVER_LINK}p", "up")
        ip("link", "set", SERVER_LINK, "up")
        for name, (ns, i) in HOSTS.items():
            if name != "hostA":
                ip("netns", "add", ns)
            root_end, host_end = veth(i, "r"), veth(i, "h")
            ip("link", "add", root_end, "type", "veth", "peer", "name", host_end)
            ip("link", "set", host_end, "netns", ns)
            ip("addr", "add", f"10.231.{i}.1/24", "dev", root_end)
            ip("link", "set", root_end, "up")
            ip("link", "set", "lo", "up", ns=ns)
            ip("addr", "add", f"10.231.{i}.2/24", "dev", host_end, ns=ns)
            ip("link", "set", host_end, "up", ns=ns)
            ip("route", "add", f"{SERVER}/32", "via", f"10.231.{i}.1", ns=ns)
        yield {name: ns for name, (ns, _) in HOSTS.items()}
    finally:
        for ns, i in HOSTS.values():
            kill_inside(ns)  # a worker cut off mid-request may outlive the stack's shutdown
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            subprocess.run(["ip", "link", "del", veth(i, "r")], capture_output=True)  # and its peer
        subprocess.run(["ip", "link", "del", SERVER_LINK], capture_output=True)


def set_link(name: str, up: bool) -> None:
    """Cut a host's only link, or bring it back with its route to the server (the kernel drops the
    route with the link)."""
    ns, i = HOSTS[name]
    ip("link", "set", veth(i, "h"), "up" if up else "down", ns=ns)
    if up:
        ip("route", "replace", f"{SERVER}/32", "via", f"10.231.{i}.1", ns=ns)


def kill_inside(ns: str) -> None:
    """SIGKILL the processes left in a namespace made here (its workers)."""
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
    for pid in map(int, pids):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def workers_on(hosts: dict[str, str]) -> Callable[[list[ProcessSpec]], list[ProcessSpec]]:
    """A stack plan: the stack's per-queue workers replaced by one worker per host, on every queue."""
    def plan(specs: list[ProcessSpec]) -> list[ProcessSpec]:
        env = next(s.env for s in specs if s.name.startswith("worker-"))
        out = [s for s in specs if not s.name.startswith("worker-")]
        for name, ns in hosts.items():
            cmd = ["ip", "netns", "exec", ns, *worker_command(sys.executable, QUEUES, f"{name}@%h")]
            out.append(ProcessSpec(f"worker-{name}", cmd, env=env, queues=list(QUEUES), restart=True))
        return out
    return plan
