"""Redis coordination of units of work: fan-in sets, unit commits and per-unit leases.

A mixin of `RedisJobStore` (services/state/redis.py), kept apart so each file reads as one idea:
redis.py holds job records, this file what workers use to agree on who does what, once.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any, Self, TypeVar

import redis

from services.state import keys
from services.state.scripts import ACQUIRE_LEASE, MARK_DONE, RELEASE_LEASE, RENEW_LEASE, WRITE
from services.state.types import (
    Lease,
    LeaseLost,
    StateError,
    StateUnavailable,
    check_expected,
    check_id,
    check_ttl,
)

F = TypeVar("F", bound=Callable[..., Any])

#: Errors Redis answers while it cannot take writes for a while (a replica after a failover, memory
#: full): as transient as a lost connection.
_REFUSALS = (redis.exceptions.ReadOnlyError, redis.exceptions.OutOfMemoryError)


def mapped(fn: F) -> F:
    """Redis's errors as ours: unreachable or refusing writes for a while is StateUnavailable
    (Celery's autoretry target), a fenced write refused is LeaseLost, any other error StateError."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
            raise StateUnavailable(f"{fn.__name__}: cannot reach Redis: {e}") from e
        except _REFUSALS as e:
            raise StateUnavailable(f"{fn.__name__}: Redis refused: {e}") from e
        except redis.exceptions.ResponseError as e:
            if str(e).startswith("LEASELOST"):
                raise LeaseLost(f"{fn.__name__}: {str(e).removeprefix('LEASELOST ')}") from None
            raise StateError(f"{fn.__name__}: Redis error: {e}") from e

    return wrapper  # type: ignore[return-value]


class RedisCoordination:
    """Fan-in, unit commits, leases and write fencing on the client `self.r` (set by the store)."""

    r: Any
    _fencing: tuple[str, Lease] | None = None  # (job id, lease) of a store from `fenced`

    def _register_coordination(self, client: redis.Redis) -> None:
        self._mark_done = client.register_script(MARK_DONE)
        self._acquire = client.register_script(ACQUIRE_LEASE)
        self._renew = client.register_script(RENEW_LEASE)
        self._release = client.register_script(RELEASE_LEASE)
        self._write_script = client.register_script(WRITE)

    # --- fencing ---
    def fenced(self, job_id: str, lease: Lease) -> Self:
        """This store on the same connections, its writes to `job_id` fenced by `lease`."""
        view = copy.copy(self)
        view._fencing = (check_id("job_id", job_id), lease)
        return view

    def _fence(self, job_id: str) -> tuple[str, str]:
        """KEYS[1] and ARGV[1] of a fenced script (scripts.FENCE) writing to `job_id`."""
        if self._fencing is None:
            return keys.job(job_id), ""
        fenced_job, lease = self._fencing
        assert job_id == fenced_job, f"a store fenced for job {fenced_job} wrote to job {job_id}"
        return keys.lease(job_id, lease.unit), lease.dump()

    def _write(self, job_id: str, command: str, key: str, *args: str | int) -> Any:
        """One write command (HINCRBY, HSET, SADD) on a key of `job_id`, fenced like the scripts."""
        fence, holder = self._fence(job_id)
        return self._write_script(keys=[fence, key], args=[holder, command, *args])

    # --- fan-in ---
    @mapped
    def mark_done(self, job_id: str, scope: str, member: str, expected: int) -> bool:
        """Add `member` to the `scope` set; True exactly once, for the call that completes it.

        The next stage is enqueued by whoever gets True, so duplicates and redeliveries of any
        member (before or after completion) never enqueue it twice.
        """
        scope_key = keys.job(job_id, "done", check_id("scope", scope))
        fence, holder = self._fence(job_id)
        fired = int(self._mark_done(keys=[fence, scope_key, f"{scope_key}:fired"],
                                    args=[holder, member, check_expected(expected)]))
        return fired == 1

    @mapped
    def done_count(self, job_id: str, scope: str) -> int:
        return int(self.r.scard(keys.job(job_id, "done", check_id("scope", scope))))


    # --- units of work: commits and leases ---
    @mapped
    def commit_unit(self, job_id: str, unit: str) -> bool:
        return int(self._write(job_id, "SADD", keys.job(job_id, "units"), check_id("unit", unit))) == 1

    @mapped
    def unit_committed(self, job_id: str, unit: str) -> bool:
        return bool(self.r.sismember(keys.job(job_id, "units"), check_id("unit", unit)))

    @mapped
    def committed_units(self, job_id: str) -> set[str]:
        return set(self.r.smembers(keys.job(job_id, "units")))

    @mapped
    def committed_count(self, job_id: str) -> int:
        return int(self.r.scard(keys.job(job_id, "units")))

    @mapped
    def acquire_lease(self, job_id: str, lease: Lease, ttl_s: float) -> Lease | None:
        """SET with a TTL unless another holder's lease is alive (then that holder)."""
        held = self._acquire(keys=[keys.lease(job_id, check_id("unit", lease.unit)), keys.job(job_id, "leases")],
                             args=[lease.dump(), check_ttl(ttl_s), lease.unit])
        return None if held is None else Lease.load(lease.unit, held)

    @mapped
    def renew_lease(self, job_id: str, lease: Lease, ttl_s: float) -> bool:
        return int(self._renew(keys=[keys.lease(job_id, lease.unit)], args=[lease.dump(), check_ttl(ttl_s)])) == 1

    @mapped
    def release_lease(self, job_id: str, lease: Lease) -> None:
        self._release(keys=[keys.lease(job_id, lease.unit), keys.job(job_id, "leases")], args=[lease.dump(), lease.unit])

    @mapped
    def leases(self, job_id: str) -> list[Lease]:
        """Units ever leased and not released, read back; an expired lease (a dead holder) reads as none."""
        units = sorted(self.r.smembers(keys.job(job_id, "leases")))
        raw = self.r.mget([keys.lease(job_id, u) for u in units]) if units else []
        return [Lease.load(u, v) for u, v in zip(units, raw, strict=True) if v is not None]
