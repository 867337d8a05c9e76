"""A real local stack for integration tests: own Redis (AOF) and SeaweedFS on free ports, the API
and one Celery worker per queue as processes, under the stack supervisor; and the finished tiny job
the integration, UI, CLI and export tests share (fixtures `stack` and `tiny_job` in tests/conftest.py)."""

from __future__ import annotations

import math
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from devstack.procs import ProcessSpec, free_port
from devstack.stack import default_specs, stack_status, stack_up
from services.jobspec import JobSpec
from services.queue import QUEUES
from services.records import PairRecord
from services.settings import Settings
from services.state.redis import RedisJobStore
from services.state.tokens import TokenStore
from services.storage import S3Store
from services.telemetry import Telemetry
from tests.infra import kill_stack
from workers import keys
from workers.flow import JobFlow

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
            jf = JobFlow.of(JobSpec.model_validate(job.spec))
            committed = state.committed_units(job_id)
            return (f"status {job.status.value}; counts {state.get_counts(job_id)}; "
                    f"{len(committed)} units committed; outstanding {[t.unit for t in jf.outstanding(committed)]}; "
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


def wait_for(fn: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.2) -> Any:
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
def running_stack(root: Path, env: dict[str, str] | None = None, host: str = "127.0.0.1",
                  plan: Callable[[list[ProcessSpec]], list[ProcessSpec]] | None = None) -> Iterator[Stack]:
    """Start a stack in `root`; `env` adds to STACK_ENV, `host` is where Redis and S3 listen,
    `plan` may rewrite the process list (e.g. run workers elsewhere)."""
    # The stack's settings go to its processes only: several stacks may be alive at once in a
    # test session, so nothing here may change this process's environment.
    # report_to jobs write their tracker files into the stack's folder, not the worker's cwd (the repo)
    env = {"DFUSION_TRACKING_DIR": str(root / "tracking"), **STACK_ENV, **(env or {})}
    settings = Settings(redis_url=f"redis://{host}:{free_port()}/0", api_port=free_port(), s3_bucket="dfusion-it",
                        s3_endpoint=None if host == "127.0.0.1" else f"{host}:{free_port(grpc_pair=True)}")
    try:
        specs, facts = default_specs(settings, root)
        specs = [replace(spec, env={**env, **spec.env}) for spec in specs]
        stack_up(settings, root, specs=plan(specs) if plan else specs)
        wait_for(lambda: httpx.get(f"{facts['api_url']}/healthz", timeout=5).status_code == 200, 120, "API healthy")
        token = TokenStore.from_url(facts["redis_url"]).create("alice")
        yield Stack(root, settings, facts, token)
    finally:
        kill_stack(root)


# --- the shared finished job --------------------------------------------------------------------

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


@dataclass
class FinishedJob:
    """A job that ran to the end on the stack, with its records as the API lists them."""

    id: str
    job: dict[str, Any]
    pairs: list[dict[str, Any]]
    samples: list[dict[str, Any]]
    checkpoints: list[dict[str, Any]]


def finish_job(stack: Stack, spec: dict[str, Any], timeout_s: float = 600, job_id: str | None = None) -> FinishedJob:
    """Submit `spec` (unless `job_id` says it was submitted already), wait until it ends (succeeded,
    or fail here), and fetch its records."""
    job_id = job_id or stack.submit(spec)
    job = stack.wait_job(job_id, timeout_s)
    assert job["status"] == "succeeded", job
    with stack.client() as c:
        data = {k: c.get(f"/v1/jobs/{job_id}/{k}").json()["data"] for k in ("pairs", "samples", "checkpoints")}
    return FinishedJob(job_id, job, **data)


# --- fault injection and exact-output checks (tests/reliability) ------------------------------

#: A model name the workers and API know whose folder does not exist (a permanent failure).
BROKEN_MODELS = {"broken": "/nonexistent/dfusion-model"}


def small_job(samples: int = 8, epochs: int = 1, batch: int = 2, **over: Any) -> dict[str, Any]:
    """1 prompt x `samples` x `epochs`, `batch` samples per sample/fuse task: several short tasks."""
    spec = {
        "prompts": [{"text": "a cat eating a sandwich", "items": ["cat", "sandwich"], "mask_thresholds": [0.03, 0.005]}],
        "model": "tiny", "samples_per_prompt": samples, "epochs": epochs,
        "sampling": {"num_steps": 4, "batch_size": batch}, "seed": 11,
        "eval_prompts": ["a horse"], "eval_seeds": 1,
    }
    return {**spec, **over}


# --- task events from the worker logs ----------------------------------------------------------

# Celery's format "[ts: INFO/ForkPoolWorker-1] msg" or workers.telemetry's "ts INFO name [job=.. task=..]: msg"
_EVENT = re.compile(
    r"^\[?(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\b[^\n\]]*\]:? "
    r"(?P<task>dfusion\.\w+) (?:(?P<kw>\{[^}]*\}) (?P<ev>start|done)|(?P<end>failed permanently|transient failure))",
    re.M,
)


@dataclass(frozen=True)
class Event:
    ts: float  # wall-clock seconds (the log's local time)
    task: str  # dfusion.sample, ...
    kwargs: str  # "{'epoch': 0, 'prompt': 0, 'batch': 1}" ('' for failure lines)
    kind: str  # start | done | failed | retry


def task_events(stack: Stack, worker: str, offset: int) -> list[Event]:
    out = []
    for m in _EVENT.finditer(stack.log_since(worker, offset)):
        ts = datetime.strptime(m["ts"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        kind = m["ev"] or ("failed" if m["end"].startswith("failed") else "retry")
        out.append(Event(ts, m["task"], m["kw"] or "", kind))
    return out


def running_task(stack: Stack, worker: str, offset: int) -> Event | None:
    """The start event of the task the worker is executing now (its last event is a start)."""
    events = task_events(stack, worker, offset)
    return events[-1] if events and events[-1].kind == "start" else None


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, sig)


def freeze_mid_task(stack: Stack, worker: str, offset: int, task: str | None = None, whole_worker: bool = False,
                    timeout_s: float = 180) -> tuple[Event, list[int]]:
    """SIGSTOP the worker's pool process (with `whole_worker`, the main process too) while it runs a
    task (a `task` one, if given); returns that task's start event and the frozen pids.

    The log is re-read once they are frozen, so the caller's next move provably lands mid-task.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ev = running_task(stack, worker, offset)
        children = stack.pool_children(worker)
        if ev is None or (task is not None and ev.task != task) or not children:
            time.sleep(0.02)
            continue
        victims = [stack.processes()[worker].pid, *children] if whole_worker else children
        signal_all(victims, signal.SIGSTOP)
        if running_task(stack, worker, offset) == ev:  # still mid-task while frozen
            return ev, victims
        signal_all(victims, signal.SIGCONT)
        time.sleep(0.02)
    raise TimeoutError(f"{worker} never ran {task or 'a task'} within {timeout_s}s")


def kill_mid_task(stack: Stack, worker: str, task: str, offset: int, whole_worker: bool) -> tuple[Event, float]:
    """SIGKILL the worker's pool process (or the whole worker) mid-`task`; returns its start and the kill time."""
    ev, victims = freeze_mid_task(stack, worker, offset, task, whole_worker)
    signal_all(victims, signal.SIGKILL)
    return ev, time.time()


def restart_delay(stack: Stack, worker: str, ev: Event, killed_at: float, offset: int, timeout_s: float = 120) -> float:
    """Seconds from the kill until the killed task started again."""
    def again() -> Event | None:
        return next((e for e in task_events(stack, worker, offset)
                     if e.kind == "start" and e.task == ev.task and e.kwargs == ev.kwargs and e.ts > killed_at - 0.5
                     and e.ts > ev.ts), None)
    return wait_for(again, timeout_s, f"{ev.task} {ev.kwargs} to start again", poll_s=0.2).ts - killed_at


# --- the exact outputs of a job ----------------------------------------------------------------

def steps_per_epoch(spec: JobSpec, kept: int) -> int:
    """Optimizer steps train(e) takes on `kept` pairs (those the pair filter kept)."""
    if kept == 0:
        return 0
    if spec.training.steps_per_epoch is not None:
        return spec.training.steps_per_epoch
    return math.ceil(kept / (spec.training.batch_pairs * spec.training.grad_accum)) * spec.training.inner_epochs


def kept_per_epoch(state: RedisJobStore, job_id: str, spec: JobSpec) -> list[int]:
    """Pairs per epoch that the train stage marked `trained` (all pairs carry the flag once trained)."""
    pairs = [PairRecord.load(r) for r in state.list_pairs(job_id).values()]
    assert all(p.trained is not None and p.target_score is not None for p in pairs), "a pair was never trained"
    return [sum(1 for p in pairs if p.epoch == e and p.trained) for e in range(spec.epochs)]


def expected_keys(job_id: str, spec: JobSpec, kept: list[int]) -> set[str]:
    """Every object a successful job stores; trainer state versions count optimizer steps."""
    from dfusion_core.checkpoint import STATE_NAME, WEIGHTS_NAME

    n_pairs = spec.expected_counts().pairs_per_prompt
    out, version = set(), 0
    for e in range(spec.epochs):
        for p in range(len(spec.prompts)):
            for i in range(spec.samples_per_prompt):
                sid = keys.sample_id(e, p, i)
                out |= {keys.trajectory_key(job_id, sid), keys.image_key(job_id, sid)}
            for k in range(n_pairs):
                pid = keys.pair_id(e, p, k)
                out |= {keys.target_key(job_id, pid), keys.target_image_key(job_id, pid), keys.mask_key(job_id, pid)}
        version += steps_per_epoch(spec, kept[e])
        unit = keys.trainer_state_prefix(job_id, e)
        out |= {f"{unit}/metrics.json", f"{unit}/{version}/{WEIGHTS_NAME}", f"{unit}/{version}/{STATE_NAME}"}
        out.add(keys.checkpoint_key(job_id, e + 1))
    return out


def assert_exact_outputs(stack: Stack, job_id: str, spec_dict: dict[str, Any]) -> None:
    """Succeeded with exactly the expected samples, pairs, steps, checkpoints and objects: nothing
    missing, nothing twice, every training step applied once (trainer versions have no gaps)."""
    spec = JobSpec.model_validate(spec_dict)
    state = stack.state()
    job = state.get_job(job_id)
    assert job.status.value == "succeeded", (job.status, job.error)
    n, pairs_per_prompt = spec.samples_per_prompt, spec.expected_counts().pairs_per_prompt
    units = [(e, p) for e in range(spec.epochs) for p in range(len(spec.prompts))]
    assert set(state.list_samples(job_id)) == {keys.sample_id(e, p, i) for e, p in units for i in range(n)}
    assert set(state.list_pairs(job_id)) == {keys.pair_id(e, p, k) for e, p in units for k in range(pairs_per_prompt)}
    kept = kept_per_epoch(state, job_id, spec)
    metrics = state.get_metrics(job_id)
    assert [m["pairs_trained"] for m in metrics] == kept
    assert [m["optimizer_steps"] for m in metrics] == [steps_per_epoch(spec, k) for k in kept]
    steps = sum(m["optimizer_steps"] for m in metrics)
    assert state.get_counts(job_id) == {**spec.expected_counts().total, "trained_steps": steps}
    assert [c["version"] for c in state.list_checkpoints(job_id)] == list(range(1, spec.epochs + 1))
    assert state.policy_version(job_id) == spec.epochs
    assert set(stack.store().list(keys.job_prefix(job_id))) == expected_keys(job_id, spec, kept)
