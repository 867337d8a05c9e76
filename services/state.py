"""Job state in Redis: the only module that builds Redis keys (all under `dfusion:`).

Workers are redelivered (acks_late), so every write here is idempotent or checked: records are
insert-once with their counters bumped in the same atomic step, fan-in fires exactly once, status
moves only along allowed transitions, and the policy version advances by compare-and-set. Per-job
keys share the hash tag `{job_id}` so a job's multi-key scripts stay in one cluster slot.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from dfusion_core.errors import ConfigError
from services.state_types import (
    TRANSITIONS,
    InvalidTransition,
    JobExists,
    JobNotFound,
    JobRecord,
    JobStatus,
    StateError,
    StateUnavailable,
    TooManyJobs,
)

__all__ = [
    "COUNTER_NAMES", "TRANSITIONS", "InvalidTransition", "JobExists", "JobNotFound", "JobRecord",
    "JobState", "JobStatus", "StateError", "StateUnavailable", "TooManyJobs", "hash_token", "open_state",
]

PREFIX = "dfusion"
COUNTER_NAMES = ("samples", "scored", "pairs", "trained_steps")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


# --- Lua scripts: each is one atomic step --------------------------------------------------------

# KEYS: job, tenant_jobs, tenant_active. ARGV: job_id, tenant, spec, now, max_active (-1 = none)
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local max = tonumber(ARGV[5])
if max >= 0 and redis.call('SCARD', KEYS[3]) >= max then return -2 end
redis.call('HSET', KEYS[1], 'job_id', ARGV[1], 'tenant', ARGV[2], 'status', 'queued', 'spec', ARGV[3],
           'error', '', 'created_at', ARGV[4], 'updated_at', ARGV[4], 'policy_version', 0)
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
return 1
"""

# KEYS: job, tenant_active. ARGV: new, now, error, terminal(0/1), job_id, allowed-from...
_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {-1, ''} end
if cur == ARGV[1] then return {0, cur} end
for i = 6, #ARGV do
  if ARGV[i] == cur then
    redis.call('HSET', KEYS[1], 'status', ARGV[1], 'updated_at', ARGV[2], 'error', ARGV[3])
    if ARGV[4] == '1' then redis.call('SREM', KEYS[2], ARGV[5]) end
    return {1, cur}
  end
end
return {-2, cur}
"""

# KEYS: job, records, counts. ARGV: id, json, counter ('' = none). -1 no job, 1 inserted, 0 existed
_PUT_ONCE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 1 then
  if ARGV[3] ~= '' then redis.call('HINCRBY', KEYS[3], ARGV[3], 1) end
  return 1
end
return 0
"""

# KEYS: job. ARGV: expected, new
_CAS_POLICY = """
local cur = redis.call('HGET', KEYS[1], 'policy_version')
if not cur then return -1 end
if tonumber(cur) ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'policy_version', ARGV[2])
return 1
"""

# KEYS: members, fired. ARGV: member, expected
_MARK_DONE = """
redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) and redis.call('SETNX', KEYS[2], '1') == 1 then
  return 1
end
return 0
"""

F = TypeVar("F", bound=Callable[..., Any])


