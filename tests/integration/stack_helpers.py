"""Test-only helpers on a throwaway stack (`devstack.harness`): the finished job the integration,
UI, CLI and export tests share (fixtures `stack` and `tiny_job` in tests/conftest.py), small jobs,
task events from the worker logs, and kills mid-task for the reliability tests. The exact-output
check they end with is `workers.audit.assert_exact_outputs`."""

from __future__ import annotations

import re
import signal
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from devstack.harness import Stack
from devstack.procs import signal_all, wait_for

# --- the shared finished job --------------------------------------------------------------------

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


# --- fault injection (tests/reliability) ------------------------------------------------------

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
