"""Is the local stack usable? One probe per service, as `docker compose up --wait` asks.

A service is healthy when it answers its own protocol, not when its pid is alive: Redis answers
PING, the S3 endpoint stores and returns an object, the API's `/healthz` says ready, and every
queue has a worker consuming it (Celery's `inspect active_queues`, over the broker). Processes the
stack manages that no probe covers (tests' dummy plans) count as healthy while alive.
`wait_healthy` polls until every service is healthy, or raises `StackNotReady` naming the ones
that are not and their logs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from devstack.procs import ProcessInfo
from dfusion_core.errors import DFusionError

PROBE_TIMEOUT_S = 2.0  # per probe: a healthy local service answers in milliseconds
INSPECT_TIMEOUT_S = 1.0  # Celery collects worker replies for this long
S3_PROBE_KEY = "healthz/probe"  # the key the API's /healthz looks up


@dataclass(frozen=True)
class ServiceHealth:
    """One service as `stack status` and `stack up` report it."""

    name: str  # redis | s3 | api | queue:<name> | a managed process without a probe
    healthy: bool
    detail: str  # "ok", or why not
    process: str | None = None  # the managed process serving it; None when the stack did not start it
    log: str | None = None  # that process's log file

    def line(self) -> str:
        """`worker-score (no worker consumes queue 'score'; log .stack/logs/worker-score.log)`."""
        who = self.process or self.name
        where = f"; log {self.log}" if self.log else "; not started by the stack"
        return f"{who} ({self.detail}{where})"


class StackNotReady(DFusionError):
    """`stack up` timed out: the message names each unhealthy service and its log, on one line."""

    def __init__(self, timeout_s: float, failing: list[ServiceHealth]) -> None:
        self.failing = failing
        names = ", ".join(h.line() for h in failing)
        super().__init__(f"stack not ready after {timeout_s:g}s: {names}")


def redacted(url: str) -> str:
    """`url` without its password (Redis URLs may carry one)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    port = f":{parts.port}" if parts.port else ""
    return parts._replace(netloc=f":***@{parts.hostname}{port}").geturl()


# --- probes: each returns "ok" or raises with the reason -----------------------------------------


def probe_redis(url: str) -> str:
    import redis

    try:
        with redis.Redis.from_url(url, socket_connect_timeout=PROBE_TIMEOUT_S, socket_timeout=PROBE_TIMEOUT_S) as r:
            r.ping()
    except redis.RedisError as e:
        raise RuntimeError(f"no PING answer at {redacted(url)}: {e}") from e
    return "ok"


def probe_s3(facts: dict[str, Any]) -> str:
    """A put and a get: SeaweedFS answers HTTP seconds before its volumes accept writes."""
    from services.storage import S3Store

    endpoint = facts["s3_endpoint"]
    try:
        store = S3Store(endpoint, facts.get("s3_access_key"), facts.get("s3_secret_key"), facts["s3_bucket"])
        store.put(S3_PROBE_KEY, b"ok")
        same = store.get(S3_PROBE_KEY) == b"ok"
    except Exception as e:  # noqa: BLE001 - StorageError and whatever the SDK lets through
        raise RuntimeError(f"no S3 round trip at {endpoint}: {e}") from e
    if not same:
        raise RuntimeError(f"S3 at {endpoint} returned other bytes than it stored")
    return "ok"


def probe_api(api_url: str) -> str:
    import httpx

    try:
        r = httpx.get(f"{api_url}/healthz", timeout=PROBE_TIMEOUT_S)
    except httpx.HTTPError as e:
        raise RuntimeError(f"no answer at {api_url}/healthz: {type(e).__name__}") from e
    if r.status_code == 503:  # the API's own answer: live, with a dependency down
        body = r.json()
        raise RuntimeError(f"live, not ready: redis {body.get('redis')}, storage {body.get('storage')}")
    if r.status_code != 200:
        raise RuntimeError(f"{api_url}/healthz answered {r.status_code}")
    return "ok"


