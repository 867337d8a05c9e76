"""CPU: what the queue costs. The same tiny job embedded (one process, local files) and on the
local stack (Redis broker, SeaweedFS S3, one worker process per stage), timed end to end.

    .venv/bin/python bench/overhead.py [--prompts 4] [--samples 8] [--steps 20] [--worker-threads 1]
        [--concurrency sample=2,fuse=2] [--stage-threads train=2]

Last line: JSON with ratio_stack_over_embedded (wall time, submit -> succeeded, after a warm-up
job) and median_task_overhead_ms (per task: publish -> start latency counted from when its
worker was free, plus object-store I/O time; recorded by workers/telemetry.py).

`--worker-threads` sets each stack worker's torch threads (default 1: four workers share the
cores). Two, so that the one worker computing while the stages of an epoch wait on each other would
use both cores, made it worse on 2 cores (ratio 1.91, bench/RESULTS.md): the stages overlap enough
that eight threads on two cores thrash.

`--concurrency` and `--stage-threads` place compute per stage instead, as a user of the local stack
would on a small box (`DFUSION_WORKER_CONCURRENCY` / `DFUSION_WORKER_THREADS`, services/settings.py):
`stage=N,...` gives the named stages' workers N prefork children (celery -c), respectively N torch
threads per child, over `--worker-threads` (stages: sample, score, fuse, train). The stages of an
epoch wait on each other (4 sample tasks, then 4 score, 4 fuse, 4 score_targets, 1 train), so a
stage with several tasks at once may use the cores the waiting stages leave idle. The last line
records both (`worker_concurrency`, `stage_threads`; empty: the default, one child per worker).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from devstack.harness import running_stack  # noqa: E402
from dfusion_core.evaluation import load_prompts  # noqa: E402
from services.jobspec import JobSpec  # noqa: E402
from services.settings import Settings  # noqa: E402
from services.telemetry import Telemetry  # noqa: E402
from workers.embedded import run_embedded  # noqa: E402


def job(prompts: int, samples: int, steps: int) -> dict:
    rows = [r for r in load_prompts(split="train") if r.items][:prompts]
    return {"prompts": [{"text": r.text, "items": list(r.items), "mask_thresholds": list(r.mask_thresholds)}
                        for r in rows],
            "samples_per_prompt": samples, "epochs": 1, "sampling": {"num_steps": steps},
            "eval_prompts": [rows[0].text], "eval_seeds": 1}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--worker-threads", type=int, default=1, help="torch threads per stack worker")
    ap.add_argument("--concurrency", default="", metavar="STAGE=N,...",
                    help="prefork children of the named stages' stack workers (default 1 each)")
    ap.add_argument("--stage-threads", default="", metavar="STAGE=N,...",
                    help="torch threads per child of the named stages' stack workers (default --worker-threads)")
    args = ap.parse_args()
    try:  # checked before the embedded half runs
        placement = Settings(worker_concurrency=args.concurrency, worker_threads=args.stage_threads)
    except ValidationError as e:
        ap.error(f"--concurrency / --stage-threads: {e}")
    body = job(args.prompts, args.samples, args.steps)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = run_embedded(JobSpec.model_validate(body), Path(tmp) / "embedded")
        embedded_s = time.perf_counter() - t0
        assert result.status == "succeeded", result.error
        print(f"embedded: {embedded_s:.1f} s", file=sys.stderr)

        threads = {"DFUSION_TORCH_THREADS": str(args.worker_threads)}
        with running_stack(Path(tmp) / "stack", env=threads, worker_concurrency=placement.worker_concurrency,
                           worker_threads=placement.worker_threads) as stack, stack.client() as client:
            warm = client.post("/v1/jobs", json={**job(1, 4, 2), "eval_seeds": 1}).json()["id"]
            stack.wait_job(warm)
            Telemetry.from_url(stack.facts["redis_url"]).r.delete("dfusion:telemetry:overhead")
            t0 = time.perf_counter()
            job_id = client.post("/v1/jobs", json=body).json()["id"]
            while client.get(f"/v1/jobs/{job_id}").json()["status"] not in ("succeeded", "failed", "cancelled"):
                time.sleep(0.1)
            stack_s = time.perf_counter() - t0
            final = client.get(f"/v1/jobs/{job_id}").json()
            assert final["status"] == "succeeded", final
            rows = Telemetry.from_url(stack.facts["redis_url"]).overheads()
    print(f"stack: {stack_s:.1f} s over {len(rows)} tasks", file=sys.stderr)
    per_task = [1000 * (r["queue_s"] + r["storage_s"]) for r in rows]
    by_stage = {s: statistics.median(1000 * (r["queue_s"] + r["storage_s"]) for r in rows if r["stage"] == s)
                for s in sorted({r["stage"] for r in rows})}
    print(json.dumps({
        "worker_threads": args.worker_threads, "worker_concurrency": placement.worker_concurrency,
        "stage_threads": placement.worker_threads, "embedded_threads": torch.get_num_threads(),
        "embedded_s": round(embedded_s, 2), "stack_s": round(stack_s, 2),
        "ratio_stack_over_embedded": round(stack_s / embedded_s, 3),
        "tasks": len(rows),
        "median_task_overhead_ms": round(statistics.median(per_task), 1) if per_task else None,
        "median_queue_ms": round(statistics.median(1000 * r["queue_s"] for r in rows), 1) if rows else None,
        "median_storage_ms": round(statistics.median(1000 * r["storage_s"] for r in rows), 1) if rows else None,
        "median_overhead_ms_by_stage": {k: round(v, 1) for k, v in by_stage.items()},
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