def _mapped(fn: F) -> F:
    """Redis connection failures surface as StateUnavailable (Celery's autoretry target)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
            raise StateUnavailable(f"{fn.__name__}: cannot reach Redis: {e}") from e

    return wrapper  # type: ignore[return-value]


def _check_id(field: str, value: str) -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise ConfigError(field, f"must be 1-128 chars of [A-Za-z0-9_.:-] starting alphanumeric, got {value!r}")
    return value


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, allow_nan=False)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class JobState:
    """Typed access to job state; one instance per process wraps one Redis connection pool."""

    def __init__(self, client: redis.Redis) -> None:
        if not client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ConfigError("client", "JobState needs a Redis client built with decode_responses=True")
        # redis-py types replies as bytes | str; decode_responses=True (checked above) makes them str.
        self.r: Any = client
        self._create = client.register_script(_CREATE)
        self._transition = client.register_script(_TRANSITION)
        self._put_once = client.register_script(_PUT_ONCE)
        self._cas_policy = client.register_script(_CAS_POLICY)
        self._mark_done = client.register_script(_MARK_DONE)

    @classmethod
    def from_url(cls, url: str) -> JobState:
        return cls(redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=3, health_check_interval=30))

    # --- keys (the only place they are built) ---
    @staticmethod
    def _k(job_id: str, *parts: str) -> str:
        return ":".join((PREFIX, "job", "{" + _check_id("job_id", job_id) + "}", *parts))

    @staticmethod
    def _tk(tenant: str, part: str) -> str:
        return f"{PREFIX}:tenant:{_check_id('tenant', tenant)}:{part}"

    # --- jobs ---
    @_mapped
    def create_job(
        self, job_id: str, tenant: str, spec: dict[str, Any], max_active: int | None = None
    ) -> JobRecord:
        """Create a queued job; with `max_active`, refuse (TooManyJobs) when the tenant is at the limit."""
        now = repr(time.time())
        args: list[str | int] = [job_id, tenant, _dumps(spec), now, -1 if max_active is None else max_active]
        keys = [self._k(job_id), self._tk(tenant, "jobs"), self._tk(tenant, "active")]
        rc = self._create(keys=keys, args=args)
        if rc == -1:
            raise JobExists(f"job {job_id} already exists")
        if rc == -2:
            raise TooManyJobs(f"tenant {tenant} already has {max_active} active jobs; wait for one to finish")
        return self.get_job(job_id)

    @_mapped
    def get_job(self, job_id: str) -> JobRecord:
        h = self.r.hgetall(self._k(job_id))
        if not h:
            raise JobNotFound(job_id)
        return JobRecord.from_hash(h)

    @_mapped
    def list_jobs(self, tenant: str) -> list[JobRecord]:
        """The tenant's jobs, newest first."""
        ids = self.r.zrevrange(self._tk(tenant, "jobs"), 0, -1)
        pipe = self.r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(self._k(job_id))
        return [JobRecord.from_hash(h) for h in pipe.execute() if h]

    @_mapped
    def active_jobs(self, tenant: str) -> int:
        """Number of the tenant's jobs not yet in a terminal status."""
        return int(self.r.scard(self._tk(tenant, "active")))

    @_mapped
    def set_status(self, job_id: str, status: JobStatus, error: str | None = None) -> JobRecord:
        """Move the job to `status` atomically; InvalidTransition if not allowed from where it is.

        Setting the status it already has is a no-op (a redelivered task may repeat it).
        """
        status = JobStatus(status)
        allowed = [s.value for s, targets in TRANSITIONS.items() if status in targets]
        job = self.get_job(job_id)
        rc, cur = self._transition(
            keys=[self._k(job_id), self._tk(job.tenant, "active")],
            args=[status.value, repr(time.time()), error or "", int(status.terminal), job_id, *allowed],
        )
        if rc == -1:
            raise JobNotFound(job_id)
        if rc == -2:
            raise InvalidTransition(job_id, JobStatus(cur), status)
        return self.get_job(job_id)

    @_mapped
    def is_cancelled(self, job_id: str) -> bool:
        return self.r.hget(self._k(job_id), "status") == JobStatus.CANCELLED.value

    @_mapped
    def delete_job(self, job_id: str) -> None:
        """Remove every key of the job (tests, retention)."""
        job = self.get_job(job_id)
        keys = list(self.r.scan_iter(match=self._k(job_id) + "*", count=500))
        pipe = self.r.pipeline()
        if keys:
            pipe.delete(*keys)
        pipe.zrem(self._tk(job.tenant, "jobs"), job_id)
        pipe.srem(self._tk(job.tenant, "active"), job_id)
        pipe.execute()

    @_mapped
    def count_by_status(self) -> dict[str, int]:
        """Jobs per status over all tenants (SCAN of the tenant indexes; fine at scrape rates)."""
        tally = dict.fromkeys((s.value for s in JobStatus), 0)
        for key in self.r.scan_iter(match=f"{PREFIX}:tenant:*:jobs", count=500):
            for job in self.list_jobs(key[len(f"{PREFIX}:tenant:") : -len(":jobs")]):
                tally[job.status.value] += 1
        return tally

    @_mapped
    def queue_depths(self, queues: tuple[str, ...]) -> dict[str, int]:
        """Messages waiting in each Celery queue (the broker keeps a Redis list per queue name)."""
        return {q: int(self.r.llen(q)) for q in queues}

    # --- counters and metrics ---
    @_mapped
    def incr_count(self, job_id: str, name: str, n: int = 1) -> int:
        if name not in COUNTER_NAMES:
            raise ConfigError("name", f"counter must be one of {COUNTER_NAMES}, got {name!r}")
        return int(self.r.hincrby(self._k(job_id, "counts"), name, n))

    @_mapped
    def get_counts(self, job_id: str) -> dict[str, int]:
        raw = self.r.hgetall(self._k(job_id, "counts"))
        return {name: int(raw.get(name, 0)) for name in COUNTER_NAMES}

    @_mapped
    def append_metrics(self, job_id: str, metrics: dict[str, Any]) -> None:
        """Record one epoch's metrics; `metrics["epoch"]` (int) keys it, so a redelivery overwrites."""
        epoch = metrics.get("epoch")
        if not isinstance(epoch, int) or epoch < 0:
            raise ConfigError("metrics", f"needs an integer 'epoch' >= 0, got {epoch!r}")
        self.r.hset(self._k(job_id, "metrics"), str(epoch), _dumps(metrics))

    @_mapped
    def get_metrics(self, job_id: str) -> list[dict[str, Any]]:
        """Per-epoch metrics in epoch order."""
        raw = self.r.hgetall(self._k(job_id, "metrics"))
        return [json.loads(raw[k]) for k in sorted(raw, key=int)]

    # --- policy version ---
    @_mapped
    def policy_version(self, job_id: str) -> int:
        v = self.r.hget(self._k(job_id), "policy_version")
        if v is None:
            raise JobNotFound(job_id)
        return int(v)

    @_mapped
    def advance_policy(self, job_id: str, expected: int, new: int) -> bool:
        """Set the policy version to `new` only if it is still `expected`; False means someone did."""
        rc = self._cas_policy(keys=[self._k(job_id)], args=[int(expected), int(new)])
        if rc == -1:
            raise JobNotFound(job_id)
        return rc == 1

    # --- insert-once records ---
    @_mapped
    def put_sample(self, job_id: str, sample_id: str, record: dict[str, Any]) -> bool:
        """Store a sample once; True (and `samples` += 1) only on the first insert."""
        return self._insert(job_id, "samples", _check_id("sample_id", sample_id), record, "samples")

    @_mapped
    def get_sample(self, job_id: str, sample_id: str) -> dict[str, Any] | None:
        raw = self.r.hget(self._k(job_id, "samples"), sample_id)
        return json.loads(raw) if raw is not None else None

    @_mapped
    def update_sample(self, job_id: str, sample_id: str, updates: dict[str, Any]) -> bool:
        """Merge `updates` into a stored sample; True (and `scored` += 1) when this call set its first score."""
        return self._merge(job_id, "samples", sample_id, updates, first="score", counter="scored")

    @_mapped
    def update_pair(self, job_id: str, pair_id: str, updates: dict[str, Any]) -> bool:
        """Merge `updates` (e.g. `target_score`, `trained`) into a stored pair; True when this call
        set its first `target_score`. No counter moves: pairs are counted when inserted."""
        return self._merge(job_id, "pairs", pair_id, updates, first="target_score", counter="")

    def _merge(self, job_id: str, kind: str, rid: str, updates: dict[str, Any], first: str, counter: str) -> bool:
        """Merge `updates` into record `rid`; True when `updates` set field `first` for the first time
        (then `counter` += 1 in the same transaction). WATCH/MULTI rather than Lua so floats
        round-trip exactly through Python's json."""
        key, counts = self._k(job_id, kind), self._k(job_id, "counts")
        was_first = False

        def txn(pipe: redis.client.Pipeline) -> None:
            nonlocal was_first
            raw = pipe.hget(key, rid)
            if raw is None:
                raise StateError(f"job {job_id}: no {kind[:-1]} {rid!r} to update")
            record = json.loads(raw)
            was_first = record.get(first) is None and updates.get(first) is not None
            pipe.multi()
            pipe.hset(key, rid, _dumps({**record, **updates}))
            if was_first and counter:
                pipe.hincrby(counts, counter, 1)

        self.r.transaction(txn, key)
        return was_first

    @_mapped
    def list_samples(self, job_id: str) -> dict[str, dict[str, Any]]:
        """sample_id -> record, ordered by id."""
        return self._records(job_id, "samples")

    @_mapped
    def put_pair(self, job_id: str, pair_id: str, record: dict[str, Any]) -> bool:
        """Store a preference pair once; True (and `pairs` += 1) only on the first insert."""
        return self._insert(job_id, "pairs", _check_id("pair_id", pair_id), record, "pairs")

    @_mapped
    def list_pairs(self, job_id: str) -> dict[str, dict[str, Any]]:
        return self._records(job_id, "pairs")

    @_mapped
    def put_checkpoint(self, job_id: str, version: int, record: dict[str, Any]) -> bool:
        """Record the checkpoint for a policy version once (e.g. its LoRA object key)."""
        if not isinstance(version, int) or version < 0:
            raise ConfigError("version", f"must be an int >= 0, got {version!r}")
        return self._insert(job_id, "checkpoints", str(version), {**record, "version": version}, "")

    @_mapped
    def list_checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        """Checkpoint records in version order."""
        raw = self.r.hgetall(self._k(job_id, "checkpoints"))
        return [json.loads(raw[k]) for k in sorted(raw, key=int)]

    def _insert(self, job_id: str, kind: str, rid: str, record: dict[str, Any], counter: str) -> bool:
        keys = [self._k(job_id), self._k(job_id, kind), self._k(job_id, "counts")]
        rc = int(self._put_once(keys=keys, args=[rid, _dumps(record), counter]))
        if rc == -1:
            raise JobNotFound(job_id)
        return rc == 1

    def _records(self, job_id: str, kind: str) -> dict[str, dict[str, Any]]:
        raw = self.r.hgetall(self._k(job_id, kind))
        return {k: json.loads(raw[k]) for k in sorted(raw)}

    # --- fan-in ---
    @_mapped
    def mark_done(self, job_id: str, scope: str, member: str, expected: int) -> bool:
        """Add `member` to the `scope` set; True exactly once, for the call that completes it.

        The next stage is enqueued by whoever gets True, so duplicates and redeliveries of any
        member (before or after completion) never enqueue it twice.
        """
        if expected < 1:
            raise ConfigError("expected", f"must be >= 1, got {expected}")
        keys = [self._k(job_id, "done", _check_id("scope", scope)), self._k(job_id, "done", scope, "fired")]
        return int(self._mark_done(keys=keys, args=[member, expected])) == 1

    @_mapped
    def done_count(self, job_id: str, scope: str) -> int:
        return int(self.r.scard(self._k(job_id, "done", _check_id("scope", scope))))

    # --- API tokens (only their sha256 is stored) ---
    @_mapped
    def create_token(self, tenant: str) -> str:
        token = secrets.token_urlsafe(32)
        digest = hash_token(token)
        pipe = self.r.pipeline()
        pipe.set(f"{PREFIX}:token:{digest}", _check_id("tenant", tenant))
        pipe.sadd(self._tk(tenant, "tokens"), digest)
        pipe.execute()
        return token

    @_mapped
    def tenant_for_token(self, token: str) -> str | None:
        if not token:
            return None
        return self.r.get(f"{PREFIX}:token:{hash_token(token)}")

    @_mapped
    def revoke_token(self, token: str) -> bool:
        digest = hash_token(token)
        tenant = self.r.getdel(f"{PREFIX}:token:{digest}")
        if tenant is None:
            return False
        self.r.srem(self._tk(tenant, "tokens"), digest)
        return True


@functools.lru_cache(maxsize=8)
def _state_for(url: str, pid: int) -> JobState:
    return JobState.from_url(url)


def open_state(redis_url: str) -> JobState:
    """The process's JobState for this Redis URL (one connection pool per process, fork-safe)."""
    return _state_for(redis_url, os.getpid())
