"""Redis broker only: a dead worker's task comes back once its lease expires, not after the
visibility timeout.

kombu's Redis transport keeps each delivered, unacknowledged message in the `unacked` hash (its
delivery time in `unacked_index`) until the worker acks it; only after the visibility timeout
does kombu put it back. That timeout is hours (a long task must not run twice), so it no longer
tells a dead worker from a slow one: the unit's lease does. Every worker process runs a
`Sweeper` thread; once per SWEEP_INTERVAL_S one of them (a Redis mutex) looks at messages
delivered more than `grace` seconds ago and restores, through kombu, each whose unit has no live
lease: its worker died (or never started it). Restoring a message whose unit is committed or
running elsewhere is harmless: that delivery returns at once or re-queues itself
(workers.celery_app). RabbitMQ needs none of this: it returns a dead consumer's messages at once.

A message can also vanish: kombu pops it (BRPOP) and records it as unacked in a second command,
so a Redis crash between the two loses it, and its job would wait forever. The same sweep finds
such units (`lost`): a job that has made no progress for `grace` seconds, with nothing running,
whose flow (`JobFlow.outstanding`) names a unit that is neither committed nor in any queue or
unacked record. It sends that unit's task again.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.jobspec import JobSpec
from services.queue import QUEUES, send
from services.state import JobStore, StateError
from services.state.admission import held_units
from workers.flow import JobFlow, TaskRef, unit_of

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 2.0
LOCK_KEY = "dfusion:redelivery:lock"
UNACKED, UNACKED_INDEX = "unacked", "unacked_index"  # kombu's Redis transport defaults
#: kombu's Redis transport keeps priority p > 0 of queue q in the list `q + PRIORITY_SEP + p`.
PRIORITY_SEP, PRIORITIES = "\x06\x16", (3, 6, 9)
PROGRESS_KEY = "dfusion:redelivery:progress"  # job id -> "<units committed> <unix time it last changed>"
BATCH = 100


def grace_s(lease_ttl_s: float) -> float:
    """How long after delivery a message must have a lease: the worker takes it before any work."""
    return max(10.0, 2 * lease_ttl_s)


@dataclass(frozen=True)
class Unacked:
    """One delivered, unacknowledged task message, as far as redelivery needs it."""

    tag: str
    delivered_at: float  # unix seconds
    job_id: str
    unit: str
    eta: float | None  # unix seconds; a countdown task waits unacked in its worker until then

    @classmethod
    def parse(cls, tag: str, delivered_at: float, raw: str) -> Unacked | None:
        """None for anything but a dfusion task with a job_id (left to kombu's own sweep)."""
        try:
            task = task_of(json.loads(raw)[0])
        except (ValueError, IndexError, TypeError):
            task = None
        return None if task is None else cls(tag, delivered_at, *task)

    def orphaned(self, now: float, grace: float, live_units: set[str]) -> bool:
        """Delivered (and due) more than `grace` ago, and nobody holds its unit's lease."""
        start = max(self.delivered_at, self.eta or 0.0)
        return now - start > grace and self.unit not in live_units


def task_of(payload: dict[str, Any]) -> tuple[str, str, float | None] | None:
    """(job id, unit, eta) of a kombu message carrying a dfusion task; None for anything else."""
    try:
        headers = payload["headers"]
        body = payload["body"]
        if payload["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        kwargs = json.loads(body)[1]
        eta = datetime.fromisoformat(headers["eta"]).timestamp() if headers.get("eta") else None
        if not str(headers["task"]).startswith("dfusion.") or "job_id" not in kwargs:
            return None
        return str(kwargs["job_id"]), unit_of(headers["task"], kwargs), eta
    except (ValueError, KeyError, IndexError, TypeError) as e:
        log.debug("message not parsed: %s", e)
        return None


def orphans(r: Any, state: JobStore, grace: float, now: float | None = None) -> list[Unacked]:
    """Unacked dfusion task messages whose worker no longer holds (or never took) their unit.

    Every due message is read, BATCH at a time, oldest first: the oldest are the healthy long
    tasks, and a dead worker's message may come after any number of them. A message acked between
    two pages shifts the rest down by one, so one may be skipped: the next sweep finds it.
    """
    now = time.time() if now is None else now
    live: dict[str, set[str]] = {}
    out, start = [], 0
    while True:
        rows = r.zrangebyscore(UNACKED_INDEX, "-inf", now - grace, start=start, num=BATCH, withscores=True)
        if rows:
            out += _orphaned(r, state, rows, now, grace, live)
        if len(rows) < BATCH:
            return out
        start += BATCH


def _orphaned(r: Any, state: JobStore, rows: list[tuple[str, float]], now: float, grace: float,
              live: dict[str, set[str]]) -> list[Unacked]:
    """The orphans among one page of `unacked_index` rows; `live` caches each job's leased units."""
    raws = r.hmget(UNACKED, [tag for tag, _ in rows])
    messages = [Unacked.parse(tag, at, raw) for (tag, at), raw in zip(rows, raws, strict=True) if raw is not None]
    out = []
    for msg in messages:
        if msg is None:
            continue
        if msg.job_id not in live:
            try:
                live[msg.job_id] = {lease.unit for lease in state.leases(msg.job_id)}
            except StateError:  # e.g. a malformed id: not ours to restore
                continue
        if msg.orphaned(now, grace, live[msg.job_id]):
            out.append(msg)
    return out


def messages(r: Any) -> set[tuple[str, str]]:
    """(job id, unit) of every dfusion task message waiting in a queue or delivered and unacked."""
    pipe = r.pipeline(transaction=False)
    for queue in QUEUES:
        for key in (queue, *(f"{queue}{PRIORITY_SEP}{p}" for p in PRIORITIES)):
            pipe.lrange(key, 0, -1)
    waiting = [raw for rows in pipe.execute() for raw in rows]
    found = set()
    for raw in waiting + list(r.hvals(UNACKED)):
        try:
            payload = json.loads(raw)
            task = task_of(payload[0] if isinstance(payload, list) else payload)  # unacked: [payload, ex, rk]
        except (ValueError, IndexError, TypeError):
            continue
        if task is not None:
            found.add(task[:2])
    return found


def stalled(r: Any, state: JobStore, grace: float, now: float | None = None) -> dict[str, tuple[int, list[TaskRef]]]:
    """Active jobs with no unit committed for `grace` seconds and none running: their committed
    units' count and outstanding tasks.

    Progress is the number of committed units, kept under PROGRESS_KEY with the time it last
    changed (in Redis, since any worker process may run the next sweep).
    """
    now = time.time() if now is None else now
    seen: dict[str, str] = r.hgetall(PROGRESS_KEY)
    active, out = set(), {}
    for tenant in state.list_tenants():
        for job_id in state.active_job_ids(tenant):
            active.add(job_id)
            try:
                job = state.get_job(job_id)
                committed = state.committed_units(job_id)
                mark, _, since = seen.get(job_id, "").partition(" ")
                if mark != str(len(committed)):
                    r.hset(PROGRESS_KEY, job_id, f"{len(committed)} {now}")
                elif now - float(since) > grace and not state.leases(job_id):
                    out[job_id] = (len(committed),
                                   JobFlow.of(JobSpec.model_validate(job.spec)).outstanding(committed))
            except (StateError, ValueError) as e:  # a job deleted meanwhile, or a malformed record
                log.debug("job %s not checked for lost units: %s", job_id, e)
    if gone := [job_id for job_id in seen if job_id not in active]:
        r.hdel(PROGRESS_KEY, *gone)
    return {job_id: (mark, tasks) for job_id, (mark, tasks) in out.items() if tasks}


def lost(r: Any, state: JobStore, grace: float, now: float | None = None) -> list[tuple[str, TaskRef]]:
    """Outstanding tasks of stalled jobs that have no message anywhere: theirs was lost.

    Each stalled job's clock restarts here, so a job whose tasks wait behind other jobs' work
    costs one scan of the queues per `grace`, not one per sweep.
    """
    now = time.time() if now is None else now
    jobs = stalled(r, state, grace, now)
    if not jobs:
        return []
    present = messages(r) | held_units(r, jobs, QUEUES)  # held by fair admission: not lost, just not yet sent
    for job_id, (mark, _) in jobs.items():
        r.hset(PROGRESS_KEY, job_id, f"{mark} {now}")
    return [(job_id, task) for job_id, (_, tasks) in jobs.items() for task in tasks
            if (job_id, task.unit) not in present]


class Sweeper:
    """A daemon thread in each worker process; one sweep per interval across all of them."""

    def __init__(self, app: Any, r: Any, state: JobStore, lease_ttl_s: float) -> None:
        self.app, self.r, self.state, self.grace = app, r, state, grace_s(lease_ttl_s)
        self._thread = threading.Thread(target=self._loop, name="dfusion-redelivery", daemon=True)

    def start(self) -> Sweeper:
        self._thread.start()
        return self

    def _loop(self) -> None:
        conn = self.app.connection_for_write()
        try:
            while True:
                time.sleep(SWEEP_INTERVAL_S)
                try:
                    if self.r.set(LOCK_KEY, os.getpid(), nx=True, px=int(SWEEP_INTERVAL_S * 900)):
                        self.sweep(conn)
                except Exception as e:  # noqa: BLE001 - Redis away: the next sweep tries again
                    log.warning("redelivery sweep failed: %s", e)
                    conn.close()
                    conn = self.app.connection_for_write()
        finally:
            conn.close()

    def sweep(self, conn: Any) -> list[Unacked]:
        restored = orphans(self.r, self.state, self.grace)
        for msg in restored:
            log.warning("%s of job %s: delivered %.0f s ago and no live lease (its worker died); redelivering",
                        msg.unit, msg.job_id, time.time() - msg.delivered_at, extra={"job_id": msg.job_id})
            conn.default_channel.qos.restore_by_tag(msg.tag, leftmost=False)
        for job_id, task in lost(self.r, self.state, self.grace):
            log.warning("%s of job %s: not committed, not running and in no queue (its message was lost); "
                        "sending it again", task.unit, job_id, extra={"job_id": job_id})
            send(self.app, task.name, job_id=job_id, **task.kwargs())
        return restored
