"""Scale, measured with the `sim` model: the queue's coordination cost as worker slots grow.

    .venv/bin/python bench/scale.py [--prompts 240] [--samples 8] [--steps 20] [--slots 1,2,4,8,16,32]
                                    [--concurrent 1,10] [--out bench/results/scale] [--slots-only]

Each slot is one Celery worker process consuming every stage queue, on a fresh local stack (Redis,
SeaweedFS, the API). The sim model waits `--denoiser-ms` per denoiser call and `--scorer-ms` per
scorer call with time.sleep, so the waits are known exactly and the rest of the wall time is the
system's: broker, Redis state, object store, fan-in, sweeps (and, on a small machine, the sim's own
millisecond or so of CPU a call, which 32 slots on 2 cores do feel).

Per slot count, over the job's parallel phase (submit -> every pair target-scored, when the one
train task of the epoch is enqueued; training is one unit and runs on one slot whatever the count),
which starts once every slot consumes every queue and has loaded its model (`warm`):
- ideal_s: the phase's waits (sample batches x steps x denoiser + fuse chunks x (steps + 1) x
  denoiser + (sample batches + fuse chunks) x scorer), the time one slot would take with free
  coordination; efficiency = ideal_s / (slots x measured seconds);
- redis_cmds_per_task (INFO commandstats, every client: workers, API, this script's polls) and
  object-store bytes per task (the job's objects at the end);
- cpu_ms_per_prompt: the CPU each role of the stack (workers, object store, redis, api) spent over
  the phase, per prompt, and cpu_busy, the share of the machine's cores that was. The last line's
  sim_compute_ms is the sim model's own CPU for one prompt (a sample batch and a fuse chunk, waits
  off, one thread, in this process), a part of what the workers spend.
Then the same per-task Redis cost with 1 and with 10 concurrent jobs (`--concurrent-slots`), and
the small-job slowdown: a 1-prompt job submitted while the big job samples, against the same job on
an idle stack. Last line: JSON with efficiency_by_slots, max_slots_at_90pct, redis_cmds_per_task
({"1": x, "10": y}) and small_job_slowdown. An SVG of efficiency against slots goes to --out.
A bench, not a test: never run by the suite.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devstack.harness import Stack, running_stack  # noqa: E402
from devstack.procs import wait_for  # noqa: E402
from dfusion_core.evaluation import load_prompts  # noqa: E402
from services.jobspec import JobSpec  # noqa: E402
from services.queue import QUEUES, worker_command  # noqa: E402
from workers.flow import PAIRS_SCORED, JobFlow  # noqa: E402
from workers.keys import job_prefix  # noqa: E402


def job(prompts: int, samples: int, steps: int, seed: int = 0, train_steps: int = 4) -> dict[str, Any]:
    rows = [r for r in load_prompts(split="train") if r.items]
    rows = [rows[i % len(rows)] for i in range(prompts)]
    return {"model": "sim", "prompts": [{"text": r.text, "items": list(r.items),
                                         "mask_thresholds": list(r.mask_thresholds)} for r in rows],
            "samples_per_prompt": samples, "epochs": 1, "sampling": {"num_steps": steps}, "seed": seed,
            "training": {"steps_per_epoch": train_steps}, "eval_prompts": [rows[0].text], "eval_seeds": 1}


def ideal_parallel_s(spec: dict[str, Any], denoiser_s: float, scorer_s: float) -> float:
    flow = JobFlow.of(JobSpec.model_validate(spec))
    steps = int(spec["sampling"]["num_steps"])
    per_prompt = (flow.batches * (steps * denoiser_s + scorer_s)
                  + flow.chunks * ((steps + 1) * denoiser_s + scorer_s))
    return flow.prompts * per_prompt


def slots_plan(slots: int):
    """The stack's processes with `slots` general workers (every queue) instead of one per queue."""
    def plan(specs):
        workers = [s for s in specs if s.name.startswith("worker-")]
        rest = [s for s in specs if not s.name.startswith("worker-")]
        py = workers[0].command[0]
        return rest + [replace(workers[0], name=f"worker-slot{i}", queues=list(QUEUES),
                               command=worker_command(py, list(QUEUES), f"slot{i}@%h")) for i in range(slots)]
    return plan


