"""CPU: the API under concurrent clients, on the local stack over loopback.

    .venv/bin/python bench/load.py [--clients 50] [--requests 20000] [--seed 0]

Starts the real stack (its own Redis and SeaweedFS, the API, one Celery worker per stage), runs
one tiny job to the end so there is something to read, then sends a bounded number of requests
from `--clients` concurrent asyncio clients (httpx.AsyncClient, one connection each) as three
tenants. The mix, by weight (`MIX`): job reads, lists, sample and pair pages, object downloads,
submissions of a small job (each cancelled by its client straight after, so the workers stay
near idle and the bench measures the API), and bad requests (a body that fails validation, an
unknown job, another tenant's job, a bad token).

With `--think-ms 0` the clients send back to back, so the API is saturated and every latency
includes the queue in front of it (Little's law: about clients / throughput); with a think time
the same clients make a lighter, steadier load and the latencies are the service's own.

Reports p50/p95/p99 latency per route, responses by status, and the memory of the API process
(RSS) and of Redis (`used_memory`) at the start and at the end of each quarter of the run.
Goals (issue "Faults at random, under load"): no 5xx; p99 of reads <= 50 ms and of submissions
<= 200 ms on this machine; API memory flat between the first and the last quarter. Redis grows
with every submitted job by design (its record, spec and queued work); the bench reports that
growth per submission so a leak would show as more than that. Last stdout line: JSON summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import redis  # noqa: E402

from devstack.harness import TINY_JOB, running_stack  # noqa: E402

#: route -> weight in the request mix (sums to 100)
MIX: dict[str, int] = {
    "GET /v1/jobs/{id}": 28, "GET /v1/jobs": 14, "GET /v1/jobs/{id}/pairs": 12, "GET /v1/jobs/{id}/samples": 6,
    "GET /v1/jobs/{id}/objects/{key}": 14, "POST /v1/jobs": 6, "DELETE /v1/jobs/{id}": 0,  # follows each POST
    "POST /v1/jobs (invalid)": 8, "GET /v1/jobs/{unknown}": 6, "GET /v1/jobs/{other tenant's}": 3,
    "GET /v1/jobs (bad token)": 3,
}
READS = {"GET /v1/jobs/{id}", "GET /v1/jobs", "GET /v1/jobs/{id}/pairs", "GET /v1/jobs/{id}/samples",
         "GET /v1/jobs/{id}/objects/{key}"}
TENANTS = ("alice", "bob", "carol")
GOALS_MS = {"reads_p99": 50.0, "submissions_p99": 200.0}
#: a small job: one prompt, four samples (the least a job takes), two steps (cancelled right after it is accepted)
SMALL_JOB: dict[str, Any] = {**TINY_JOB, "prompts": TINY_JOB["prompts"][:1], "samples_per_prompt": 4,
                             "epochs": 1, "sampling": {"num_steps": 2}}
INVALID_JOBS: list[dict[str, Any]] = [
    {**SMALL_JOB, "samples_per_prompt": 0},
    {**SMALL_JOB, "prompts": []},
    {**SMALL_JOB, "model": "no/such model"},
    {"prompts": "not a list"},
]


class Recorder:
    def __init__(self) -> None:
        self.ms: dict[str, list[float]] = defaultdict(list)
        self.status: dict[str, Counter[int]] = defaultdict(Counter)
        self.errors: Counter[str] = Counter()

    async def call(self, route: str, client: httpx.AsyncClient, method: str, url: str, **kw: Any) -> httpx.Response | None:
        t0 = time.perf_counter()
        try:
            r = await client.request(method, url, **kw)
            await r.aread()
        except httpx.HTTPError as e:  # a refused or dropped connection is a failure the summary shows
            self.errors[f"{route}: {type(e).__name__}"] += 1
            return None
        self.ms[route].append(1000 * (time.perf_counter() - t0))
        self.status[route][r.status_code] += 1
        return r


def memory(api_pid: int, r: redis.Redis) -> dict[str, float]:
    rss_kb = next(int(line.split()[1]) for line in Path(f"/proc/{api_pid}/status").read_text().splitlines()
                  if line.startswith("VmRSS:"))
    return {"api_rss_mb": round(rss_kb / 1024, 1), "redis_used_mb": round(int(r.info("memory")["used_memory"]) / 2**20, 2)}


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of values, or NaN when there are none."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * len(s)) - 1))]


async def load(api: str, tokens: dict[str, str], job_id: str, other_job: str, keys: list[str],
               args: argparse.Namespace, on_quarter: Any) -> Recorder:
    rec = Recorder()
    rng = random.Random(args.seed)
    routes, weights = zip(*[(k, w) for k, w in MIX.items() if w], strict=True)
    plan = rng.choices(routes, weights=weights, k=args.requests)
    quarters = {args.requests * q // 4 for q in (1, 2, 3, 4)}
    cursor = iter(range(args.requests))
    submitted: list[str] = []

    async def one(clients: dict[str, httpx.AsyncClient], i: int) -> None:
        route, client = plan[i], clients["alice"]  # the finished job and its objects are alice's
        if route == "GET /v1/jobs/{id}":
            await rec.call(route, client, "GET", f"/v1/jobs/{job_id}")
        elif route == "GET /v1/jobs":  # each tenant lists its own jobs
            await rec.call(route, clients[TENANTS[i % 3]], "GET", "/v1/jobs")
        elif route == "GET /v1/jobs/{id}/pairs":
            await rec.call(route, client, "GET", f"/v1/jobs/{job_id}/pairs")
        elif route == "GET /v1/jobs/{id}/samples":
            await rec.call(route, client, "GET", f"/v1/jobs/{job_id}/samples")
        elif route == "GET /v1/jobs/{id}/objects/{key}":
            await rec.call(route, client, "GET", f"/v1/jobs/{job_id}/objects/{keys[i % len(keys)]}")
        elif route == "POST /v1/jobs":
            tenant = clients[TENANTS[i % 3]]
            r = await rec.call(route, tenant, "POST", "/v1/jobs", json={**SMALL_JOB, "seed": i})
            if r is not None and r.status_code == 202:
                submitted.append(r.json()["id"])
                await rec.call("DELETE /v1/jobs/{id}", tenant, "DELETE", f"/v1/jobs/{r.json()['id']}")
        elif route == "POST /v1/jobs (invalid)":
            await rec.call(route, client, "POST", "/v1/jobs", json=INVALID_JOBS[i % len(INVALID_JOBS)])
        elif route == "GET /v1/jobs/{unknown}":
            await rec.call(route, client, "GET", f"/v1/jobs/{'0' * 31}{i % 10}")
        elif route == "GET /v1/jobs/{other tenant's}":
            await rec.call(route, client, "GET", f"/v1/jobs/{other_job}")
        else:
            await rec.call(route, clients["nobody"], "GET", "/v1/jobs")

    async def client_loop() -> None:
        # one connection per tenant per client, as separate users on one machine would hold
        # idle connections closed before uvicorn's 5 s keep-alive does: a request on a connection the
        # server is closing fails in transit (RemoteProtocolError), an artefact of the client
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=3.0)
        clients = {name: httpx.AsyncClient(base_url=api, headers={"Authorization": f"Bearer {token}"}, timeout=60,
                                           limits=limits)
                   for name, token in {**tokens, "nobody": "not-a-token"}.items()}
        try:
            for i in cursor:
                if args.think_ms:  # an open-ish load: each user pauses between requests (exponential)
                    await asyncio.sleep(rng.expovariate(1000 / args.think_ms))
                await one(clients, i)
                if i + 1 in quarters:
                    on_quarter(i + 1)
        finally:
            for c in clients.values():
                await c.aclose()

    t0 = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(args.clients)))
    rec.wall_s = time.perf_counter() - t0  # type: ignore[attr-defined]
    rec.submitted = submitted  # type: ignore[attr-defined]
    return rec


def summarise(rec: Recorder, mem: list[dict[str, float]], args: argparse.Namespace) -> dict[str, Any]:
    routes = {}
    for route, ms in sorted(rec.ms.items()):
        routes[route] = {"n": len(ms), "p50_ms": round(pct(ms, 0.50), 1), "p95_ms": round(pct(ms, 0.95), 1),
                         "p99_ms": round(pct(ms, 0.99), 1), "status": dict(sorted(rec.status[route].items()))}
    reads = [v for r, ms in rec.ms.items() if r in READS for v in ms]
    posts = rec.ms.get("POST /v1/jobs", [])
    n5xx = sum(n for c in rec.status.values() for s, n in c.items() if s >= 500)
    submitted = len(rec.submitted)  # type: ignore[attr-defined]
    redis_growth = mem[-1]["redis_used_mb"] - mem[0]["redis_used_mb"]
    total = sum(len(ms) for ms in rec.ms.values())
    return {
        "clients": args.clients, "think_ms": args.think_ms, "requests": total, "wall_s": round(rec.wall_s, 1),  # type: ignore[attr-defined]
        "throughput_rps": round(total / rec.wall_s, 1),  # type: ignore[attr-defined]
        "reads_p99_ms": round(pct(reads, 0.99), 1), "submissions_p99_ms": round(pct(posts, 0.99), 1),
        "errors_5xx": n5xx, "transport_errors": dict(rec.errors),
        "api_rss_mb_q1": mem[1]["api_rss_mb"], "api_rss_mb_q4": mem[4]["api_rss_mb"],
        "api_rss_growth_q1_q4_mb": round(mem[4]["api_rss_mb"] - mem[1]["api_rss_mb"], 1),
        "redis_used_mb_start": mem[0]["redis_used_mb"], "redis_used_mb_end": mem[-1]["redis_used_mb"],
        "redis_kb_per_submitted_job": round(1024 * redis_growth / submitted, 1) if submitted else None,
        "submitted_jobs": submitted, "memory": mem, "routes": routes,
        "goals": {"no_5xx": n5xx == 0, "reads_p99": pct(reads, 0.99) <= GOALS_MS["reads_p99"],
                  "submissions_p99": pct(posts, 0.99) <= GOALS_MS["submissions_p99"]},
    }


def table(summary: dict[str, Any]) -> str:
    lines = ["| route | n | p50 ms | p95 ms | p99 ms | statuses |", "|---|---:|---:|---:|---:|---|"]
    for route, r in summary["routes"].items():
        statuses = ", ".join(f"{s}: {n}" for s, n in r["status"].items())
        lines.append(f"| `{route}` | {r['n']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {statuses} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--think-ms", type=float, default=0.0,
                    help="mean pause of each client between requests; 0 = back to back (the API saturated, "
                         "so latency is queueing: clients / throughput)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, running_stack(Path(tmp) / "stack") as stack:
        tokens = {"alice": stack.token, "bob": stack.tokens().create("bob"), "carol": stack.tokens().create("carol")}
        job_id = stack.submit(TINY_JOB)
        stack.wait_job(job_id)
        with stack.client(tokens["bob"]) as bob:
            other = bob.post("/v1/jobs", json=SMALL_JOB).json()["id"]
        with stack.client() as c:
            pairs = c.get(f"/v1/jobs/{job_id}/pairs").json()["data"]
        keys = [p[k].split("/objects/", 1)[1] for p in pairs for k in ("target_image_url", "mask_url") if p.get(k)]
        r = redis.Redis.from_url(stack.facts["redis_url"])
        api_pid = stack.processes()["api"].pid
        mem = [memory(api_pid, r)]
        print(f"seed job {job_id} done; {len(keys)} object keys; loading ...", file=sys.stderr, flush=True)

        def on_quarter(done: int) -> None:
            mem.append(memory(api_pid, r))
            print(f"  {done} requests: {mem[-1]}", file=sys.stderr, flush=True)

        rec = asyncio.run(load(stack.api, tokens, job_id, other, keys, args, on_quarter))
        mem[-1] = memory(api_pid, r)
    summary = summarise(rec, mem, args)
    print(table(summary))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("routes", "memory")}))
    return summary


if __name__ == "__main__":
    main()
