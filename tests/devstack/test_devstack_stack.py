"""The local stack's supervisor, run with dummy processes, and its default plan; its health probes;
`dfusion stack up` waiting until the real stack is usable, or naming what is not."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.health import StackNotReady, probe_stack
from devstack.procs import ProcessSpec, free_port, pid_alive
from devstack.stack import (
    RESTART_BACKOFF_S,
    RESTART_RESET_S,
    ProcessInfo,
    Supervisor,
    default_specs,
    stack_down,
    stack_facts,
    stack_health,
    stack_kill,
    stack_status,
    stack_up,
    stack_wait,
)
from services.queue import QUEUES, worker_command
from services.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
# Settings for a real stack's processes only (never this process's environment): four workers
# share two cores.
STACK_ENV = {"DFUSION_TORCH_THREADS": "1", "DFUSION_AUTH_REQUIRED": "true"}


def _by_name(infos: list[ProcessInfo]) -> dict[str, ProcessInfo]:
    return {p.name: p for p in infos}


# Deadlines for conditions that hold within a second on an idle machine (a supervisor tick, a
# redis-server start): only a failing run waits them out, so they are generous for loaded ones.
def _wait(check, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    stack_kill(tmp_path)  # never leave processes behind, even on failure (no clean stop: nothing to keep)


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


def test_restart_delay_backs_off_in_a_crash_loop_only(tmp_path: Path) -> None:
    """A process that ran RESTART_RESET_S before it died restarts at once, however many restarts
    came before (compose resets its delay likewise); only quick deaths in a row wait longer. Before,
    the delay grew with every restart ever, so Redis killed every half-minute came back 5 s late:
    close to a lease's TTL (6 s), and every running unit lost its lease."""
    sup = Supervisor(tmp_path, [ProcessSpec("redis", ["true"], restart=True)])
    assert [sup._restart_delay("redis", ran_s=0.1) for _ in range(7)] == [1, 2, 3, 4, 5, 5, 5]
    assert [sup._restart_delay("redis", ran_s=RESTART_RESET_S) for _ in range(7)] == [0] * 7
    assert sup._restart_delay("redis", ran_s=0.1) == RESTART_BACKOFF_S


def test_a_wrapped_program_is_alive_and_stopped(root: Path) -> None:
    """A command through a wrapper that execs it (`env`, `nice`, `ip netns exec NS`, as the
    reliability suite's netns hosts run their workers) is alive while it runs, and stack_down
    stops it: the pid runs `sleep`, not the recorded `env`."""
    stack_up(Settings(), root, specs=[ProcessSpec("worker-host", ["env", "sleep", "1000"], restart=True)])
    _wait(lambda: _by_name(stack_status(root))["worker-host"].alive)
    pid = _by_name(stack_status(root))["worker-host"].pid
    _wait(lambda: Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep"))
    assert _by_name(stack_status(root))["worker-host"].alive
    stack_down(root, grace_s=3.0)
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
        assert spec.command == worker_command(sys.executable, [q], f"{q}@%h")
        assert spec.command[1:] == ["-m", "celery", "-A", "workers.celery_app", "worker", "-Q", q, "-n", f"{q}@%h",
                                    "-c", "1", "--prefetch-multiplier", "1", "-l", "INFO", "-E",
                                    "--without-gossip", "--without-mingle"]
        assert spec.env["S3_SECRET_KEY"] == "sekrit" and spec.env["REDIS_URL"] == redis_url
        assert "DFUSION_TORCH_THREADS" not in spec.env  # the stack's own (harness: 1 thread), or torch's default


def test_plan_places_workers_per_stage(tmp_path: Path) -> None:
    """`worker_concurrency` is each stage worker's `-c`, `worker_threads` its DFUSION_TORCH_THREADS
    (a spec's env wins over the environment the stack gives all processes); other stages keep the defaults."""
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", api_port=free_port(),
                        worker_concurrency="sample=2,fuse=2", worker_threads={"train": 2})
    workers = {s.queues[0]: s for s in default_specs(settings, tmp_path)[0] if s.queues}
    assert list(workers) == list(QUEUES)
    for q, spec in workers.items():
        children = 2 if q in ("sample", "fuse") else 1
        assert spec.command == worker_command(sys.executable, [q], f"{q}@%h", children)
        assert spec.command[spec.command.index("-c") + 1] == str(children)
        assert spec.env.get("DFUSION_TORCH_THREADS") == ("2" if q == "train" else None)


