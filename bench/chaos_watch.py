"""What bench/chaos.py watches while faults land, and how it judges each job afterwards.

`Watch` polls the stack from a thread: every 0.5 s whether every process is alive and how many
units all jobs have committed (a fault's recovery is read off that timeline); every 5 s each job's
committed units and policy version (a commit that vanishes, a version that goes back) and the ETag of
every object under jobs/ (an object rewritten with other bytes). The checks after the soak reuse the
reliability suite's exact-output check (workers.audit.assert_exact_outputs).
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from devstack.harness import Stack
from services.jobspec import JobSpec
from services.queue import QUEUES
from services.state import keys
from services.telemetry import Telemetry
from workers.audit import assert_exact_outputs

TERMINAL = ("succeeded", "failed", "cancelled")
# workers.telemetry's text format; "done" is logged once a unit's stage ran and its commit returned
_DONE = re.compile(r"\[job=(?P<job>\w+) task=[^\]]*\]: (?P<task>dfusion\.\w+) (?P<kw>\{[^}]*\}) done$", re.M)


@dataclass
class Sample:
    t: float
    healthy: bool
    committed: int  # units committed over all jobs
    active: int  # jobs not yet terminal
    down: tuple[str, ...] = ()  # processes not alive


@dataclass
class Watch:
    stack: Stack
    jobs: list[str] = field(default_factory=list)
    timeline: list[Sample] = field(default_factory=list)
    units: dict[str, set[str]] = field(default_factory=dict)  # job -> units seen committed
    versions: dict[str, int] = field(default_factory=dict)
    etags: dict[str, str] = field(default_factory=dict)
    rewritten: list[str] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    regressions: list[str] = field(default_factory=list)
    status: dict[str, str] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)  # what the polls met (Redis or S3 down)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._state, self._store = self.stack.state(), self.stack.store()
        self._threads = [threading.Thread(target=self._loop, args=(fn, s), daemon=True)
                         for fn, s in ((self._progress, 0.5), (self._consistency, 5.0))]

    def add(self, job_id: str) -> None:
        self.jobs.append(job_id)

    def terminal(self, job_id: str) -> bool:
        return self.status.get(job_id) in TERMINAL

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)
        self._consistency()  # a last look, with every fault over

    def _loop(self, fn: Any, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - Redis or S3 is down: the fault being watched
                self.errors[f"{fn.__name__}: {type(e).__name__}"] += 1

    def _progress(self) -> None:
        down = tuple(sorted(n for n, p in self.stack.processes().items() if not p.alive))
        r = self._state.r
        jobs = list(self.jobs)
        pipe = r.pipeline(transaction=False)
        for j in jobs:
            pipe.scard(keys.job(j, "units"))
            pipe.hget(keys.job(j), "status")
        out = pipe.execute()
        for j, s in zip(jobs, out[1::2], strict=True):
            if s:
                self.status[j] = s
        self.timeline.append(Sample(time.time(), not down, sum(out[0::2]), sum(s not in TERMINAL for s in out[1::2]),
                                    down))

    def _consistency(self) -> None:
        state = self._state
        for j in list(self.jobs):
            units = state.committed_units(j)
            if gone := self.units.get(j, set()) - units:
                self.vanished += [f"{j}:{u}" for u in sorted(gone)]
            self.units[j] = self.units.get(j, set()) | units
            v = state.policy_version(j)
            if v < self.versions.get(j, 0):
                self.regressions.append(f"{j}: policy version {self.versions[j]} -> {v}")
            self.versions[j] = max(v, self.versions.get(j, 0))
        store = self._store
        for o in store._client.list_objects(store.bucket, prefix="jobs/", recursive=True):
            seen = self.etags.setdefault(o.object_name, o.etag)
            if seen != o.etag and o.object_name not in self.rewritten:
                self.rewritten.append(o.object_name)

    def why_slow(self, end: float, until: float) -> str:
        """What the polls saw between `end` and `until`: processes down, committed units."""
        seen = [s for s in self.timeline if end <= s.t <= until]
        down = sorted({n for s in seen for n in s.down})
        units = [s.committed for s in seen]
        return f"down {down or 'none'}, committed {units[0] if units else '?'}->{units[-1] if units else '?'}"

    def recovery(self, end: float) -> float | None:
        """Seconds from `end` (the fault over: resumed, or killed) until every process was alive and
        the committed-unit count had risen past its value at `end` (or no job was left to run);
        None if never."""
        before = [s for s in self.timeline if s.t <= end]
        base = before[-1].committed if before else 0
        for s in self.timeline:
            if s.t >= end and s.healthy and (s.committed > base or s.active == 0):
                return s.t - end
        return None


@dataclass
class Outcome:
    status: str
    counts: dict[str, int]
    problems: list[str]
    lost: bool


def verify_job(stack: Stack, job_id: str, spec_dict: dict[str, Any], expect: str) -> Outcome:
    """The job against its spec: `expect`ed terminal status, then exact outputs if it succeeded, or
    counts within the spec's and checkpoints gap-free if cancelled; no lease left either way."""
    if not job_id:
        return Outcome("-", {}, ["never submitted"], True)
    state = stack.state()
    try:
        job = state.get_job(job_id)
    except Exception as e:  # noqa: BLE001 - JobNotFound: the record itself was lost
        return Outcome("missing", {}, [f"job record gone: {e!r}"], True)
    counts, status = state.get_counts(job_id), job.status.value
    if status != expect:
        return Outcome(status, counts, [f"expected {expect}: {job.error or 'no error'}"], True)
    problems = []
    if expect == "succeeded":
        try:
            assert_exact_outputs(stack.state(), stack.store(), job_id, spec_dict)
        except AssertionError as e:
            problems.append(f"outputs: {str(e)[:400]}")
        except Exception as e:  # noqa: BLE001 - the check itself could not run: say so, go on
            problems.append(f"outputs not checked: {e!r}")
    else:
        total = JobSpec.model_validate(spec_dict).expected_counts().total
        if over := {k: v for k, v in counts.items() if k in total and v > total[k]}:
            problems.append(f"counts over the spec's {over}")
        versions = [c["version"] for c in state.list_checkpoints(job_id)]
        if versions != list(range(1, state.policy_version(job_id) + 1)):
            problems.append(f"checkpoint versions {versions} for policy version {state.policy_version(job_id)}")
    if leases := state.leases(job_id):
        problems.append(f"leases left: {[lease.unit for lease in leases]}")
    return Outcome(status, counts, problems, False)


def duplicate_units(stack: Stack) -> dict[tuple[str, str], int]:
    """(job, unit) -> times a worker computed it to the end and committed, where more than once."""
    seen: Counter[tuple[str, str]] = Counter()
    for log in sorted((stack.root / "logs").glob("worker-*.log")):
        for m in _DONE.finditer(log.read_text(errors="replace")):
            seen[(m["job"], f"{m['task']} {m['kw']}")] += 1
    return {k: n for k, n in seen.items() if n > 1}


def leftovers(stack: Stack, job_ids: list[str], wait_s: float = 90) -> dict[str, Any]:
    """What is still queued, unacked or leased once every job has ended (given `wait_s` to drain)."""
    state = stack.state()
    left: dict[str, Any] = {}
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        depths = {q: n for q, n in Telemetry(state.r).queue_depths(QUEUES).items() if n}
        leased = {j: [lease.unit for lease in state.leases(j)] for j in job_ids}
        left = {"queued": depths, "unacked": int(state.r.hlen("unacked")),
                "leased": {j: u for j, u in leased.items() if u}}
        if not (left["queued"] or left["unacked"] or left["leased"]):
            return {}
        time.sleep(2)
    return left

