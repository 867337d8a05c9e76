"""The faults bench/chaos.py injects into a running local stack, and the worker "hosts" it may cut off.

Each fault takes the stack, a seeded `random.Random` and returns a `Fault` once the fault is over
(what was stopped is resumed, what was killed is left to the stack supervisor to restart). The
netns hosts are the reliability suite's (devstack/netns.py); this module adds a worker per host beside the
per-queue workers.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack import netns
from devstack.harness import Stack, running_stack
from devstack.procs import ProcessSpec, signal_all, tcp_open, wait_for

#: The stack's own workers: one per queue (devstack.plan); netns hosts add worker-hostA/B.
QUEUE_WORKERS = ("worker-sample", "worker-score", "worker-fuse", "worker-train")
_CUT: set[str] = set()  # hosts whose link is down now


@dataclass
class Fault:
    kind: str
    detail: str
    start: float  # time.time() at injection
    end: float = 0.0  # when the fault was over (resumed, or killed and left to the supervisor)
    recovery_s: float | None = None  # set by the soak: from `end` until the stack made progress again
    extra: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def worker_hosts() -> Iterator[tuple[dict[str, str] | None, str]]:
    """The suite's two netns hosts (devstack/netns.py) if they can be made here (else None and the reason)."""
    try:
        with netns.worker_hosts() as hosts:
            yield hosts, "ok"
    except netns.NetnsUnavailable as e:
        yield None, str(e)


@contextlib.contextmanager
def chaos_stack(root: Path, env: dict[str, str], hosts: dict[str, str] | None) -> Iterator[Stack]:
    """The local stack; with `hosts`, Redis and S3 on the hosts' server address and one worker per
    host (every queue) beside the per-queue workers of the root namespace."""
    if hosts is None:
        with running_stack(root, env=env) as stack:
            yield stack
        return
    on_hosts = netns.workers_on(hosts)

    def plan(specs: list[ProcessSpec]) -> list[ProcessSpec]:
        return on_hosts(specs) + [s for s in specs if s.name.startswith("worker-")]

    with running_stack(root, env=env, host=netns.SERVER, plan=plan) as stack:
        yield stack


def kill_worker(stack: Stack, rng: random.Random, workers: list[str]) -> Fault:
    """kill -9 of a worker: its pool process (Celery forks another) or the whole worker (the
    supervisor restarts it; its unacked task comes back through the lease sweep)."""
    name = rng.choice(workers)
    children = stack.pool_children(name)
    if children and rng.random() < 0.5:
        signal_all(children, signal.SIGKILL)
        return Fault("kill_worker", f"{name} pool process {children}", time.time(), time.time())
    pid = stack.processes()[name].pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return Fault("kill_worker", f"{name} (whole worker, pid {pid})", time.time(), time.time())


def kill_redis(stack: Stack, rng: random.Random) -> Fault:
    """kill -9 of redis-server; the supervisor restarts it from its AOF (appendfsync everysec)."""
    proc = stack.processes()["redis"]
    t0 = time.time()
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    state = stack.state()
    try:
        wait_for(state.r.ping, 60, "Redis to answer again", poll_s=0.1)
    except TimeoutError as e:
        return Fault("kill_redis", f"pid {proc.pid}; {e}", t0, time.time())
    return Fault("kill_redis", f"pid {proc.pid}, back after {time.time() - t0:.1f}s", t0, time.time())


def stop_store(stack: Stack, rng: random.Random) -> Fault:
    """The object store away for 5-20 s: frozen (SIGSTOP: requests hang) or killed with its restart
    held (requests refused), then resumed."""
    seconds = rng.uniform(5, 20)
    procs = stack.processes()
    weed, supervisor = procs["seaweedfs"], procs["supervisor"]
    t0 = time.time()
    if rng.random() < 0.5:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(weed.pid, signal.SIGSTOP)
        time.sleep(seconds)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(weed.pid, signal.SIGCONT)
        return Fault("stop_store", f"SIGSTOP {seconds:.1f}s", t0, time.time())
    host, port = stack.facts["s3_endpoint"].rsplit(":", 1)
    os.kill(supervisor.pid, signal.SIGSTOP)  # hold the restart for the whole outage
    try:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(weed.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            wait_for(lambda: not tcp_open(host, int(port)), 10, "S3 to go away", poll_s=0.05)
        time.sleep(seconds)
    finally:
        os.kill(supervisor.pid, signal.SIGCONT)
    return Fault("stop_store", f"killed, restart held {seconds:.1f}s", t0, time.time())


def cut_link(stack: Stack, rng: random.Random, hosts: dict[str, str]) -> Fault:
    """A worker host's only link down for 10-30 s (its worker keeps running, cut off), then up."""
    name = rng.choice(sorted(set(hosts) - _CUT) or sorted(hosts))  # not one cut already, if one can
    _CUT.add(name)
    seconds = rng.uniform(10, 30)
    t0 = time.time()
    netns.set_link(name, up=False)
    try:
        time.sleep(seconds)
    finally:
        netns.set_link(name, up=True)
        _CUT.discard(name)
    return Fault("cut_link", f"{name} cut {seconds:.1f}s", t0, time.time())


def fault_kinds(stack: Stack, hosts: dict[str, str] | None) -> dict[str, Callable[[random.Random], Fault]]:
    workers = list(QUEUE_WORKERS) + [f"worker-{h}" for h in sorted(hosts or {})]
    kinds: dict[str, Callable[[random.Random], Fault]] = {
        "kill_worker": lambda rng: kill_worker(stack, rng, workers),
        "kill_redis": lambda rng: kill_redis(stack, rng),
        "stop_store": lambda rng: stop_store(stack, rng),
    }
    if hosts:
        kinds["cut_link"] = lambda rng: cut_link(stack, rng, hosts)
    return kinds
