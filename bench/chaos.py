"""A soak under random faults: many `sim` jobs of three tenants on the local stack while a seeded
fault lands every 10-30 s; then every job is checked against what its spec implies.

    OMP_NUM_THREADS=1 nice -n 15 .venv/bin/python bench/chaos.py [--minutes 15] [--jobs 12] [--seed 0]
        [--denoiser-ms 60] [--scorer-ms 20] [--settle-minutes 15]

The stack (devstack.harness.running_stack): its own Redis (AOF, everysec), SeaweedFS,
the API and one Celery worker per queue under the stack supervisor, which restarts what dies; where
network namespaces can be made (root, iproute2), two more workers on the reliability suite's netns
"hosts" (devstack/netns.py), Redis and S3 then listening on the hosts' server
address. Otherwise the link-cut fault is left out, and the reason logged.

Jobs: `--jobs` (12 by default) of mixed sizes (2-4 prompts, 8-16 samples, 2-3 epochs, 20 steps,
fusion and LoRA training on, 2 optimizer steps an epoch so the policy version advances), round-robin
over three tenants, a third at the start and the rest submitted over the first 70% of the soak; about one in
four is cancelled 2-40 s after its submission.

Faults (bench/chaos_faults.py), one every 10-30 s, a fifth of them followed by a second within 2 s:
kill -9 of a worker (pool process or whole worker), kill -9 of Redis (the supervisor restarts it),
the object store frozen or down for 5-20 s, a host's link cut for 10-30 s.

Watched during the run: committed units, policy versions and the ETag of every object under jobs/
(every few seconds), for commits that vanish, versions that go back, objects rewritten with other
bytes. After the soak and the settle: each job's terminal state (cancelled iff its cancel was
accepted), its exact samples, pairs, trained steps, checkpoints and objects (workers.audit.
assert_exact_outputs), units computed to the end more than once (two "done" log lines for one
unit of one job), leases, queues and unacked messages left. A fault's recovery: from its end (the
store or link resumed; at once for a kill) until the stack was whole (every process alive) and the
committed-unit count rose past its value at that end. A history, then one JSON line: faults, jobs, jobs_lost, wrong_counts,
duplicate_commits, max_recovery_s (and seed, minutes, the watch counters).
A bench, not a test: never run by the suite.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.chaos_faults import Fault, chaos_stack, fault_kinds, worker_hosts  # noqa: E402
from bench.chaos_watch import Watch, duplicate_units, leftovers, verify_job  # noqa: E402
from devstack.harness import Stack  # noqa: E402

TENANTS = ("alice", "bob", "carol")
PROMPTS = [
    {"text": "a cat eating a sandwich", "items": ["cat", "sandwich"], "mask_thresholds": [0.5, 0.5]},
    {"text": "a red and woolen dog", "items": ["woolen", "dog"], "mask_thresholds": [0.5, 0.5]},
    {"text": "a horse driving a car", "items": ["horse", "car"], "mask_thresholds": [0.5, 0.5]},
    {"text": "a glass vase on a wooden table", "items": ["vase", "table"], "mask_thresholds": [0.5, 0.5]},
]
#: size -> (prompts, samples per prompt, epochs, DDIM steps, batch). With 60 ms a denoiser call, a
#: job's sampling alone is 20-60 s of waits on one worker: long enough for faults to land mid-job.
SIZES = {"small": (2, 8, 2, 20, 2), "medium": (3, 8, 3, 20, 2), "large": (4, 16, 3, 20, 4)}


def job_spec(size: str, seed: int) -> dict[str, Any]:
    prompts, samples, epochs, steps, batch = SIZES[size]
    return {"model": "sim", "prompts": PROMPTS[:prompts], "samples_per_prompt": samples, "epochs": epochs,
            "sampling": {"num_steps": steps, "batch_size": batch}, "seed": seed,
            "training": {"pair_filter": "none", "steps_per_epoch": 2},
            "eval_prompts": ["a horse"], "eval_seeds": 1}


@dataclass
class Planned:
    index: int
    tenant: str
    size: str
    submit_at: float  # seconds into the soak
    cancel_after: float | None  # seconds after submission, or never
    job_id: str = ""
    submitted: float = 0.0
    cancelled: bool | None = None  # the API accepted the cancel (202); False: it had ended (409)

    @property
    def spec(self) -> dict[str, Any]:
        return job_spec(self.size, seed=100 + self.index)


def plan_jobs(n: int, soak_s: float, rng: random.Random) -> list[Planned]:
    sizes = list(SIZES)
    first = max(1, n // 3)
    out = []
    for i in range(n):
        at = 0.0 if i < first else rng.uniform(0, 0.7 * soak_s)
        cancel = rng.uniform(2, 40) if rng.random() < 0.25 else None
        out.append(Planned(i, TENANTS[i % len(TENANTS)], sizes[i % len(sizes)], at, cancel))
    return sorted(out, key=lambda p: p.submit_at)


def _retry(fn: Any, what: str, timeout_s: float = 120) -> Any:
    """Call `fn` until it returns a response that is not a connection error or a 5xx (the API may be
    without Redis for a few seconds)."""
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        try:
            r = fn()
            if r.status_code < 500:
                return r
            last = f"{r.status_code} {r.text[:200]}"
        except Exception as e:  # noqa: BLE001 - retried
            last = repr(e)
        time.sleep(1)
    raise RuntimeError(f"{what}: no answer ({last})")


class Soak:
    def __init__(self, stack: Stack, args: argparse.Namespace, hosts: dict[str, str] | None) -> None:
        self.stack, self.args, self.hosts = stack, args, hosts
        self.rng = random.Random(args.seed)
        self.tokens = {t: (stack.token if t == "alice" else stack.tokens().create(t)) for t in TENANTS}
        self.jobs = plan_jobs(args.jobs, args.minutes * 60, random.Random(args.seed + 1))
        self.faults: list[Fault] = []
        self.threads: list[threading.Thread] = []
        self.watch = Watch(stack)
        self.t0 = time.time()

    def log(self, msg: str) -> None:
        print(f"[{time.time() - self.t0:7.1f}s] {msg}", flush=True)

    def client(self, tenant: str) -> Any:
        return self.stack.client(self.tokens[tenant])

    def submit_due(self, now: float) -> None:
        for p in self.jobs:
            if not p.job_id and now - self.t0 >= p.submit_at:
                with self.client(p.tenant) as c:
                    r = _retry(lambda c=c, p=p: c.post("/v1/jobs", json=p.spec), f"submit job {p.index}")
                assert r.status_code == 202, r.text
                p.job_id, p.submitted = r.json()["id"], time.time()
                self.watch.add(p.job_id)
                self.log(f"submitted {p.size} job {p.job_id} for {p.tenant}")

    def cancel_due(self, now: float) -> None:
        for p in self.jobs:
            if p.job_id and p.cancel_after is not None and p.cancelled is None and now - p.submitted >= p.cancel_after:
                with self.client(p.tenant) as c:
                    r = _retry(lambda c=c, p=p: c.delete(f"/v1/jobs/{p.job_id}"), f"cancel {p.job_id}")
                p.cancelled = r.status_code == 202
                self.log(f"cancel {p.job_id}: {r.status_code} ({'cancelled' if p.cancelled else r.text[:80]})")

    def inject(self, kinds: dict[str, Any]) -> None:
        names = sorted(kinds)
        first = self.rng.choice(names)
        chosen = [first]
        if self.rng.random() < 0.2:
            chosen.append(self.rng.choice([n for n in names if n != first]))
        delay = self.rng.uniform(0, 2)
        for k, name in enumerate(chosen):
            if k:
                time.sleep(delay)
            seed = self.rng.randrange(1 << 30)
            t = threading.Thread(target=self._run_fault, args=(kinds[name], seed, len(chosen) > 1), daemon=True)
            t.start()
            self.threads.append(t)

    def _run_fault(self, fn: Any, seed: int, double: bool) -> None:
        try:
            fault = fn(random.Random(seed))
        except Exception as e:  # noqa: BLE001 - a fault that could not be injected is history too
            fault = Fault("error", repr(e), time.time(), time.time())
        fault.extra["double"] = double
        self.faults.append(fault)
        self.log(f"fault {fault.kind}{' (double)' if double else ''}: {fault.detail}")

    def run(self) -> None:
        kinds = fault_kinds(self.stack, self.hosts)
        self.watch.start()
        end = self.t0 + self.args.minutes * 60
        next_fault = self.t0 + self.rng.uniform(10, 30)
        next_status = self.t0 + 60
        while time.time() < end:
            now = time.time()
            self.submit_due(now)
            self.cancel_due(now)
            if now >= next_fault:
                self.inject(kinds)
                next_fault = time.time() + self.rng.uniform(10, 30)
            if now >= next_status:
                self.log(f"jobs: {dict(Counter(self.watch.status.values()))}")
                next_status += 60
            time.sleep(0.2)
        for p in self.jobs:  # a short soak ends before some were due
            p.submit_at = 0
        self.submit_due(time.time())
        for t in self.threads:
            t.join(timeout=120)
        self.log(f"soak over: {len(self.faults)} faults; settling")

    def settle(self) -> None:
        deadline = time.time() + self.args.settle_minutes * 60
        pending = [p for p in self.jobs if p.job_id]
        while pending and time.time() < deadline:
            self.cancel_due(time.time() + 3600)  # cancels not yet sent go now
            pending = [p for p in pending if not self.watch.terminal(p.job_id)]
            time.sleep(1)
        self.watch.stop()
        for f in self.faults:
            f.recovery_s = self.watch.recovery(f.end)


def report(soak: Soak, args: argparse.Namespace) -> dict[str, Any]:
    stack = soak.stack
    print("\n== faults ==")
    for f in sorted(soak.faults, key=lambda f: f.start):
        rec = "never" if f.recovery_s is None else f"{f.recovery_s:.1f}s"
        if f.recovery_s is None or f.recovery_s > 30:
            rec += f" ({soak.watch.why_slow(f.end, f.end + (f.recovery_s or 3600))})"
        print(f"  {f.start - soak.t0:7.1f}s {f.kind:12s} {'double ' if f.extra.get('double') else ''}"
              f"{f.detail}; recovered {rec}")
    print("== jobs ==")
    lost = wrong = 0
    for p in soak.jobs:
        expect = "cancelled" if p.cancelled else "succeeded"
        outcome = verify_job(stack, p.job_id, p.spec, expect)
        lost += outcome.lost
        wrong += bool(outcome.problems) and not outcome.lost
        print(f"  {p.job_id} {p.tenant:5s} {p.size:6s} expected {expect:9s} got {outcome.status:9s} "
              f"{outcome.counts} {'; '.join(outcome.problems) or 'ok'}")
    dups = duplicate_units(stack)
    for (job, unit), n in sorted(dups.items()):
        print(f"  duplicate commit: {unit} of job {job} computed to the end {n} times")
    left = leftovers(stack, [p.job_id for p in soak.jobs if p.job_id])
    print(f"== left behind: {left or 'nothing'}")
    tl = soak.watch.timeline
    print(f"== watch: {len(tl)} polls, {sum(s.healthy for s in tl)} healthy, committed units "
          f"{tl[-1].committed if tl else 0}; poll errors {dict(soak.watch.errors)}")
    recoveries = [f.recovery_s for f in soak.faults if f.recovery_s is not None]
    return {"faults": len(soak.faults), "jobs": len(soak.jobs), "jobs_lost": lost, "wrong_counts": wrong,
            "duplicate_commits": sum(n - 1 for n in dups.values()),
            "max_recovery_s": round(max(recoveries), 1) if recoveries else None,
            "unrecovered_faults": sum(f.recovery_s is None for f in soak.faults),
            "rewritten_objects": len(soak.watch.rewritten), "vanished_commits": len(soak.watch.vanished),
            "policy_regressions": len(soak.watch.regressions), "left_behind": left,
            "fault_kinds": sorted({f.kind for f in soak.faults}), "seed": args.seed, "minutes": args.minutes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=15)
    ap.add_argument("--jobs", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--denoiser-ms", type=float, default=60)
    ap.add_argument("--scorer-ms", type=float, default=20)
    ap.add_argument("--settle-minutes", type=float, default=15)
    args = ap.parse_args()
    # a stop (SIGTERM, or SIGINT, which a background shell ignores) unwinds: the stack and the netns
    # hosts are torn down by their context managers
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    env = {"DFUSION_SIM_DENOISER_MS": str(args.denoiser_ms), "DFUSION_SIM_SCORER_MS": str(args.scorer_ms),
           "DFUSION_MAX_CONCURRENT_JOBS_PER_TENANT": str(args.jobs)}
    root = Path(tempfile.mkdtemp(prefix="dfusion-chaos-"))
    print(f"chaos soak: seed {args.seed}, {args.minutes} min, {args.jobs} jobs; stack in {root}", flush=True)
    with worker_hosts() as (hosts, why):
        print(f"netns hosts: {sorted(hosts) if hosts else 'none, link cuts skipped: ' + why}", flush=True)
        with chaos_stack(root / "stack", env, hosts) as stack:
            soak = Soak(stack, args, hosts)
            soak.run()
            soak.settle()
            summary = report(soak, args)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
