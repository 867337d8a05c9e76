"""The retention sweep: with `Settings.retention_days` set, ended jobs older than that are purged
(services.retention.purge_expired: their objects and Redis keys, nothing of any other job).

Every worker process runs a `RetentionSweeper` thread; a Redis lock that outlives the sweep
interval lets one of them sweep per interval, whichever takes it first.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from dfusion_core.storage import BlobStore
from services.retention import DAY_S, purge_expired
from services.state import JobStore
from services.telemetry import Telemetry

log = logging.getLogger(__name__)

LOCK_KEY = "dfusion:retention:lock"


class RetentionSweeper:
    """A daemon thread: every `interval_s`, if this process takes the lock, purge the expired jobs."""

    def __init__(self, r: Any, state: JobStore, store: BlobStore, retention_days: float, interval_s: float) -> None:
        self.r, self.state, self.store = r, state, store
        self.retention_s, self.interval_s = retention_days * DAY_S, interval_s
        self._stop = threading.Event()

    def start(self) -> RetentionSweeper:
        threading.Thread(target=self._loop, name="dfusion-retention", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sweep_once()
            except Exception:  # noqa: BLE001 - Redis or S3 away: the next interval tries again
                log.exception("retention sweep failed")

    def sweep_once(self) -> int:
        """Purge the expired jobs if no other process swept in this interval; how many were purged."""
        if not self.r.set(LOCK_KEY, "1", nx=True, px=max(1, int(self.interval_s * 1000 * 0.9))):
            return 0
        done = purge_expired(self.state, self.store, self.retention_s, forget=Telemetry(self.r).forget_job)
        if done:
            log.info("retention: purged %d jobs older than %g days", len(done), self.retention_s / DAY_S)
        return len(done)
