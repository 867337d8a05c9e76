"""What the local stack runs: its processes as data (`ProcessSpec`) and the connection facts.

`default_specs` is the compose file's shape for these settings (one worker per stage queue, its
prefork children and their torch threads from `Settings.worker_concurrency` / `worker_threads`);
`devstack.stack` starts and supervises the plan.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from devstack.procs import (
    ProcessSpec,
    SeaweedPorts,
    find_binary,
    redis_command,
    seaweed_command,
    seaweed_env,
    tcp_open,
)
from services.queue import QUEUES, worker_command
from services.settings import Settings


def default_specs(settings: Settings, root_dir: Path) -> tuple[list[ProcessSpec], dict[str, Any]]:
    """The stack's processes for these settings, plus the connection facts (written to the state file).

    Servers that already answer are not started again; the returned facts say where they are.
    """
    root_dir = Path(root_dir)
    py = sys.executable
    specs: list[ProcessSpec] = []
    facts: dict[str, Any] = {}
    url = urlsplit(settings.redis_url)
    redis_host, redis_port = url.hostname or "127.0.0.1", url.port or 6379
    facts["redis_url"] = settings.redis_url
    if not tcp_open(redis_host, redis_port):
        server = find_binary("redis-server") or "redis-server"
        (root_dir / "redis").mkdir(parents=True, exist_ok=True)
        # Reachable from other hosts only with a password (protected mode refuses them otherwise).
        password = url.password
        if password is None and not _loopback(redis_host):
            password = secrets.token_urlsafe(24)
            facts["redis_url"] = url._replace(netloc=f":{password}@{url.netloc}").geturl()
        specs.append(ProcessSpec("redis", redis_command(server, redis_port, root_dir / "redis", redis_host, password),
                                 port=redis_port, restart=True))

    access = settings.s3_access_key or "dfusion-" + secrets.token_hex(4)
    secret = settings.s3_secret_key or secrets.token_urlsafe(24)
    endpoint = settings.s3_endpoint
    if endpoint and tcp_open(*_host_port(endpoint)):
        facts.update(s3_endpoint=endpoint, s3_access_key=settings.s3_access_key,
                     s3_secret_key=settings.s3_secret_key)
    else:
        ports, s3_host = SeaweedPorts.pick(), "127.0.0.1"
        if endpoint:
            s3_host, s3_port = _host_port(endpoint)
            ports = SeaweedPorts(s3_port, ports.master, ports.volume, ports.filer)
        weed = find_binary("weed") or "weed"
        (root_dir / "seaweedfs").mkdir(parents=True, exist_ok=True)
        specs.append(ProcessSpec("seaweedfs", seaweed_command(weed, root_dir / "seaweedfs", ports, s3_host),
                                 env=seaweed_env(access, secret), port=ports.s3, restart=True))
        facts.update(s3_endpoint=f"{s3_host}:{ports.s3}", s3_access_key=access, s3_secret_key=secret)
    facts["s3_bucket"] = settings.s3_bucket

    env = {
        "REDIS_URL": facts["redis_url"], "S3_ENDPOINT": facts["s3_endpoint"], "S3_BUCKET": settings.s3_bucket,
        "S3_ACCESS_KEY": facts["s3_access_key"] or "", "S3_SECRET_KEY": facts["s3_secret_key"] or "",
        "DFUSION_API_HOST": settings.api_host, "DFUSION_API_PORT": str(settings.api_port),
        # report_to jobs' tracker files (workers/tracking.py) live with the stack's other state
        "DFUSION_TRACKING_DIR": os.environ.get("DFUSION_TRACKING_DIR") or str(Path(root_dir).resolve() / "tracking"),
    }
    if not tcp_open(settings.api_host, settings.api_port):
        cmd = [py, "-m", "uvicorn", "api.main:app", "--host", settings.api_host, "--port", str(settings.api_port)]
        specs.append(ProcessSpec("api", cmd, env=env, port=settings.api_port, restart=True))
    facts["api_url"] = f"http://{settings.api_host}:{settings.api_port}"
    return specs + _worker_specs(settings, py, env), facts


def _worker_specs(settings: Settings, python: str, env: dict[str, str]) -> list[ProcessSpec]:
    """One worker per stage queue, placed by the settings: `worker_concurrency` prefork children
    (default 1), each on `worker_threads` torch threads (its DFUSION_TORCH_THREADS; default: the
    variable the stack's processes inherit)."""
    specs = []
    for q in QUEUES:
        threads = settings.worker_threads.get(q)
        command = worker_command(python, [q], f"{q}@%h", settings.worker_concurrency.get(q, 1))
        specs.append(ProcessSpec(f"worker-{q}", command, queues=[q], restart=True,
                                 env=env if threads is None else {**env, "DFUSION_TORCH_THREADS": str(threads)}))
    return specs


def _loopback(host: str) -> bool:
    return host == "localhost" or host.startswith("127.") or host == "::1"


def _host_port(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host or "127.0.0.1", int(port)
