"""Prometheus metrics of one API app: request counters plus gauges read from Redis at scrape time.

A registry per app (not the global one) so tests can build many apps in one process. Queue depth
is the LLEN of each Celery queue list (kombu's Redis transport keeps a queue's messages in a list
named after it); jobs by status are counted over every tenant's job index. Worker-side numbers
(task durations per stage, images and pairs produced, GPU memory) are read from the telemetry
hashes the workers keep in Redis (services.telemetry) and exported as they are at scrape time.
Stored bytes per job (`dfusion_job_stored_bytes{job_id,tenant}`) and over all jobs come from the job
headers that same pass reads (kept as objects are written: `JobStore.record_object`), never from a
listing of the object store; a purged job's header is gone, and its line with it.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from services.queue import QUEUES
from services.state.redis import RedisJobStore
from services.state.types import JobRecord
from services.telemetry import BUCKET_LABELS, Snapshot, Telemetry, all_jobs, jobs_by_status

# job counter -> (metric name, help); `samples` are generated images
PRODUCED = {
    "samples": ("dfusion_images", "images generated (all jobs)"),
    "scored": ("dfusion_images_scored", "images scored (all jobs)"),
    "pairs": ("dfusion_pairs", "preference pairs built (all jobs)"),
    "trained_steps": ("dfusion_trained_steps", "optimizer steps taken (all jobs)"),
}
# throughput gauge -> (counter, stage whose busy seconds it is divided by)
THROUGHPUT = {"dfusion_images_per_second": ("samples", "sample"), "dfusion_pairs_per_second": ("pairs", "fuse")}


class WorkerCollector:
    """Prometheus view of the last telemetry snapshot (set by ApiMetrics.render before serialising)."""

    def __init__(self) -> None:
        self.snapshot = Snapshot()

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        hist = HistogramMetricFamily("dfusion_task_seconds", "task run time per stage", labels=["stage"])
        failures = CounterMetricFamily("dfusion_task_failures", "tasks that failed or were retried", labels=["stage"])
        for stage, st in sorted(snap.stages.items()):
            hist.add_metric([stage], [(le, float(st.buckets.get(le, 0))) for le in BUCKET_LABELS], st.seconds)
            failures.add_metric([stage], st.failures)
        yield hist
        yield failures
        duplicates = CounterMetricFamily("dfusion_duplicate_deliveries", "deliveries of a unit already committed "
                                         "or running elsewhere (no work done)", labels=["stage"])
        for stage, n in sorted(snap.duplicates.items()):
            duplicates.add_metric([stage], n)
        yield duplicates
        for counter, (name, help_text) in PRODUCED.items():
            yield CounterMetricFamily(name, help_text, value=snap.produced.get(counter, 0))
        for name, (counter, stage) in THROUGHPUT.items():
            busy = snap.stages[stage].seconds if stage in snap.stages else 0.0
            rate = snap.produced.get(counter, 0) / busy if busy > 0 else 0.0
            yield GaugeMetricFamily(name, f"{counter} per busy second of the {stage} stage's workers", value=rate)
        gpu = GaugeMetricFamily("dfusion_gpu_memory_peak_bytes", "peak CUDA memory allocated per worker",
                                labels=["worker"])
        for worker, peak in sorted(snap.gpu_memory.items()):
            gpu.add_metric([worker], peak)
        yield gpu


class StorageCollector:
    """What each job keeps in the object store, from the job headers of the last scrape (set by
    ApiMetrics.render): one line per job until it is purged, and the totals."""

    def __init__(self) -> None:
        self.jobs: list[JobRecord] = []

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        per_job = GaugeMetricFamily("dfusion_job_stored_bytes", "bytes of the job's objects in the store "
                                    "(jobs/<id>/), until it is purged", labels=["job_id", "tenant"])
        for job in sorted(self.jobs, key=lambda j: (j.tenant, j.job_id)):
            per_job.add_metric([job.job_id, job.tenant], job.stored_bytes)
        yield per_job
        yield GaugeMetricFamily("dfusion_stored_bytes", "bytes of every job's objects in the store",
                                value=sum(j.stored_bytes for j in self.jobs))
        yield GaugeMetricFamily("dfusion_stored_objects", "objects of every job in the store",
                                value=sum(j.stored_objects for j in self.jobs))


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "dfusion_api_requests", "HTTP requests served", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "dfusion_api_request_seconds", "HTTP request latency", ["method", "route"], registry=self.registry
        )
        self.queue_depth = Gauge(
            "dfusion_queue_depth", "messages waiting in a stage's queue", ["queue"], registry=self.registry
        )
        self.jobs = Gauge("dfusion_jobs", "jobs by status, all tenants", ["status"], registry=self.registry)
        self.redis_up = Gauge("dfusion_redis_up", "1 if Redis answered this scrape", registry=self.registry)
        self.workers = WorkerCollector()
        self.registry.register(self.workers)
        self.storage = StorageCollector()
        self.registry.register(self.storage)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def render(self, state: RedisJobStore) -> bytes:
        """Refresh the Redis-backed gauges (best effort: a dead Redis gives redis_up 0) and serialise."""
        try:
            telemetry = Telemetry(state.r)
            for q, depth in telemetry.queue_depths(QUEUES).items():
                self.queue_depth.labels(q).set(depth)
            jobs = all_jobs(state)
            for status, n in jobs_by_status(jobs).items():
                self.jobs.labels(status).set(n)
            self.storage.jobs = jobs
            self.workers.snapshot = telemetry.snapshot()
            self.redis_up.set(1)
        except Exception:  # noqa: BLE001 - a scrape must answer even when Redis is down
            self.redis_up.set(0)
        return generate_latest(self.registry)