def test_default_plan_starts_missing_redis(tmp_path: Path) -> None:
    port = free_port()
    specs, _ = default_specs(Settings(redis_url=f"redis://127.0.0.1:{port}/0"), tmp_path)
    redis_spec = next(s for s in specs if s.name == "redis")
    assert redis_spec.port == port and "--appendonly" in redis_spec.command


def test_seaweed_ports_stay_out_of_the_ephemeral_range() -> None:
    """A SeaweedFS gRPC port (HTTP port + 10000) inside the kernel's range for outgoing connections
    can be held by any client connection, and `weed` then exits on every restart (a CI stack never
    came up that way). 200 picks: the old 20000..30000 choice put 72 % of gRPC ports in the range."""
    from devstack.procs import GRPC_OFFSET, SeaweedPorts, ephemeral_ports

    ephemeral = ephemeral_ports()
    picked = [p for _ in range(50) for p in dataclasses.astuple(SeaweedPorts.pick())]
    assert not [p for p in picked if p in ephemeral or p + GRPC_OFFSET in ephemeral]
    assert not [p for p in (free_port() for _ in range(50)) if p in ephemeral]


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
        _wait(lambda: _try(client.ping))
        client.set("dfusion:probe", "kept")
        os.kill(_by_name(stack_status(root))["redis"].pid, signal.SIGKILL)  # type: ignore[arg-type]
        _wait(lambda: _by_name(stack_status(root))["redis"].restarts == 1 and _try(client.ping))
        assert client.get("dfusion:probe") == b"kept"  # appendonly survived the kill
        _wait(lambda: _try(lambda: s3_probe(facts["s3_endpoint"], facts["s3_access_key"],
                                            facts["s3_secret_key"])), 120)
    finally:
        stack_down(root, grace_s=3.0)
    assert not any(p.alive for p in stack_status(root))


def _try(fn) -> bool:
    try:
        return bool(fn())
    except Exception:  # noqa: BLE001
        return False


# --- health: probes, waiting, and `dfusion stack up` ---------------------------------------------


def test_dummy_processes_are_healthy_while_alive(root: Path) -> None:
    """With no servers to probe (a dummy plan), health is liveness; a dead one is named with its log."""
    specs = [ProcessSpec("w", ["sleep", "1000"], restart=True), ProcessSpec("oneshot", ["sleep", "1000"])]
    stack_up(Settings(), root, specs=specs)
    _wait(lambda: all(p.alive for p in stack_status(root)))
    assert [(h.name, h.healthy) for h in stack_wait(root, timeout_s=30)] == [("w", True), ("oneshot", True)]
    os.kill(_by_name(stack_status(root))["oneshot"].pid, signal.SIGKILL)  # type: ignore[arg-type]
    _wait(lambda: not _by_name(stack_status(root))["oneshot"].alive)
    with pytest.raises(StackNotReady) as info:
        stack_wait(root, timeout_s=0.5)
    message = str(info.value)
    assert "\n" not in message and "oneshot (not running" in message and "w (" not in message
    assert str(root / "logs" / "oneshot.log") in message
    assert not next(h for h in stack_health(root) if h.name == "oneshot").healthy


def test_probes_name_each_service_that_does_not_answer(tmp_path: Path) -> None:
    dead = {"redis_url": f"redis://:pw@127.0.0.1:{free_port()}/0", "s3_endpoint": f"127.0.0.1:{free_port()}",
            "s3_access_key": "k", "s3_secret_key": "s", "s3_bucket": "b", "api_url": f"http://127.0.0.1:{free_port()}"}
    report = {h.name: h for h in probe_stack(tmp_path, [], dead, QUEUES)}
    assert list(report) == ["redis", "s3", "api"] + [f"queue:{q}" for q in QUEUES]
    assert not any(h.healthy for h in report.values())
    assert "no PING answer" in report["redis"].detail and "pw" not in report["redis"].detail  # redacted
    assert "no S3 round trip" in report["s3"].detail and "no answer" in report["api"].detail
    assert report["queue:sample"].detail == "redis does not answer"
    assert report["redis"].line().endswith("; not started by the stack)")  # none of them is the stack's