def warm(stack: Stack, slots: int, tries: int = 5) -> None:
    """Return once every slot consumes every queue and has loaded its model, so that neither falls
    in a measured phase: the API is up seconds before the last of 32 workers has imported torch
    (some 5 s of CPU each on two cores), and a slot's first task builds its model and clients. One
    warm-up job of a prompt per slot; BRPOP serves the longest-waiting worker first, so its tasks
    spread over the slots, and a slot that got none gets another job."""
    from devstack.health import queue_consumers

    def consuming() -> bool:
        found = queue_consumers(stack.facts["redis_url"])
        return all(len(found.get(q, [])) >= slots for q in QUEUES)

    wait_for(consuming, 900, "every slot consuming every queue", poll_s=2)
    for attempt in range(tries):
        stack.wait_job(stack.submit(job(slots, 4, 2, seed=99 + attempt)), 900)
        cold = [i for i in range(slots) if "loading model" not in stack.log(f"worker-slot{i}").read_text(errors="replace")]
        if not cold:
            return
    print(f"{len(cold)} of {slots} slots never loaded their model in {tries} warm-up jobs", file=sys.stderr)


def redis_calls(stack: Stack) -> int:
    stats = stack.state().r.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())


#: Which process of the stack a command line belongs to, for the CPU split (first match wins).
ROLES = (("workers", "celery"), ("object store", "weed"), ("redis", "redis-server"), ("api", "uvicorn"))


def cpu_by_role() -> dict[str, float]:
    """CPU seconds (user + system) so far of this process's descendants, summed by role: the stack's
    processes are all children of its supervisor, itself a child of this bench."""
    out: dict[str, float] = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            cmd, times = " ".join(proc.cmdline()), proc.cpu_times()
        except psutil.Error:  # gone between the listing and the read
            continue
        role = next((name for name, needle in ROLES if needle in cmd), "other")
        out[role] = out.get(role, 0.0) + times.user + times.system
    return out


def sim_compute_ms(spec: dict[str, Any]) -> dict[str, float]:
    """The sim model's own CPU a prompt, in this process with its waits off and one torch thread:
    one sample batch and one fuse chunk of the bench's job. What a worker spends beyond it (in the
    runs' CPU split) is the system's; on a GPU this compute is the GPU's."""
    import torch

    from dfusion_core import pipeline, sim
    from dfusion_core.items import map_items

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        js = JobSpec.model_validate(spec)
        flow, ps = JobFlow.of(js), js.prompts[0]
        model = sim.build_sim(timing=sim.SimTiming(denoiser_s=0.0, scorer_s=0.0))
        items = map_items(model.tokenizer, ps.text, ps.items, ps.mask_thresholds)
        n, k = len(flow.sample_range(0)), len(flow.chunk_range(0))
        best = {"sample_batch": float("inf"), "fuse_chunk": float("inf")}
        for _ in range(3):  # the least of three: the compute, not what else the machine did meanwhile
            t0 = time.process_time()
            trajs = pipeline.sample(model, [ps.text] * n, js.sampling, seeds=list(range(n)))
            t1 = time.process_time()
            pipeline.fuse_pairs(model, trajs[:k], trajs[-k:], [items] * k, js.fusion)
            t2 = time.process_time()
            best = {"sample_batch": min(best["sample_batch"], t1 - t0), "fuse_chunk": min(best["fuse_chunk"], t2 - t1)}
        per_prompt = flow.batches * best["sample_batch"] + flow.chunks * best["fuse_chunk"]
        return {name: round(v * 1000, 1) for name, v in {**best, "prompt": per_prompt}.items()}
    finally:
        torch.set_num_threads(threads)


def stored_bytes(stack: Stack, job_id: str) -> int:
    return sum(stack.store().sizes(job_prefix(job_id)).values())


def parallel_phase(stack: Stack, job_ids: list[str], specs: list[dict[str, Any]]) -> float:
    """Seconds from now until every job's pairs are all target-scored (train enqueued)."""
    state, t0 = stack.state(), time.perf_counter()
    need = {j: JobFlow.of(JobSpec.model_validate(s)) for j, s in zip(job_ids, specs, strict=True)}
    wait_for(lambda: all(state.done_count(j, PAIRS_SCORED.format(epoch=0)) >= f.prompts * f.chunks
                         for j, f in need.items()), 36000, "the parallel phase", poll_s=0.5)
    return time.perf_counter() - t0


