"""Worker telemetry: Redis counters, their Prometheus export, and job/task ids on log records."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest

from api.metrics import ApiMetrics
from services.state.redis import RedisJobStore
from services.telemetry import Telemetry


@pytest.fixture
def r(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def test_durations_failures_and_buckets(r):
    t = Telemetry(r)
    t.record_task("sample", 1.7)
    t.record_task("sample", 0.3, ok=False)
    stats = t.snapshot().stages["sample"]
    assert (stats.count, stats.failures) == (2, 1) and stats.seconds == pytest.approx(2.0)
    assert stats.buckets["0.5"] == 1 and stats.buckets["2.5"] == 2 and stats.buckets["+Inf"] == 2
    assert "0.1" not in stats.buckets


def test_buckets_recorded_before_one_bucket_a_task_still_count(r):
    """A deployment's histogram from before tasks wrote their one bucket (`task_buckets` held each
    bucket at or above the duration): old and new counts add up, bucket by bucket, as one histogram."""
    t = Telemetry(r)
    r.hset(t._k("task_buckets"),
           mapping={"sample|0.5": 1, "sample|1": 1, "sample|2.5": 1, "sample|5": 1, "sample|10": 1, "sample|30": 1,
                    "sample|60": 1, "sample|120": 1, "sample|300": 1, "sample|600": 1, "sample|+Inf": 1})
    r.hincrby(t._k("task_count"), "sample", 1)  # that 0.3 s task, recorded the old way
    t.record_task("sample", 1.7)
    t.record_task("sample", 700.0)
    buckets = t.snapshot().stages["sample"].buckets
    assert buckets == {"0.5": 1, "1": 1, "2.5": 2, "5": 2, "10": 2, "30": 2, "60": 2, "120": 2, "300": 2, "600": 2,
                       "+Inf": 3}


def test_produced_counts_never_double_count(r):
    t = Telemetry(r)
    t.record_produced("j1", {"samples": 4, "pairs": 0})
    t.record_produced("j1", {"samples": 8, "pairs": 2})  # another worker, later
    t.record_produced("j1", {"samples": 6, "pairs": 2})  # a stale report: no change
    t.record_produced("j2", {"samples": 4})
    assert t.snapshot().produced == {"samples": 12, "pairs": 2}


def test_gpu_memory_of_gone_workers_is_dropped(r):
    t = Telemetry(r)
    t.set_gpu_memory("w1", 1 << 30)
    assert t.snapshot().gpu_memory == {"w1": 1 << 30}
    assert t.snapshot(now=10**12).gpu_memory == {}


def test_api_metrics_export_worker_telemetry(r):
    t = Telemetry(r)
    t.record_task("sample", 2.0)
    t.record_task("fuse", 1.0)
    t.record_produced("j1", {"samples": 8, "pairs": 4})
    t.set_gpu_memory("gpu0", 123)
    text = ApiMetrics().render(RedisJobStore(r)).decode()
    assert 'dfusion_task_seconds_bucket{le="0.1",stage="fuse"} 0.0' in text
    assert 'dfusion_task_seconds_count{stage="sample"} 1.0' in text
    assert "dfusion_images_total 8.0" in text and "dfusion_pairs_total 4.0" in text
    assert "dfusion_images_per_second 4.0" in text and "dfusion_pairs_per_second 4.0" in text
    assert 'dfusion_gpu_memory_peak_bytes{worker="gpu0"} 123.0' in text
    assert 'dfusion_queue_depth{queue="sample"}' in text


def test_api_metrics_export_each_job_s_stored_bytes_until_it_is_deleted(r):
    state, metrics = RedisJobStore(r), ApiMetrics()
    for job, tenant in (("j1", "acme"), ("j2", "bob")):
        state.create_job(job, tenant, {})
    state.record_object("j1", "jobs/j1/e0/images/a.png", 1000)
    state.record_object("j1", "jobs/j1/e0/images/a.png", 1200)  # rewritten: its latest size
    state.record_object("j2", "jobs/j2/e0/images/a.png", 34)
    text = metrics.render(state).decode()
    assert 'dfusion_job_stored_bytes{job_id="j1",tenant="acme"} 1200.0' in text
    assert 'dfusion_job_stored_bytes{job_id="j2",tenant="bob"} 34.0' in text
    assert "dfusion_stored_bytes 1234.0" in text and "dfusion_stored_objects 2.0" in text
    state.delete_job("j1")  # a purge
    text = metrics.render(state).decode()
    assert 'job_id="j1"' not in text and 'dfusion_job_stored_bytes{job_id="j2",tenant="bob"} 34.0' in text
    assert "dfusion_stored_bytes 34.0" in text


def test_task_signals_put_ids_on_logs_and_record_the_task(r, monkeypatch):
    from workers import telemetry as wt

    monkeypatch.setattr(wt, "_telemetry", Telemetry(r))
    monkeypatch.setattr(wt, "job_counts", lambda job_id: {"samples": 4, "scored": 0, "pairs": 0, "trained_steps": 0})
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    handler.addFilter(wt.ContextFilter())
    logger = logging.getLogger("dfusion.test.telemetry")
    logger.addHandler(handler)
    try:
        task = SimpleNamespace(name="dfusion.sample")
        wt.on_prerun(task_id="t-1", task=task, kwargs={"job_id": "j-9", "epoch": 0})
        logger.warning("inside")
        wt.on_postrun(task_id="t-1", task=task, kwargs={"job_id": "j-9"}, state="SUCCESS")
        logger.warning("after")
    finally:
        logger.removeHandler(handler)
    assert (records[0].job_id, records[0].task_id, records[0].task_name) == ("j-9", "t-1", "dfusion.sample")
    assert (records[1].job_id, records[1].task_id) == ("-", "-")
    snap = Telemetry(r).snapshot()
    assert snap.stages["sample"].count == 1 and snap.produced == {"samples": 4}
    line = json.loads(wt.JsonFormatter().format(records[0]))
    assert line["job_id"] == "j-9" and line["task_id"] == "t-1" and line["msg"] == "inside"


def test_telemetry_failures_never_reach_the_task(monkeypatch):
    from workers import telemetry as wt

    def broken():
        raise ConnectionError("redis down")

    monkeypatch.setattr(wt, "telemetry", broken)
    wt.record("dfusion.fuse", 1.0, "j")  # no exception
