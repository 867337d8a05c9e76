"""Observability of worker processes: job and task ids on every log record, task metrics to Redis.

Importing this module connects Celery signal handlers (import it from `workers.celery_app`):
task_prerun puts the task's job id and task id into context variables that `ContextFilter` copies
onto each log record; task_postrun records the task's duration per stage, the job's produced
counts and the process's peak GPU memory through `services.telemetry` (the API exports them at
/metrics). Telemetry is best effort: a failure to record is logged at debug level and never fails
a task. DFUSION_LOG_FORMAT=json turns worker logs into one JSON object per line.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import socket
import sys
import time
import warnings
from typing import Any

from celery.signals import (
    before_task_publish,
    celeryd_after_setup,
    task_postrun,
    task_prerun,
    worker_process_init,
)

from services.storage import io_seconds
from services.telemetry import Telemetry

log = logging.getLogger(__name__)

job_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("dfusion_job_id", default="-")
task_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("dfusion_task_id", default="-")
task_name_var: contextvars.ContextVar[str] = contextvars.ContextVar("dfusion_task_name", default="-")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [job=%(job_id)s task=%(task_id)s]: %(message)s"


class ContextFilter(logging.Filter):
    """Adds job_id, task_id and task_name to a record unless the call gave them (`extra=`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for attr, var in (("job_id", job_id_var), ("task_id", task_id_var), ("task_name", task_name_var)):
            if not hasattr(record, attr):
                setattr(record, attr, var.get())
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname, "logger": record.name,
               "msg": record.getMessage(), "job_id": getattr(record, "job_id", "-"),
               "task_id": getattr(record, "task_id", "-"), "task": getattr(record, "task_name", "-"),
               "pid": record.process}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def install_logging(json_lines: bool | None = None) -> None:
    """Put ContextFilter and the structured format on the root logger's handlers (idempotent)."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    if json_lines is None:
        json_lines = os.environ.get("DFUSION_LOG_FORMAT", "").lower() == "json"
    # DFUSION_DEBUG_LOGGERS=services.storage,...: those loggers at DEBUG (the tests count object writes)
    for name in filter(None, os.environ.get("DFUSION_DEBUG_LOGGERS", "").split(",")):
        logging.getLogger(name.strip()).setLevel(logging.DEBUG)
    for handler in root.handlers:
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())
        handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))


# --- task signals ----------------------------------------------------------------------------------
#: task id -> (monotonic start, context tokens to reset, queue latency s, I/O seconds at the start)
_started: dict[str, tuple[float, list[contextvars.Token], float | None, float]] = {}
_telemetry: Telemetry | None = None


def telemetry() -> Telemetry:
    """One Telemetry per worker process (after fork), on the settings' Redis."""
    global _telemetry
    if _telemetry is None:
        from services.settings import get_settings

        _telemetry = Telemetry.from_url(get_settings().redis_url)
    return _telemetry


def stage_of(task_name: str) -> str:
    return task_name.removeprefix("dfusion.")


SENT_HEADER = "dfusion_sent"
_last_end = [0.0]  # wall time this worker process last finished a task


def on_publish(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """Stamp each message with its publish time, for the queue-latency telemetry."""
    if headers is not None:
        headers.setdefault(SENT_HEADER, time.time())


def _queue_latency(task: Any) -> float | None:
    """Publish -> start, counted from when this worker became free (waiting behind other
    work is queueing, not overhead)."""
    request = getattr(task, "request", None)
    if request is None:
        return None
    sent = request.get(SENT_HEADER) or (getattr(request, "headers", None) or {}).get(SENT_HEADER)
    if sent is None:
        return None
    return max(0.0, time.time() - max(float(sent), _last_end[0]))


def on_prerun(task_id: str, task: Any, kwargs: dict[str, Any] | None = None, **_: Any) -> None:
    job_id = str((kwargs or {}).get("job_id", "-"))
    tokens = [job_id_var.set(job_id), task_id_var.set(task_id), task_name_var.set(task.name)]
    _started[task_id] = (time.monotonic(), tokens, _queue_latency(task), io_seconds())


def on_postrun(task_id: str, task: Any, kwargs: dict[str, Any] | None = None, state: str | None = None,
               **_: Any) -> None:
    started, tokens, queue_s, io_before = _started.pop(task_id, (None, [], None, 0.0))
    _last_end[0] = time.time()
    try:
        if started is not None:
            seconds = time.monotonic() - started
            record(task.name, seconds, (kwargs or {}).get("job_id"), ok=state == "SUCCESS")
            if queue_s is not None:
                telemetry().record_overhead(stage_of(task.name), queue_s, io_seconds() - io_before, seconds)
    except Exception as exc:  # noqa: BLE001 - telemetry must never fail a task
        log.debug("overhead not recorded: %s", exc)
    finally:
        for token in reversed(tokens):
            token.var.reset(token)


def record(task_name: str, seconds: float, job_id: str | None, ok: bool = True) -> None:
    """Duration, the job's produced counts and peak GPU memory; never raises."""
    try:
        t = telemetry()
        t.record_task(stage_of(task_name), seconds, ok)
        if job_id:
            t.record_produced(job_id, job_counts(job_id))
        peak = gpu_peak_bytes()
        if peak is not None:
            t.set_gpu_memory(f"{socket.gethostname()}:{os.getpid()}", peak)
    except Exception as exc:  # noqa: BLE001 - telemetry must never fail a task
        log.debug("telemetry not recorded for %s: %s", task_name, exc)


def duplicate(task_name: str) -> None:
    """`dfusion_duplicate_deliveries_total{stage}` += 1; never raises."""
    try:
        telemetry().record_duplicate(stage_of(task_name))
    except Exception as exc:  # noqa: BLE001 - telemetry must never fail a task
        log.debug("duplicate delivery not recorded for %s: %s", task_name, exc)


def job_counts(job_id: str) -> dict[str, int]:
    from services.settings import get_settings
    from services.state.redis import open_state

    return open_state(get_settings().redis_url).get_counts(job_id)


def gpu_peak_bytes() -> int | None:
    """torch.cuda.max_memory_allocated when this process has already loaded torch and has a GPU."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return int(torch.cuda.max_memory_allocated())


def _reset_after_fork(**_: Any) -> None:
    global _telemetry
    _telemetry = None
    _started.clear()
    install_logging()


def _worker_ready(**_: Any) -> None:
    install_logging()
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        log.info("worker runs as root: fine in a throwaway sandbox; the compose image runs it as uid 10001")


# Celery's nine-line SecurityWarning for a root worker (with pickle refused, as here, it only
# warns): `_worker_ready` says it in one line of ours instead.
warnings.filterwarnings("ignore", message="You're running the worker with superuser privileges",
                        module="celery.platforms")

# Handlers only: importing this module changes no logging outside a Celery worker.
before_task_publish.connect(on_publish, weak=False)
task_prerun.connect(on_prerun, weak=False)
task_postrun.connect(on_postrun, weak=False)
worker_process_init.connect(_reset_after_fork, weak=False)
celeryd_after_setup.connect(_worker_ready, weak=False)