def test_queues_without_workers_are_unhealthy(tmp_path: Path, redis_url: str, seaweed_server) -> None:
    import redis

    facts = {"redis_url": redis_url, "s3_endpoint": seaweed_server.endpoint, "s3_bucket": "dfusion-test",
             "s3_access_key": seaweed_server.access_key, "s3_secret_key": seaweed_server.secret_key}
    with redis.Redis.from_url(redis_url) as client:
        before = set(client.keys("*"))
        try:
            report = {h.name: h for h in probe_stack(tmp_path, [], facts, QUEUES)}
        finally:  # Celery's inspect leaves kombu bookkeeping keys; the session's Redis is shared
            if new := set(client.keys("*")) - before:
                client.delete(*new)
    assert report["redis"].healthy and report["s3"].healthy
    assert report["queue:train"].detail == "no worker consumes queue 'train'" and not report["queue:train"].healthy


def _cli(*args: str, env: dict[str, str] | None = None, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout_s)


def _stack_settings_env() -> dict[str, str]:
    """A whole stack of its own: Redis and the API on free ports (S3 always gets free ones)."""
    return {**STACK_ENV, "DFUSION_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            "DFUSION_API_PORT": str(free_port())}


@pytest.mark.slow
@pytest.mark.integration
def test_stack_up_returns_when_a_job_can_be_posted(root: Path) -> None:
    """`dfusion stack up && curl -X POST .../v1/jobs`, with no sleep between (issue 12)."""
    import httpx

    from services.state.tokens import TokenStore

    up = _cli("stack", "up", "--root", str(root), "--timeout", "300", env=_stack_settings_env())
    assert up.returncode == 0, up.stdout + up.stderr
    facts = stack_facts(root)
    token = TokenStore.from_url(facts["redis_url"]).create("alice")  # what `dfusion token create` does
    job = {"prompts": [{"text": "a cat eating a sandwich", "items": ["cat", "sandwich"],
                        "mask_thresholds": [0.03, 0.005]}], "model": "tiny", "samples_per_prompt": 4,
           "sampling": {"num_steps": 2}}
    r = httpx.post(f"{facts['api_url']}/v1/jobs", json=job, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 202, r.text
    assert httpx.get(f"{facts['api_url']}/healthz/live", timeout=5).json() == {"status": "live"}
    status = json.loads(_cli("stack", "status", "--root", str(root), "--json").stdout)
    health = {h["name"]: h for h in status["health"]}
    assert set(health) == {"redis", "s3", "api"} | {f"queue:{q}" for q in QUEUES}
    assert all(h["healthy"] for h in health.values()), health
    assert health["queue:fuse"]["process"] == "worker-fuse" and health["queue:fuse"]["detail"].startswith("consumed by")


@pytest.mark.slow
@pytest.mark.integration
def test_stack_up_names_a_worker_that_cannot_start(root: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The score worker's Celery app is a module that does not exist: up exits 1 within its timeout
    and names that worker and its log (the plan is data: the test hook rewrites one command)."""
    import devstack.stack
    import services.settings
    from cli.main import main

    def broken_plan(settings: Settings, root_dir: Path):
        specs, facts = default_specs(settings, root_dir)
        specs = [dataclasses.replace(s, env={**STACK_ENV, **s.env}) for s in specs]
        return [dataclasses.replace(s, command=[("tests.no_such_module" if a == "workers.celery_app" else a)
                                                for a in s.command]) if s.name == "worker-score" else s
                for s in specs], facts

    env = _stack_settings_env()
    settings = Settings(redis_url=env["DFUSION_REDIS_URL"], api_port=int(env["DFUSION_API_PORT"]))
    monkeypatch.setattr(devstack.stack, "default_specs", broken_plan)
    monkeypatch.setattr(services.settings, "get_settings", lambda: settings)
    # Any timeout shows the behaviour (the score worker never consumes, however long up waits);
    # each second of it is waited out in full. The log check below waits for the log on its own.
    timeout_s = 8.0
    started = time.monotonic()
    rc = main(["stack", "up", "--root", str(root), "--timeout", str(timeout_s)])
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 1
    # on top of the timeout: the supervisor's start (stack_up gives it at most 30 s) and one last round
    # of probes (bounded by their own timeouts: redis 2 s, S3 about 10 s with retries, API 2 s, inspect 1 s)
    assert timeout_s <= elapsed < timeout_s + 45
    assert err.startswith(f"dfusion stack up: stack not ready after {timeout_s:g}s: ")
    assert "worker-score (" in err and str(root / "logs" / "worker-score.log") in err
    # the worker's first start fails within seconds of the supervisor's start, but a loaded machine
    # may not have written it by the time up gives up: wait for it (generously, as _wait does)
    log = root / "logs" / "worker-score.log"
    _wait(lambda: log.exists() and "tests.no_such_module" in log.read_text())
