"""In-process job state with JobState's interface, for the embedded one-command mode (no Redis).

Same semantics as `services.state.JobState` for everything the workers call: checked status
transitions, insert-once records that bump their counters, exactly-once fan-in, policy CAS.
A lock makes each operation atomic, as a Lua script is in Redis.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from typing import Any

from dfusion_core.errors import ConfigError
from services.state import COUNTER_NAMES
from services.state_types import (
    TRANSITIONS,
    InvalidTransition,
    JobExists,
    JobNotFound,
    JobRecord,
    JobStatus,
    StateError,
)


class MemoryState:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._jobs: dict[str, dict[str, Any]] = {}

    def _job(self, job_id: str) -> dict[str, Any]:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise JobNotFound(job_id) from None

    def create_job(self, job_id: str, tenant: str, spec: dict[str, Any], max_active: int | None = None) -> JobRecord:
        with self._lock:
            if job_id in self._jobs:
                raise JobExists(f"job {job_id} already exists")
            now = time.time()
            self._jobs[job_id] = {
                "head": {"job_id": job_id, "tenant": tenant, "status": "queued", "spec": json.dumps(spec),
                         "error": "", "created_at": repr(now), "updated_at": repr(now), "policy_version": "0"},
                "counts": dict.fromkeys(COUNTER_NAMES, 0),
                "samples": {}, "pairs": {}, "checkpoints": {}, "metrics": {}, "done": {}, "fired": set(),
            }
            return self.get_job(job_id)

    def get_job(self, job_id: str) -> JobRecord:
        with self._lock:
            return JobRecord.from_hash(self._job(job_id)["head"])

    def list_jobs(self, tenant: str) -> list[JobRecord]:
        with self._lock:
            jobs = [JobRecord.from_hash(j["head"]) for j in self._jobs.values() if j["head"]["tenant"] == tenant]
        return sorted(jobs, key=lambda j: -j.created_at)

    def set_status(self, job_id: str, status: JobStatus, error: str | None = None) -> JobRecord:
        status = JobStatus(status)
        with self._lock:
            head = self._job(job_id)["head"]
            current = JobStatus(head["status"])
            if current != status:
                if status not in TRANSITIONS[current]:
                    raise InvalidTransition(job_id, current, status)
                head.update(status=status.value, error=error or "", updated_at=repr(time.time()))
            return self.get_job(job_id)

    def is_cancelled(self, job_id: str) -> bool:
        return self.get_job(job_id).status == JobStatus.CANCELLED

    def incr_count(self, job_id: str, name: str, n: int = 1) -> int:
        if name not in COUNTER_NAMES:
            raise ConfigError("name", f"counter must be one of {COUNTER_NAMES}, got {name!r}")
        with self._lock:
            counts = self._job(job_id)["counts"]
            counts[name] += n
            return int(counts[name])

    def get_counts(self, job_id: str) -> dict[str, int]:
        with self._lock:
            return dict(self._job(job_id)["counts"])

    def append_metrics(self, job_id: str, metrics: dict[str, Any]) -> None:
        with self._lock:
            self._job(job_id)["metrics"][int(metrics["epoch"])] = copy.deepcopy(metrics)

    def get_metrics(self, job_id: str) -> list[dict[str, Any]]:
        with self._lock:
            m = self._job(job_id)["metrics"]
            return [copy.deepcopy(m[k]) for k in sorted(m)]

    def policy_version(self, job_id: str) -> int:
        return self.get_job(job_id).policy_version

    def advance_policy(self, job_id: str, expected: int, new: int) -> bool:
        with self._lock:
            head = self._job(job_id)["head"]
            if int(head["policy_version"]) != expected:
                return False
            head["policy_version"] = str(new)
            return True

    def _insert(self, job_id: str, kind: str, rid: str, record: dict[str, Any], counter: str) -> bool:
        with self._lock:
            job = self._job(job_id)
            if rid in job[kind]:
                return False
            job[kind][rid] = copy.deepcopy(record)
            if counter:
                job["counts"][counter] += 1
            return True

    def put_sample(self, job_id: str, sample_id: str, record: dict[str, Any]) -> bool:
        return self._insert(job_id, "samples", sample_id, record, "samples")

    def get_sample(self, job_id: str, sample_id: str) -> dict[str, Any] | None:
        with self._lock:
            return copy.deepcopy(self._job(job_id)["samples"].get(sample_id))

    def update_sample(self, job_id: str, sample_id: str, updates: dict[str, Any]) -> bool:
        return self._merge(job_id, "samples", sample_id, updates, first="score", counter="scored")

    def update_pair(self, job_id: str, pair_id: str, updates: dict[str, Any]) -> bool:
        return self._merge(job_id, "pairs", pair_id, updates, first="target_score", counter="")

    def _merge(self, job_id: str, kind: str, rid: str, updates: dict[str, Any], first: str, counter: str) -> bool:
        with self._lock:
            job = self._job(job_id)
            record = job[kind].get(rid)
            if record is None:
                raise StateError(f"job {job_id}: no {kind[:-1]} {rid!r} to update")
            was_first = record.get(first) is None and updates.get(first) is not None
            record.update(copy.deepcopy(updates))
            if was_first and counter:
                job["counts"][counter] += 1
            return was_first

    def list_samples(self, job_id: str) -> dict[str, dict[str, Any]]:
        with self._lock:
            s = self._job(job_id)["samples"]
            return {k: copy.deepcopy(s[k]) for k in sorted(s)}

    def put_pair(self, job_id: str, pair_id: str, record: dict[str, Any]) -> bool:
        return self._insert(job_id, "pairs", pair_id, record, "pairs")

    def list_pairs(self, job_id: str) -> dict[str, dict[str, Any]]:
        with self._lock:
            p = self._job(job_id)["pairs"]
            return {k: copy.deepcopy(p[k]) for k in sorted(p)}

    def put_checkpoint(self, job_id: str, version: int, record: dict[str, Any]) -> bool:
        return self._insert(job_id, "checkpoints", str(version), {**record, "version": version}, "")

    def list_checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        with self._lock:
            c = self._job(job_id)["checkpoints"]
            return [copy.deepcopy(c[k]) for k in sorted(c, key=int)]

    def mark_done(self, job_id: str, scope: str, member: str, expected: int) -> bool:
        with self._lock:
            job = self._job(job_id)
            members = job["done"].setdefault(scope, set())
            members.add(member)
            if len(members) >= expected and scope not in job["fired"]:
                job["fired"].add(scope)
                return True
            return False

    def done_count(self, job_id: str, scope: str) -> int:
        with self._lock:
            return len(self._job(job_id)["done"].get(scope, ()))