def run_slots(slots: int, spec: dict[str, Any], args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    env = {"DFUSION_SIM_DENOISER_MS": str(args.denoiser_ms), "DFUSION_SIM_SCORER_MS": str(args.scorer_ms)}
    with running_stack(tmp / f"stack-{slots}", env=env, plan=slots_plan(slots)) as stack:
        warm(stack, slots)
        calls0, cpu0 = redis_calls(stack), cpu_by_role()
        job_id = stack.submit(spec)
        seconds = parallel_phase(stack, [job_id], [spec])
        calls, cpu1 = redis_calls(stack) - calls0, cpu_by_role()
        flow = JobFlow.of(JobSpec.model_validate(spec))
        tasks = 2 * flow.prompts * (flow.batches + flow.chunks)
        cpu = {role: cpu1[role] - cpu0.get(role, 0.0) for role in cpu1}
        stored = stored_bytes(stack, job_id)  # what the measured tasks wrote: samples, images, fused targets
        cancel(stack, [job_id])
        ideal = ideal_parallel_s(spec, args.denoiser_ms / 1000, args.scorer_ms / 1000)
        return {"slots": slots, "seconds": round(seconds, 2), "ideal_s": round(ideal, 2),
                "efficiency": round(ideal / (slots * seconds), 4), "tasks": tasks,
                "redis_cmds_per_task": round(calls / tasks, 1), "bytes_per_task": round(stored / tasks),
                # CPU a prompt by process role, and how busy the machine's cores were over the phase
                "cpu_ms_per_prompt": {role: round(v / flow.prompts * 1000, 1) for role, v in sorted(cpu.items())},
                "cpu_busy": round(sum(cpu.values()) / (seconds * (os.cpu_count() or 1)), 2)}


def cancel(stack: Stack, job_ids: list[str]) -> None:
    """End jobs whose measured phase is over. Their epoch's training is one task on one slot that
    the sim's waits make long (at the default size some 20 min of them, the same at every slot
    count), and it is not what the bench measures."""
    with stack.client() as c:
        for job_id in job_ids:
            c.delete(f"/v1/jobs/{job_id}")


def run_concurrent(n_jobs: int, slots: int, spec: dict[str, Any], args: argparse.Namespace, tmp: Path) -> float:
    env = {"DFUSION_SIM_DENOISER_MS": str(args.denoiser_ms), "DFUSION_SIM_SCORER_MS": str(args.scorer_ms),
           "DFUSION_MAX_CONCURRENT_JOBS_PER_TENANT": str(max(4, n_jobs))}
    with running_stack(tmp / f"conc-{n_jobs}", env=env, plan=slots_plan(slots)) as stack:
        warm(stack, slots)
        calls0 = redis_calls(stack)
        specs = [{**spec, "seed": i} for i in range(n_jobs)]
        ids = [stack.submit(s) for s in specs]
        parallel_phase(stack, ids, specs)
        calls = redis_calls(stack) - calls0
        flow = JobFlow.of(JobSpec.model_validate(spec))
        cancel(stack, ids)
        return round(calls / (n_jobs * 2 * flow.prompts * (flow.batches + flow.chunks)), 1)


def small_job_slowdown(slots: int, big: dict[str, Any], args: argparse.Namespace, tmp: Path) -> float:
    env = {"DFUSION_SIM_DENOISER_MS": str(args.denoiser_ms), "DFUSION_SIM_SCORER_MS": str(args.scorer_ms)}
    small = job(1, big["samples_per_prompt"], big["sampling"]["num_steps"], seed=7)
    with running_stack(tmp / "fair", env=env, plan=slots_plan(slots)) as stack:
        warm(stack, slots)
        t0 = time.perf_counter()
        stack.wait_job(stack.submit(small), 3600)
        idle = time.perf_counter() - t0
        big_id = stack.submit(big)
        wait_for(lambda: stack.state().get_counts(big_id)["samples"] > 0, 600, "the big job sampling")
        t0 = time.perf_counter()
        stack.wait_job(stack.submit({**small, "seed": 8}), 36000)
        behind = time.perf_counter() - t0
        cancel(stack, [big_id])
    print(f"small job: {idle:.1f} s idle, {behind:.1f} s behind the big job", file=sys.stderr)
    return round(behind / idle, 2)


def svg(rows: list[dict[str, Any]], path: Path) -> None:
    """Efficiency against slots (log2 x axis), a plain SVG polyline with the 90 % line."""
    w, h, pad = 420, 260, 40
    xs = [r["slots"] for r in rows]
    lo, hi = min(xs).bit_length() - 1, max(max(xs).bit_length() - 1, 1)

    def px(s: int) -> float:
        return pad + (w - 2 * pad) * ((s.bit_length() - 1 - lo) / max(1, hi - lo))

    def py(e: float) -> float:
        return h - pad - (h - 2 * pad) * max(0.0, min(1.0, e))

    pts = " ".join(f"{px(r['slots']):.1f},{py(r['efficiency']):.1f}" for r in rows)
    ticks = "".join(f'<text x="{px(s):.1f}" y="{h - pad + 16}" font-size="11" text-anchor="middle">{s}</text>'
                    for s in xs)
    path.write_text(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif">'
        f'<text x="{w / 2}" y="18" font-size="13" text-anchor="middle">efficiency vs worker slots (sim model)</text>'
        f'<line x1="{pad}" y1="{py(0.9):.1f}" x2="{w - pad}" y2="{py(0.9):.1f}" stroke="#bbb" stroke-dasharray="4"/>'
        f'<text x="{w - pad}" y="{py(0.9) - 4:.1f}" font-size="10" text-anchor="end">90 %</text>'
        f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#333"/>'
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#333"/>'
        f'<text x="{pad - 6}" y="{py(1.0) + 4:.1f}" font-size="10" text-anchor="end">1.0</text>'
        f'<text x="{pad - 6}" y="{py(0.0) + 4:.1f}" font-size="10" text-anchor="end">0</text>'
        f'{ticks}<polyline points="{pts}" fill="none" stroke="#1f77b4" stroke-width="2"/></svg>\n')


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=240)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--slots", default="1,2,4,8,16,32", help="comma-separated worker slot counts")
    ap.add_argument("--concurrent", default="1,10", help="concurrent job counts for the per-task Redis cost")
    ap.add_argument("--concurrent-slots", type=int, default=8)
    ap.add_argument("--concurrent-prompts", type=int, default=24, help="prompts per job in the concurrent runs")
    ap.add_argument("--fairness-slots", type=int, default=8)
    ap.add_argument("--denoiser-ms", type=float, default=60.0)
    ap.add_argument("--scorer-ms", type=float, default=20.0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scale")
    ap.add_argument("--slots-only", action="store_true",
                    help="only the slot counts' runs (no concurrent jobs, no fairness): an A/B between commits")
    args = ap.parse_args()
    spec = job(args.prompts, args.samples, args.steps)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dfusion-scale-") as tmp:
        rows = []
        for slots in [int(s) for s in args.slots.split(",")]:
            rows.append(run_slots(slots, spec, args, Path(tmp)))
            print(json.dumps(rows[-1]), file=sys.stderr)
        svg(rows, args.out / "efficiency.svg")
        per_task: dict[str, float] = {}
        slowdown = None
        if not args.slots_only:
            small_spec = job(args.concurrent_prompts, args.samples, args.steps)
            per_task = {str(n): run_concurrent(n, args.concurrent_slots, small_spec, args, Path(tmp))
                        for n in [int(c) for c in args.concurrent.split(",")]}
            slowdown = small_job_slowdown(args.fairness_slots, spec, args, Path(tmp))
    compute = sim_compute_ms(spec)
    # from the seconds, not the rounded efficiency: 0.89952 must not print as 0.9 and pass
    good = [r["slots"] for r in rows if r["ideal_s"] / (r["slots"] * r["seconds"]) >= 0.9]
    result = {"efficiency_by_slots": {str(r["slots"]): r["efficiency"] for r in rows},
              "max_slots_at_90pct": max(good) if good else 0, "redis_cmds_per_task": per_task,
              "small_job_slowdown": slowdown, "sim_compute_ms": compute, "runs": rows,
              "job": {"prompts": args.prompts, "samples": args.samples, "steps": args.steps,
                      "denoiser_ms": args.denoiser_ms, "scorer_ms": args.scorer_ms}}
    (args.out / "scale.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
