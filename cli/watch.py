"""dfusion watch JOB: progress bars per stage (samples, scored, pairs, trained steps) until the job ends.

Polls GET /v1/jobs/{id}. Exit status: 0 succeeded, 1 failed or cancelled, 2 on errors (unknown
job, no API), 3 when --timeout passes first. Bars go to stderr; the final line (stdout) is
`JOB STATUS` followed by the counts, for scripts.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from cli.client import Client, add_api_arguments

STAGES = ("samples", "scored", "pairs", "trained_steps")
TERMINAL = ("succeeded", "failed", "cancelled")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="job id (as printed by `dfusion submit`)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between polls (default: 2)")
    p.add_argument("--timeout", type=float, default=None, help="give up after this many seconds (exit 3)")
    p.add_argument("--no-progress", action="store_true", help="no bars: one line per change instead")
    add_api_arguments(p)


def totals(job: dict[str, Any]) -> dict[str, int | None]:
    """Expected final count per stage, as the API derives it from the spec (JobSpec.expected_counts);
    optimizer steps are not known in advance."""
    expected = job["spec"].get("expected_counts") or {}
    return {name: expected.get(name) for name in STAGES}


def _summary(job: dict[str, Any]) -> str:
    counts = " ".join(f"{k}={job['counts'][k]}" for k in STAGES)
    err = f" error={job['error']!r}" if job.get("error") else ""
    return f"{job['id']} {job['status']} policy_version={job['policy_version']} {counts}{err}"


def _poll(client: Client, job_id: str, interval: float, timeout: float | None, on_update) -> dict[str, Any] | None:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        job = client.job(job_id)
        on_update(job)
        if job["status"] in TERMINAL:
            return job
        if deadline is not None and time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def watch(args: argparse.Namespace, job_id: str) -> int:
    interval = getattr(args, "interval", 2.0)
    timeout = getattr(args, "timeout", None)
    with Client.from_args(args) as client:
        client.job(job_id)  # an unknown job or a dead API fails here, before any bar is drawn
        if getattr(args, "no_progress", False):
            last: list[str] = []

            def line(job: dict[str, Any]) -> None:
                text = _summary(job)
                if not last or last[-1] != text:
                    last.append(text)
                    print(text, file=sys.stderr, flush=True)

            job = _poll(client, job_id, interval, timeout, line)
        else:
            job = _with_bars(client, job_id, interval, timeout)
    if job is None:
        print(f"{job_id} still running after {timeout:g}s", file=sys.stderr)
        return 3
    print(_summary(job))
    return 0 if job["status"] == "succeeded" else 1


def _with_bars(client: Client, job_id: str, interval: float, timeout: float | None) -> dict[str, Any] | None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description:>14}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as bars:
        ids: dict[str, Any] = {}
        status = bars.add_task("status: ?", total=None, start=False)

        def update(job: dict[str, Any]) -> None:
            expected = totals(job)
            for name in STAGES:
                if name not in ids:
                    ids[name] = bars.add_task(name.replace("_", " "), total=expected[name])
                done = job["counts"][name]
                bars.update(ids[name], completed=done,
                            total=expected[name] if expected[name] is not None or job["status"] not in TERMINAL
                            else done)
            bars.update(status, description=f"status: {job['status']}")

        return _poll(client, job_id, interval, timeout, update)


def run(args: argparse.Namespace) -> int:
    return watch(args, args.job)
