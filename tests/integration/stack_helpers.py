"""A real local stack for integration tests: own Redis (AOF) and SeaweedFS on free ports, the API
and one Celery worker per queue as processes, under the stack supervisor."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from services.procs import free_port
from services.settings import Settings
from services.stack import stack_down, stack_facts, stack_status, stack_up
from services.state import JobState
from services.storage import S3Store

# Settings the stack's processes read from the environment they inherit.
STACK_ENV = {
    "DFUSION_TORCH_THREADS": "1",  # four workers share two cores
    "DFUSION_VISIBILITY_TIMEOUT_S": "20",  # a dead worker's task comes back in seconds
    "DFUSION_TASK_MAX_RETRIES": "8",
    "DFUSION_AUTH_REQUIRED": "true",
    "DFUSION_MAX_BODY_BYTES": str(1 << 20),
}


@dataclass
class Stack:
    root: Path
    settings: Settings
    facts: dict[str, Any]
    token: str

    @property
    def api(self) -> str:
        return self.facts["api_url"]

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.api, timeout=30,
                            headers={"Authorization": f"Bearer {token or self.token}"})

    def state(self) -> JobState:
        return JobState.from_url(self.facts["redis_url"])

    def store(self) -> S3Store:
        return S3Store(self.facts["s3_endpoint"], self.facts["s3_access_key"], self.facts["s3_secret_key"],
                       self.facts["s3_bucket"])

    def processes(self) -> dict[str, Any]:
        return {p.name: p for p in stack_status(self.root)}

    def wait_job(self, job_id: str, timeout_s: float = 600) -> dict[str, Any]:
        with self.client() as c:
            return wait_for(lambda: _terminal(c.get(f"/v1/jobs/{job_id}").json()), timeout_s, f"job {job_id}")


def _terminal(job: dict[str, Any]) -> dict[str, Any] | None:
    return job if job.get("status") in ("succeeded", "failed", "cancelled") else None


def wait_for(fn: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = fn()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling through transient errors
            last_exc = exc
        time.sleep(poll_s)
    raise TimeoutError(f"timed out waiting for {what} ({last_exc!r})")


@contextmanager
def running_stack(root: Path) -> Iterator[Stack]:
    saved = {k: os.environ.get(k) for k in STACK_ENV}
    os.environ.update(STACK_ENV)
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", api_port=free_port(),
                        s3_bucket="dfusion-it")
    try:
        stack_up(settings, root)
        facts = stack_facts(root)
        wait_for(lambda: httpx.get(f"{facts['api_url']}/healthz", timeout=5).status_code == 200, 120, "API healthy")
        token = JobState.from_url(facts["redis_url"]).create_token("alice")
        yield Stack(root, settings, facts, token)
    finally:
        stack_down(root, grace_s=5.0)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
