"""A throwaway local stack to drive, for the integration tests and the benches: `running_stack`
starts its own Redis (AOF) and SeaweedFS on free ports, the API and one Celery worker per queue
(one prefork child each unless placed otherwise) as processes under the stack supervisor
(`devstack.stack`), and kills it all on exit (`stack_kill`);
`Stack` is its handle (API clients, the job state, the object store, its processes and their logs).
`TINY_JOB` is the smallest job that runs every stage twice.

Knows the stack's processes and the services' stores, not the workers' code: what a job's exact
outputs are is `workers.audit`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from devstack.plan import default_specs
from devstack.procs import ProcessSpec, free_port, wait_for
from devstack.stack import stack_kill, stack_status, stack_up
from services.jobspec import JobSpec
from services.queue import QUEUES
from services.settings import Settings
from services.state.redis import RedisJobStore
from services.state.tokens import TokenStore
from services.storage import S3Store
from services.telemetry import Telemetry

# Settings the stack's processes read from the environment they inherit.
STACK_ENV = {
    "DFUSION_TORCH_THREADS": "1",  # four workers share two cores
    "DFUSION_VISIBILITY_TIMEOUT_S": "21600",  # as deployed: leases, not the timeout, bring a dead worker's task back
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

    def state(self) -> RedisJobStore:
        return RedisJobStore.from_url(self.facts["redis_url"])

    def tokens(self) -> TokenStore:
        return TokenStore.from_url(self.facts["redis_url"])

    def store(self) -> S3Store:
        return S3Store(self.facts["s3_endpoint"], self.facts["s3_access_key"], self.facts["s3_secret_key"],
                       self.facts["s3_bucket"])

    def processes(self) -> dict[str, Any]:
        return {p.name: p for p in stack_status(self.root)}

    def wait_job(self, job_id: str, timeout_s: float = 600) -> dict[str, Any]:
        with self.client() as c:
            try:
                return wait_for(lambda: _terminal(c.get(f"/v1/jobs/{job_id}").json()), timeout_s, f"job {job_id}")
            except TimeoutError as e:
                raise TimeoutError(f"{e}\n{self.describe(job_id)}") from None

    def describe(self, job_id: str) -> str:
        """Where a job stands, for a timeout's message: a CI log is all there is to read afterwards."""
        try:
            state = self.state()
            job = state.get_job(job_id)
            expected = JobSpec.model_validate(job.spec).expected_counts().total
            return (f"status {job.status.value}; counts {state.get_counts(job_id)}, when done {expected}; "
                    f"{len(state.committed_units(job_id))} units committed; "
                    f"running {[lease.unit for lease in state.leases(job_id)]}; "
                    f"queued {Telemetry(state.r).queue_depths(QUEUES)}; unacked {state.r.hlen('unacked')}; "
                    f"processes {[(p.name, p.alive, p.restarts) for p in stack_status(self.root)]}")
        except Exception as e:  # noqa: BLE001 - the timeout is the failure to report
            return f"(no description: {e!r})"

    def submit(self, spec: dict[str, Any]) -> str:
        with self.client() as c:
            r = c.post("/v1/jobs", json=spec)
        assert r.status_code == 202, r.text
        return r.json()["id"]

    def log(self, name: str) -> Path:
        """The log file of a managed process (`worker-sample`, `redis`, ...)."""
        return self.root / "logs" / f"{name}.log"

    def log_size(self, name: str) -> int:
        path = self.log(name)
        return path.stat().st_size if path.exists() else 0

    def log_since(self, name: str, offset: int) -> str:
        with open(self.log(name), "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def pool_children(self, name: str) -> list[int]:
        """Pids of the direct children of a managed process (a Celery worker's pool processes)."""
        pid = self.processes()[name].pid
        try:
            return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            return []


def _terminal(job: dict[str, Any]) -> dict[str, Any] | None:
    return job if job.get("status") in ("succeeded", "failed", "cancelled") else None


@contextmanager
def running_stack(root: Path, env: dict[str, str] | None = None, host: str = "127.0.0.1",
                  plan: Callable[[list[ProcessSpec]], list[ProcessSpec]] | None = None,
                  worker_concurrency: Mapping[str, int] | None = None,
                  worker_threads: Mapping[str, int] | None = None) -> Iterator[Stack]:
    """Start a stack in `root`; `env` adds to STACK_ENV, `host` is where Redis and S3 listen,
    `plan` may rewrite the process list (e.g. run workers elsewhere: `devstack.netns.workers_on`),
    `worker_concurrency` / `worker_threads` place the stage workers (`Settings`; default one child
    on DFUSION_TORCH_THREADS threads each)."""
    # The stack's settings go to its processes only: several stacks may be alive at once in a
    # test session, so nothing here may change this process's environment.
    # report_to jobs write their tracker files into the stack's folder, not the worker's cwd (the repo)
    env = {"DFUSION_TRACKING_DIR": str(root / "tracking"), **STACK_ENV, **(env or {})}
    settings = Settings(redis_url=f"redis://{host}:{free_port()}/0", api_port=free_port(), s3_bucket="dfusion-it",
                        s3_endpoint=None if host == "127.0.0.1" else f"{host}:{free_port(grpc_pair=True)}",
                        worker_concurrency=dict(worker_concurrency or {}), worker_threads=dict(worker_threads or {}))
    try:
        specs, facts = default_specs(settings, root)
        specs = [replace(spec, env={**env, **spec.env}) for spec in specs]
        stack_up(settings, root, specs=plan(specs) if plan else specs)
        wait_for(lambda: httpx.get(f"{facts['api_url']}/healthz", timeout=5).status_code == 200, 120, "API healthy")
        token = TokenStore.from_url(facts["redis_url"]).create("alice")
        yield Stack(root, settings, facts, token)
    finally:
        stack_kill(root)


#: 2 prompts x 4 samples x 2 epochs, 4 DDIM steps: every stage twice, a policy version per epoch.
TINY_JOB: dict[str, Any] = {
    "prompts": [
        {"text": "a cat eating a sandwich", "items": ["cat", "sandwich"], "mask_thresholds": [0.03, 0.005]},
        {"text": "a red and woolen dog", "items": ["woolen", "dog"], "mask_thresholds": [0.02, 0.03]},
    ],
    "model": "tiny",
    "samples_per_prompt": 4,
    "epochs": 2,
    "sampling": {"num_steps": 4},
    "seed": 3,
    "eval_prompts": ["a horse driving a car"],
    "eval_seeds": 1,
}
