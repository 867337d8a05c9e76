"""A running task's lease on its unit of work, renewed on a heartbeat thread.

Each task computes one unit (`unit_of`: `train-e0`, `sample-e0-p1-b2`). Before any work the task
wrapper (workers.celery_app) checks that the unit is not committed, then takes its lease; while
the stage runs, `Heartbeat` renews the lease every ttl/3 seconds, and on the way out releases it.
A second delivery of the unit finds the lease alive and does not compute (it re-queues itself);
a dead worker stops renewing, so its lease expires within `ttl` and the next delivery takes over
(workers.redelivery brings that delivery on the Redis broker; RabbitMQ returns it at once).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from types import TracebackType

from services.state import JobStore, Lease, StateError
from workers.flow import unit_of

__all__ = ["Heartbeat", "new_lease", "unit_of"]

log = logging.getLogger(__name__)


def new_lease(unit: str, task_id: str, worker: str | None = None) -> Lease:
    """A lease for one execution of a task (its own token: a redelivered copy is another holder)."""
    worker = worker or f"{socket.gethostname()}:{os.getpid()}"
    return Lease(unit=unit, worker=worker, task_id=task_id, since=time.time(), token=uuid.uuid4().hex)


class Heartbeat:
    """Keeps `lease` alive while the block runs: renews it every ttl/3 on a daemon thread and
    releases it on exit. An expired lease is taken again; one taken over (this process stalled past
    the TTL and another delivery started) is logged: both may then compute, and the commits keep the outputs exact."""

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
        self._thread.join()
        try:
            self.state.release_lease(self.job_id, self.lease)
        except StateError as e:  # it expires by itself within the TTL
            log.warning("lease on %s not released: %s", self.lease.unit, e, extra={"job_id": self.job_id})

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                renewed = (self.state.renew_lease(self.job_id, self.lease, self.ttl_s)
                           or self.state.acquire_lease(self.job_id, self.lease, self.ttl_s) is None)
            except StateError as e:  # Redis away for a moment: the next beat tries again
                log.warning("lease on %s not renewed: %s", self.lease.unit, e, extra={"job_id": self.job_id})
                continue
            if not renewed and not self.lost:
                self.lost = True
                log.warning("lease on %s taken over by another delivery; finishing anyway", self.lease.unit,
                            extra={"job_id": self.job_id})