def queue_consumers(redis_url: str) -> dict[str, list[str]]:
    """Queue name -> the Celery workers consuming it now (those that answer within a second)."""
    from services.queue import make_app
    from services.settings import Settings

    app = make_app(Settings(redis_url=redis_url))
    try:
        replies = app.control.inspect(timeout=INSPECT_TIMEOUT_S).active_queues() or {}
    finally:
        app.close()
    out: dict[str, list[str]] = {}
    for worker, queues in replies.items():
        for q in queues:
            out.setdefault(q["name"], []).append(worker)
    return out


# --- the report ------------------------------------------------------------------------------------


def _check(name: str, probe: Callable[[], str], process: ProcessInfo | None, logs: Path) -> ServiceHealth:
    try:
        detail, ok = probe(), True
    except Exception as e:  # noqa: BLE001 - any failure means "not healthy yet", with its reason
        detail, ok = (str(e) if isinstance(e, RuntimeError) else f"{type(e).__name__}: {e}"), False
        detail = " ".join(detail.split())[:300]  # one line
    return _health(name, ok, detail, process, logs)


def _health(name: str, ok: bool, detail: str, process: ProcessInfo | None, logs: Path) -> ServiceHealth:
    if process is None:
        return ServiceHealth(name, ok, detail)
    if not ok and not process.alive:
        detail = f"process not running, {process.restarts} restarts; {detail}"
    return ServiceHealth(name, ok, detail, process.name, str(logs / f"{process.name}.log"))


def probe_stack(root: Path, processes: list[ProcessInfo], facts: dict[str, Any],
                queues: tuple[str, ...]) -> list[ServiceHealth]:
    """Probe every service of the stack in `root` once; `processes` and `facts` are what its state
    file says (`stack_status`, `stack_facts`)."""
    logs = Path(root) / "logs"
    by_name = {p.name: p for p in processes}
    out: list[ServiceHealth] = []
    sup = by_name.get("supervisor")
    if sup is not None and not sup.alive:
        out.append(ServiceHealth("supervisor", False, "the supervisor exited", "supervisor",
                                 str(logs / "supervisor.log")))
    covered = {"supervisor"}
    redis_url = facts.get("redis_url")
    redis_ok = False
    if redis_url:
        out.append(_check("redis", lambda: probe_redis(redis_url), by_name.get("redis"), logs))
        redis_ok = out[-1].healthy
        covered.add("redis")
    if facts.get("s3_endpoint"):
        out.append(_check("s3", lambda: probe_s3(facts), by_name.get("seaweedfs"), logs))
        covered.add("seaweedfs")
    if facts.get("api_url"):
        out.append(_check("api", lambda: probe_api(facts["api_url"]), by_name.get("api"), logs))
        covered.add("api")
    if redis_url:
        out += _queue_health(redis_url, redis_ok, processes, queues, logs)
        covered |= {p.name for p in processes if p.queues}
    out += [ServiceHealth(p.name, p.alive, "alive" if p.alive else f"not running, {p.restarts} restarts",
                          p.name, str(logs / f"{p.name}.log"))
            for p in processes if p.name not in covered]
    return out


def _queue_health(redis_url: str, redis_ok: bool, processes: list[ProcessInfo], queues: tuple[str, ...],
                  logs: Path) -> list[ServiceHealth]:
    consumers: dict[str, list[str]] = {}
    error = "redis does not answer"
    if redis_ok:
        try:
            consumers, error = queue_consumers(redis_url), ""
        except Exception as e:  # noqa: BLE001
            error = f"inspect failed: {type(e).__name__}: {e}"
    out = []
    for q in queues:
        workers = consumers.get(q, [])
        detail = f"consumed by {', '.join(sorted(workers))}" if workers else error or f"no worker consumes queue {q!r}"
        proc = next((p for p in processes if q in p.queues), None)
        out.append(_health(f"queue:{q}", bool(workers), detail, proc, logs))
    return out


def wait_healthy(probe: Callable[[], list[ServiceHealth]], timeout_s: float,
                 poll_s: float = 0.5) -> list[ServiceHealth]:
    """Call `probe` until every service is healthy; `StackNotReady` with the failing ones after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        report = probe()
        failing = [h for h in report if not h.healthy]
        if not failing:
            return report
        if time.monotonic() >= deadline:
            raise StackNotReady(timeout_s, failing)
        time.sleep(poll_s)


__all__ = ["ServiceHealth", "StackNotReady", "probe_stack", "redacted", "wait_healthy"]
