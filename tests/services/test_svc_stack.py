"""The local stack's supervisor, run with dummy processes, and its default plan."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.procs import ProcessSpec, free_port, pid_alive
from services.settings import Settings
from services.stack import QUEUES, ProcessInfo, default_specs, stack_down, stack_status, stack_up


def _by_name(infos: list[ProcessInfo]) -> dict[str, ProcessInfo]:
    return {p.name: p for p in infos}


def _wait(check, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    stack_down(tmp_path, grace_s=3.0)  # never leave processes behind, even on failure


def test_supervisor_restarts_killed_process(root: Path) -> None:
    specs = [
        ProcessSpec("worker-sample", ["sleep", "1000"], queues=["sample"], restart=True),
        ProcessSpec("oneshot", ["sleep", "1000"], restart=False),
    ]
    status = _by_name(stack_up(Settings(), root, specs=specs))
    assert status["supervisor"].alive
    _wait(lambda: all(p.alive for p in stack_status(root)))
    first = _by_name(stack_status(root))
    assert first["worker-sample"].queues == ["sample"]
    assert stack_up(Settings(), root, specs=specs)[0].pid == first["supervisor"].pid  # already up

    os.kill(first["worker-sample"].pid, signal.SIGKILL)  # type: ignore[arg-type]
    os.kill(first["oneshot"].pid, signal.SIGKILL)  # type: ignore[arg-type]
    _wait(lambda: _by_name(stack_status(root))["worker-sample"].restarts == 1)
    now = _by_name(stack_status(root))
    assert now["worker-sample"].alive and now["worker-sample"].pid != first["worker-sample"].pid
    assert not now["oneshot"].alive and now["oneshot"].restarts == 0
    assert (root / "logs" / "worker-sample.log").exists()

    final = stack_down(root, grace_s=3.0)
    assert not any(p.alive for p in final)
    for pid in (first["supervisor"].pid, now["worker-sample"].pid):
        assert pid is not None and not pid_alive(pid)


def test_stack_down_leaves_foreign_processes(root: Path) -> None:
    import subprocess

    stranger = subprocess.Popen(["sleep", "1000"])
    try:
        stack_up(Settings(), root, specs=[ProcessSpec("w", ["sleep", "999"], restart=True)])
        stack_down(root, grace_s=3.0)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()
    assert stack_status(Path(root) / "nowhere") == []


def test_default_plan(tmp_path: Path, redis_url: str) -> None:
    api_port = free_port()
    settings = Settings(redis_url=redis_url, api_port=api_port, s3_secret_key="sekrit", s3_access_key="ak")
    specs, facts = default_specs(settings, tmp_path)
    names = [s.name for s in specs]
    assert "redis" not in names  # the machine's Redis answers: reuse it
    assert names == ["seaweedfs", "api"] + [f"worker-{q}" for q in QUEUES]
    weed = specs[0]
    assert weed.env == {"AWS_ACCESS_KEY_ID": "ak", "AWS_SECRET_ACCESS_KEY": "sekrit"}
    assert facts["s3_endpoint"] == f"127.0.0.1:{weed.port}"
    api = specs[1]
    assert api.command[1:] == ["-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(api_port)]
    for spec, q in zip(specs[2:], QUEUES, strict=True):
        assert spec.queues == [q] and spec.restart
        assert spec.command[1:] == ["-m", "celery", "-A", "workers.celery_app", "worker", "-Q", q,
                                    "-n", f"{q}@%h", "-c", "1", "--prefetch-multiplier", "1", "-l", "info"]
        assert spec.env["S3_SECRET_KEY"] == "sekrit" and spec.env["REDIS_URL"] == redis_url


def test_default_plan_starts_missing_redis(tmp_path: Path) -> None:
    port = free_port()
    specs, _ = default_specs(Settings(redis_url=f"redis://127.0.0.1:{port}/0"), tmp_path)
    redis_spec = next(s for s in specs if s.name == "redis")
    assert redis_spec.port == port and "--appendonly" in redis_spec.command


@pytest.mark.slow
def test_stack_runs_real_servers(tmp_path: Path) -> None:
    """The supervisor runs the real Redis (AOF) and SeaweedFS specs; a killed Redis comes back with its data."""
    import redis

    from tests.infra import s3_probe

    root = tmp_path
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    specs, facts = default_specs(settings, root)
    servers = [s for s in specs if s.name in ("redis", "seaweedfs")]
    try:
        stack_up(settings, root, specs=servers)
        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1)
        _wait(lambda: _try(client.ping), 15)
        client.set("dfusion:probe", "kept")
        os.kill(_by_name(stack_status(root))["redis"].pid, signal.SIGKILL)  # type: ignore[arg-type]
        _wait(lambda: _by_name(stack_status(root))["redis"].restarts == 1 and _try(client.ping), 15)
        assert client.get("dfusion:probe") == b"kept"  # appendonly survived the kill
        _wait(lambda: _try(lambda: s3_probe(facts["s3_endpoint"], facts["s3_access_key"],
                                            facts["s3_secret_key"])), 60)
    finally:
        stack_down(root, grace_s=3.0)
    assert not any(p.alive for p in stack_status(root))


def _try(fn) -> bool:
    try:
        return bool(fn())
    except Exception:  # noqa: BLE001
        return False
