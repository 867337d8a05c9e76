"""Telemetry for the API's /metrics: worker task durations, items produced and GPU memory kept in
Redis, plus what is read at scrape time (queue depths, jobs by status, each job's stored bytes
from its header: `JobStore.record_object` keeps them as objects are written).

Task metrics happen in worker processes the API cannot scrape, so workers add them to a few
Redis hashes under `dfusion:telemetry:` (cumulative, Prometheus counter semantics) and the API
exports them at scrape time. Items produced (images, pairs) are counted from the jobs' own
counters: after each task the worker reports a job's current counts, and a script adds only what
exceeds the highest count seen before, so concurrent or redelivered tasks never count twice.
Torch-free; writes are best effort for the caller (it decides what to do with RedisError).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from services.state import JobRecord, JobStatus, JobStore

PREFIX = "dfusion:telemetry"
#: Upper bounds (seconds) of the task-duration histogram buckets; +Inf is implied.
BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
#: Prometheus `le` labels of the buckets, +Inf last.
BUCKET_LABELS = (*(f"{b:g}" for b in BUCKETS), "+Inf")
#: GPU memory reports older than this are a gone worker's and are not exported.
GPU_STALE_S = 600.0
#: How long a job's "highest seen counts" are kept after its last task.
SEEN_TTL_S = 7 * 24 * 3600

# KEYS: seen, totals. ARGV: ttl, name1, count1, name2, count2, ...
_PRODUCED = """
for i = 2, #ARGV, 2 do
  local seen = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  local cur = tonumber(ARGV[i + 1])
  if cur > seen then
    redis.call('HSET', KEYS[1], ARGV[i], cur)
    redis.call('HINCRBY', KEYS[2], ARGV[i], cur - seen)
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""


@dataclass(frozen=True)
class StageStats:
    """Cumulative task statistics of one stage (sample, score, fuse, train, start_job)."""

    count: int
    seconds: float
    failures: int
    buckets: dict[str, int]  # upper bound ("0.5", ..., "+Inf") -> tasks at most that long (cumulative)


@dataclass(frozen=True)
class Snapshot:
    stages: dict[str, StageStats] = field(default_factory=dict)
    produced: dict[str, int] = field(default_factory=dict)  # job counter name -> total over all jobs
    gpu_memory: dict[str, int] = field(default_factory=dict)  # worker -> peak bytes allocated
    duplicates: dict[str, int] = field(default_factory=dict)  # stage -> deliveries that did no work


