"""Prometheus metrics of one API app: request counters plus gauges read from Redis at scrape time.

A registry per app (not the global one) so tests can build many apps in one process. Queue depth
is the LLEN of each Celery queue list (kombu's Redis transport keeps a queue's messages in a list
named after it); jobs by status are counted over every tenant's job index.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from services.queue import QUEUES
from services.state import JobState


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

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def render(self, state: JobState) -> bytes:
        """Refresh the Redis-backed gauges (best effort: a dead Redis gives redis_up 0) and serialise."""
        try:
            for q, depth in state.queue_depths(QUEUES).items():
                self.queue_depth.labels(q).set(depth)
            for status, n in state.count_by_status().items():
                self.jobs.labels(status).set(n)
            self.redis_up.set(1)
        except Exception:  # noqa: BLE001 - a scrape must answer even when Redis is down
            self.redis_up.set(0)
        return generate_latest(self.registry)
