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

Cost: a sweep reads the set of active jobs (`JobStore.all_active_job_ids`, kept by the same
scripts that add to and remove from each tenant's `active` set), one SCARD of committed units per
active job, and the due `unacked_index` entries; never the keyspace. It runs under a token lock
(`SweepLock`) that its holder renews before each message it restores or sends and releases by
compare-and-delete, so two sweeps never both act on one message, however long a sweep takes.

Clocks (docs/GUARANTEES.md, "Clocks"): what dfusion writes and compares itself, the progress
marks, is in Redis `TIME` of the state Redis; no host clock enters them. kombu's delivery times in
`unacked_index` (and a countdown's eta) are the delivering (sending) worker's `time.time()`; the
sweep reads them against the broker Redis's `TIME`. A delivering host whose clock is `d` seconds
behind Redis makes its messages look `d` older: a message is restored at most `d` early, which is
harmless while `d` < grace_s (>= 10 s: its worker took the lease within milliseconds of delivery,
so the lease is live). A clock `d` ahead delays the recovery of a dead worker's task by `d`. Skew
under grace_s is tolerated; keep hosts NTP-synced well inside it.

The broker need not be the state Redis: `for_settings` gives the sweeper a client on the broker
URL (kombu's queues, `unacked`) beside the state store (leases, commits, progress, held tasks).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import redis

from services.jobspec import JobSpec
from services.queue import QUEUES, send
from services.settings import Settings
from services.state import JobStore, StateError
from services.state.admission import held_units
from services.state.redis import SOCKET_TIMEOUT_S, RedisJobStore
from workers.flow import JobFlow, TaskRef, unit_of

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 2.0
LOCK_KEY = "dfusion:redelivery:lock"
UNACKED, UNACKED_INDEX = "unacked", "unacked_index"  # kombu's Redis transport defaults
#: kombu's Redis transport keeps priority p > 0 of queue q in the list `q + PRIORITY_SEP + p`.
PRIORITY_SEP, PRIORITIES = "\x06\x16", (3, 6, 9)
PROGRESS_KEY = "dfusion:redelivery:progress"  # job id -> "<units committed> <Redis TIME it last changed>"
BATCH = 100
#: The sweep lock's time to live; its holder renews it before every restore and send.
LOCK_TTL_S = 30.0
#: kombu URL schemes of a Redis broker; redis-py spells kombu's `redis+socket` as `unix`.
REDIS_SCHEMES = {"redis": "redis", "rediss": "rediss", "redis+socket": "unix"}

# KEYS: lock. ARGV: token, ttl_ms. 1 when the lock is still the token's (and lives ttl_ms more).
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# KEYS: lock. ARGV: token, linger_ms. The holder's release: deleted, or left to expire in linger_ms.
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return redis.call('DEL', KEYS[1])
"""


def redis_now(r: Any) -> float:
    """The Redis server's clock (TIME), unix seconds: one clock for every host that compares with it."""
    sec, usec = r.time()
    return float(sec) + float(usec) / 1e6


class SweepLock:
    """One sweep at a time across every worker: a token in Redis, taken with SET NX, renewed by its
    holder (`held`) while the sweep runs, and released only by the holder (compare-and-delete)."""

    def __init__(self, r: Any, key: str = LOCK_KEY, ttl_s: float = LOCK_TTL_S) -> None:
        self.r, self.key, self.ttl_ms = r, key, int(ttl_s * 1000)
        self.token = uuid.uuid4().hex
        self._renew, self._release = r.register_script(_RENEW), r.register_script(_RELEASE)

    def acquire(self) -> bool:
        """Take the lock with a fresh token; False when another sweep holds it."""
        self.token = uuid.uuid4().hex
        return bool(self.r.set(self.key, self.token, nx=True, px=self.ttl_ms))

    def held(self) -> bool:
        """Still ours? Renewed for another TTL when it is; act on a message only after True."""
        return int(self._renew(keys=[self.key], args=[self.token, self.ttl_ms])) == 1

    def release(self, linger_s: float = 0.0) -> None:
        """Delete the lock if it is still ours; with `linger_s`, leave it to expire then instead (so
        the workers' next sweep waits out the interval)."""
        self._release(keys=[self.key], args=[self.token, int(linger_s * 1000)])


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
    """Unacked dfusion task messages (in broker Redis `r`) whose worker no longer holds (or never
    took) their unit; `now` defaults to the broker's TIME (delivery times: see "Clocks" above).

    Every due message is read, BATCH at a time, oldest first: the oldest are the healthy long
    tasks, and a dead worker's message may come after any number of them. A message acked between
    two pages shifts the rest down by one, so one may be skipped: the next sweep finds it.
    """
    now = redis_now(r) if now is None else now
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


def stalled(state: RedisJobStore, grace: float, now: float | None = None) -> dict[str, tuple[int, list[TaskRef]]]:
    """Active jobs with no unit committed for `grace` seconds and none running: their committed
    units' count and outstanding tasks.

    Progress is the number of committed units (an SCARD), kept under PROGRESS_KEY with the state
    Redis's TIME when it last changed (in Redis, since any worker process may run the next sweep).
    A job's committed units are read only once it has stalled.
    """
    r = state.r
    now = redis_now(r) if now is None else now
    seen: dict[str, str] = r.hgetall(PROGRESS_KEY)
    active, out = state.all_active_job_ids(), {}
    for job_id in active:
        try:
            count = state.committed_count(job_id)
            mark, _, since = seen.get(job_id, "").partition(" ")
            if mark != str(count):
                r.hset(PROGRESS_KEY, job_id, f"{count} {now}")
            elif now - float(since) > grace and not state.leases(job_id):
                job = state.get_job(job_id)
                if not job.status.terminal:  # it ended since the set was read
                    out[job_id] = (count, JobFlow.of(JobSpec.model_validate(job.spec)).outstanding(
                        state.committed_units(job_id)))
        except (StateError, ValueError) as e:  # a job deleted meanwhile, or a malformed record
            log.debug("job %s not checked for lost units: %s", job_id, e)
    if gone := set(seen) - set(active):
        r.hdel(PROGRESS_KEY, *gone)
    return {job_id: (mark, tasks) for job_id, (mark, tasks) in out.items() if tasks}


def lost(r: Any, state: RedisJobStore, grace: float, now: float | None = None) -> list[tuple[str, TaskRef]]:
    """Outstanding tasks of stalled jobs that have no message anywhere in broker Redis `r` (nor
    held by fair admission in the state Redis): theirs was lost.

    Each stalled job's clock restarts here, so a job whose tasks wait behind other jobs' work
    costs one scan of the queues per `grace`, not one per sweep.
    """
    now = redis_now(state.r) if now is None else now
    jobs = stalled(state, grace, now)
    if not jobs:
        return []
    present = messages(r) | held_units(state.r, jobs, QUEUES)  # held: not lost, just not yet sent
    for job_id, (mark, _) in jobs.items():
        state.r.hset(PROGRESS_KEY, job_id, f"{mark} {now}")
    return [(job_id, task) for job_id, (_, tasks) in jobs.items() for task in tasks
            if (job_id, task.unit) not in present]


class Sweeper:
    """A daemon thread in each worker process; one sweep per interval across all of them.

    `r` is a client on the broker's Redis (kombu's queues and `unacked`), `state` the job state,
    which may live in another Redis; the sweep lock lives with the state."""

    def __init__(self, app: Any, r: Any, state: RedisJobStore, lease_ttl_s: float) -> None:
        self.app, self.r, self.state, self.grace = app, r, state, grace_s(lease_ttl_s)
        self.lock = SweepLock(state.r)
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
                    self.sweep_once(conn)
                except Exception as e:  # noqa: BLE001 - Redis away: the next sweep tries again
                    log.warning("redelivery sweep failed: %s", e)
                    conn.close()
                    conn = self.app.connection_for_write()
        finally:
            conn.close()

    def sweep_once(self, conn: Any) -> list[Unacked] | None:
        """One sweep if no other worker's runs (None when one does). The lock then lingers for the
        rest of the interval, so the workers together sweep about once per interval."""
        if not self.lock.acquire():
            return None
        started = time.monotonic()
        try:
            return self.sweep(conn)
        finally:
            self.lock.release(linger_s=max(0.0, SWEEP_INTERVAL_S * 0.9 - (time.monotonic() - started)))

    def sweep(self, conn: Any) -> list[Unacked]:
        """Restore orphaned messages and resend lost tasks, each only while this sweep holds the lock."""
        restored: list[Unacked] = []
        for msg in orphans(self.r, self.state, self.grace):
            if not self.lock.held():
                log.warning("redelivery sweep lost its lock; stopping")
                return restored
            log.warning("%s of job %s: delivered %.0f s ago and no live lease (its worker died); redelivering",
                        msg.unit, msg.job_id, redis_now(self.r) - msg.delivered_at, extra={"job_id": msg.job_id})
            conn.default_channel.qos.restore_by_tag(msg.tag, leftmost=False)
            restored.append(msg)
        for job_id, task in lost(self.r, self.state, self.grace):
            if not self.lock.held():
                log.warning("redelivery sweep lost its lock; stopping")
                return restored
            log.warning("%s of job %s: not committed, not running and in no queue (its message was lost); "
                        "sending it again", task.unit, job_id, extra={"job_id": job_id})
            send(self.app, task.name, job_id=job_id, **task.kwargs())
        return restored


def broker_redis_url(broker: str) -> str | None:
    """The broker URL as redis-py spells it, or None when the broker is not Redis (RabbitMQ)."""
    scheme = urlsplit(broker).scheme
    if scheme not in REDIS_SCHEMES:
        return None
    return REDIS_SCHEMES[scheme] + broker[len(scheme):]


def for_settings(app: Any, settings: Settings, state: RedisJobStore) -> Sweeper | None:
    """The worker process's sweeper: on any Redis broker, with a client on the broker URL (which
    may be another Redis, or another db, than the state's); None, logged, with any other broker."""
    url = broker_redis_url(settings.broker())
    if url is None:
        log.info("broker %s is not Redis: no redelivery sweep (it returns a dead consumer's messages itself)",
                 urlsplit(settings.broker()).scheme)
        return None
    broker = redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=3,
                                  socket_timeout=SOCKET_TIMEOUT_S, health_check_interval=30)
    try:
        state.index_active_jobs()  # jobs from before the set of active jobs was kept (once per deployment)
    except StateError as e:  # Redis away at start: the jobs created from now on are in the set anyway
        log.warning("active jobs not indexed: %s", e)
    return Sweeper(app, broker, state, settings.lease_ttl_s)
