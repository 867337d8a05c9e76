"""A running task's lease on its unit of work, renewed on a heartbeat thread, and the fence it puts
around the task's writes.

Each task computes one unit (`unit_of`: `train-e0`, `sample-e0-p1-b2`). Before any work the task
wrapper (workers.celery_app) checks that the unit is not committed, then takes its lease; while
the stage runs, `Heartbeat` renews the lease every ttl/3 seconds, and on the way out releases it.
A second delivery of the unit finds the lease alive and does not compute (it re-queues itself);
a dead worker stops renewing, so its lease expires within `ttl` and the next delivery takes over
(workers.redelivery brings that delivery on the Redis broker; RabbitMQ returns it at once).

A process can also stall past the TTL and wake up (a long pause, a frozen VM, SIGSTOP): by then
another delivery may hold the unit, or have finished it and released the lease. A lapsed lease is
therefore never taken again, and the stage runs fenced: its job-state writes go through
`JobStore.fenced` (the lease checked in each write's own Lua script or transaction) and its object
writes through `FencedStore` (the lease renewed just before each put, or each batch of puts sent
out together). The first write after the loss raises LeaseLost, which ends the task without a
trace in the job.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from types import TracebackType

from dfusion_core.storage import BlobStore
from services.state import JobStore, Lease, LeaseLost, StateError
from services.storage import fan_out
from workers.flow import unit_of

__all__ = ["FencedStore", "Heartbeat", "new_lease", "unit_of"]

log = logging.getLogger(__name__)


def new_lease(unit: str, task_id: str, worker: str | None = None) -> Lease:
    """A lease for one execution of a task (its own token: a redelivered copy is another holder)."""
    worker = worker or f"{socket.gethostname()}:{os.getpid()}"
    return Lease(unit=unit, worker=worker, task_id=task_id, since=time.time(), token=uuid.uuid4().hex)


class Heartbeat:
    """Keeps `lease` alive while the block runs: renews it every ttl/3 on a daemon thread and
    releases it on exit. A renewal that finds the lease gone or another's sets `lost` for good:
    the thread stops, and `check` raises LeaseLost from then on."""

    def __init__(self, state: JobStore, job_id: str, lease: Lease, ttl_s: float) -> None:
        self.state, self.job_id, self.lease, self.ttl_s = state, job_id, lease, ttl_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{lease.unit}", daemon=True)
        self.lost = False

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        # A renewal in flight ends within the client's socket timeout; the thread is a daemon and
        # stops after it, so the task does not wait on it past a TTL.
        self._thread.join(self.ttl_s)
        try:
            self.state.release_lease(self.job_id, self.lease)
        except StateError as e:  # it expires by itself within the TTL
            log.warning("lease on %s not released: %s", self.lease.unit, e, extra={"job_id": self.job_id})

    def check(self) -> None:
        """Renew the lease now, or raise LeaseLost: the guard before a write no Redis script can
        fence (an object put). StateUnavailable when Redis cannot say: no write either way."""
        if not self.lost and not self.state.renew_lease(self.job_id, self.lease, self.ttl_s):
            self._lose()
        if self.lost:
            raise LeaseLost(f"job {self.job_id}: the lease on {self.lease.unit} was lost")

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                renewed = self.state.renew_lease(self.job_id, self.lease, self.ttl_s)
            # Redis away or refusing writes (READONLY after a failover): the next beat tries again.
            # Whatever it is, the thread must live: a dead one lets the lease lapse unseen.
            except Exception as e:  # noqa: BLE001
                log.warning("lease on %s not renewed: %s", self.lease.unit, e, extra={"job_id": self.job_id})
                continue
            if not renewed:
                self._lose()
                return

    def _lose(self) -> None:
        if not self.lost:
            self.lost = True
            log.warning("lease on %s lapsed (not renewed within its TTL): the unit is another delivery's "
                        "now; this one's writes are refused", self.lease.unit, extra={"job_id": self.job_id})


class FencedStore:
    """The object store for a task under `beat`: puts and deletes go out only right after the lease
    was renewed (`Heartbeat.check`), so a task that lost its unit stores nothing more.

    No Redis script can cover an object write: a put already past its check when the process
    stalls still lands, late. It lands at the unit's deterministic key (workers.keys) with what the
    unit computes from committed inputs and seeds derived from the job's: on the same kind of device,
    the very bytes the winner stored there, as a crash rerun's are.

    Each put or delete that lands is then entered in the job's ledger of stored bytes through
    `state` (the task's fenced JobStore: `record_objects` / `forget_object`), keyed by the object,
    so a key written again by a redelivery or rerun replaces its entry instead of adding to it.
    """

    def __init__(self, store: BlobStore, beat: Heartbeat, state: JobStore) -> None:
        self.store, self.beat, self.state = store, beat, state

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.put_many([(key, data, content_type)])

    def put_many(self, objects: Sequence[tuple[str, bytes, str]]) -> None:
        """Store a task's batch of (key, data, content type) concurrently behind one lease check,
        then enter those that landed in the ledger in one step (fenced: a lease lost meanwhile
        records none; the winner's puts of the same keys record them): two Redis round trips a
        batch, not two a put.

        A renewal keeps the lease ours for a TTL from when it was sent, so a put issued within a
        third of that after the batch's check is as fenced as one right after its own check. One
        issued later (the process stalled mid-batch, or the store is slow) renews again first."""
        fresh = [time.monotonic()]  # when the latest renewal that succeeded was sent
        self.beat.check()

        def put(obj: tuple[str, bytes, str]) -> None:
            now = time.monotonic()
            if now - fresh[0] > self.beat.ttl_s / 3:
                self.beat.check()
                fresh[0] = max(fresh[0], now)  # only once it succeeded: a failed one covers no put
            self.store.put(*obj)

        done = fan_out(put, objects)
        landed = {key: len(data) for (key, data, _), f in zip(objects, done, strict=True) if f.exception() is None}
        self.state.record_objects(self.beat.job_id, landed)
        for f in done:
            f.result()  # the first failed put, once the ledger holds the puts that did land

    def delete(self, key: str) -> None:
        self.beat.check()
        self.store.delete(key)
        self.state.forget_object(self.beat.job_id, key)

    def get(self, key: str) -> bytes:
        return self.store.get(key)

    def exists(self, key: str) -> bool:
        return self.store.exists(key)

    def list(self, prefix: str = "") -> list[str]:
        return self.store.list(prefix)

    def sizes(self, prefix: str = "") -> dict[str, int]:
        return self.store.sizes(prefix)