class Telemetry:
    def __init__(self, client: redis.Redis) -> None:
        self.r: Any = client
        self._produced = client.register_script(_PRODUCED)

    @classmethod
    def from_url(cls, url: str) -> Telemetry:
        return cls(redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=3))

    @staticmethod
    def _k(name: str) -> str:
        return f"{PREFIX}:{name}"

    def record_task(self, stage: str, seconds: float, ok: bool = True) -> None:
        """One finished task of `stage` that ran `seconds` (a retry or failure has ok False)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hincrby(self._k("task_count"), stage, 1)
        pipe.hincrbyfloat(self._k("task_seconds"), stage, float(seconds))
        if not ok:
            pipe.hincrby(self._k("task_failures"), stage, 1)
        # the one bucket it falls in; `snapshot` sums them into Prometheus's cumulative buckets (one
        # command a task, where incrementing each bucket above it was up to twelve)
        le = next((le for bound, le in zip(BUCKETS, BUCKET_LABELS, strict=False) if seconds <= bound), "+Inf")
        pipe.hincrby(self._k("task_hist"), f"{stage}|{le}", 1)
        pipe.execute()

    def record_duplicate(self, stage: str) -> None:
        """A delivery of a unit already committed or running elsewhere: it returned without work."""
        self.r.hincrby(self._k("duplicates"), stage, 1)

    def record_produced(self, job_id: str, counts: dict[str, int]) -> None:
        """A job's current counters (samples, pairs, ...); only growth past the highest seen is added."""
        argv: list[Any] = [SEEN_TTL_S]
        for name, n in counts.items():
            argv += [name, int(n)]
        self._produced(keys=[self._k(f"seen:{job_id}"), self._k("produced")], args=argv)

    def forget_job(self, job_id: str) -> None:
        """Drop the job's high-water mark (a purge; the totals it fed stay, as a counter's do)."""
        self.r.delete(self._k(f"seen:{job_id}"))

    def record_overhead(self, stage: str, queue_s: float, storage_s: float, total_s: float) -> None:
        """One task's infrastructure time: idle-worker queue latency and object-store I/O."""
        row = json.dumps({"stage": stage, "queue_s": queue_s, "storage_s": storage_s, "total_s": total_s})
        pipe = self.r.pipeline(transaction=False)
        pipe.lpush(self._k("overhead"), row)
        pipe.ltrim(self._k("overhead"), 0, 9999)
        pipe.execute()

    def overheads(self) -> list[dict[str, Any]]:
        return [json.loads(r) for r in self.r.lrange(self._k("overhead"), 0, -1)]

    def set_gpu_memory(self, worker: str, peak_bytes: int) -> None:
        self.r.hset(self._k("gpu_memory"), worker, f"{int(peak_bytes)} {time.time():.0f}")

    def queue_depths(self, queues: tuple[str, ...]) -> dict[str, int]:
        """Messages waiting in each Celery queue (kombu's Redis transport keeps a list per queue name)."""
        return {q: int(self.r.llen(q)) for q in queues}

    def snapshot(self, now: float | None = None) -> Snapshot:
        pipe = self.r.pipeline(transaction=False)
        for name in ("task_count", "task_seconds", "task_failures", "task_buckets", "task_hist", "produced",
                     "gpu_memory", "duplicates"):
            pipe.hgetall(self._k(name))
        count, seconds, failures, buckets, hist, produced, gpu, duplicates = pipe.execute()
        stages = {}
        for stage in count:
            stages[stage] = StageStats(int(count[stage]), float(seconds.get(stage, 0.0)),
                                       int(failures.get(stage, 0)), _cumulative(stage, buckets, hist))
        now = time.time() if now is None else now
        memory = {}
        for worker, value in gpu.items():
            peak, at = value.split()
            if now - float(at) <= GPU_STALE_S:
                memory[worker] = int(peak)
        return Snapshot(stages, {k: int(v) for k, v in produced.items()}, memory,
                        {k: int(v) for k, v in duplicates.items()})


def _cumulative(stage: str, cumulative: dict[str, str], per_bucket: dict[str, str]) -> dict[str, int]:
    """The stage's tasks at or under each bound (labels with none left out): the per-bucket counts
    summed upwards, plus the cumulative counts a deployment recorded before (`task_buckets`)."""
    def own(table: dict[str, str]) -> dict[str, int]:
        return {k.split("|", 1)[1]: int(v) for k, v in table.items() if k.split("|", 1)[0] == stage}

    before, counts, running, out = own(cumulative), own(per_bucket), 0, {}
    for le in BUCKET_LABELS:
        running += counts.get(le, 0)
        if total := running + before.get(le, 0):
            out[le] = total
    return out


def all_jobs(store: JobStore) -> list[JobRecord]:
    """Every tenant's jobs, headers only (each tenant's job list: fine at scrape rates). A header
    carries the job's stored bytes and objects, so the scrape lists no object store."""
    return [job for tenant in store.list_tenants() for job in store.list_jobs(tenant)]


def jobs_by_status(jobs: Iterable[JobRecord]) -> dict[str, int]:
    """Jobs per status (every status, 0 where none)."""
    tally = dict.fromkeys((s.value for s in JobStatus), 0)
    for job in jobs:
        tally[job.status.value] += 1
    return tally
