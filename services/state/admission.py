"""Fair admission of a job's tasks to the stage queues (docs/fairness.md): at most `cap` tasks of one
job wait in a stage's broker queue at a time; the job's other ready tasks are held in Redis, in the
order the flow made them ready, and one enters the queue each time one of the job's waiting tasks
is taken by a worker. Every job then has a few tasks in each queue, and the queue's FIFO serves
the active jobs in turn: a small job's task waits behind at most `cap` tasks of each other job.

Per job and queue, under the job's hash tag (deleted with the job): `waiting:<queue>`, the units
sent and not yet taken (a set), and `held:<queue>`, the payloads not yet sent (a list). Only the
moment a task is published changes; units, leases, commits and fan-ins do not, so exactly-once and
the lease rules are those of any other delivery. A payload lost between being taken from `held`
and published (a crash) is a unit in no queue: the redelivery sweep's `lost` check sends it again
once the job stalls.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dfusion_core.errors import ConfigError
from services.state import keys
from services.state.redis_units import mapped
from services.state.types import check_id

# KEYS: waiting, held. ARGV: unit, payload, cap. 1 = publish now, 0 = held.
ADMIT = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('SCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('SADD', KEYS[1], ARGV[1])
  return 1
end
redis.call('RPUSH', KEYS[2], ARGV[2])
return 0
"""

# KEYS: waiting, held, job. ARGV: unit, cap. Returns the payloads to publish now (units marked waiting).
# A job that has ended publishes nothing more: its held tasks would only skip.
STARTED = """
redis.call('SREM', KEYS[1], ARGV[1])
local status = redis.call('HGET', KEYS[3], 'status')
if status == false or status == 'succeeded' or status == 'failed' or status == 'cancelled' then
  redis.call('DEL', KEYS[2])
  return {}
end
local out = {}
while redis.call('SCARD', KEYS[1]) < tonumber(ARGV[2]) do
  local payload = redis.call('LPOP', KEYS[2])
  if not payload then break end
  redis.call('SADD', KEYS[1], cjson.decode(payload)['unit'])
  table.insert(out, payload)
end
return out
"""


@dataclass(frozen=True)
class Held:
    """A task not yet published: its name, kwargs (job_id included) and unit."""

    name: str
    kwargs: dict[str, Any]
    unit: str

    def dump(self) -> str:
        return json.dumps({"name": self.name, "kwargs": self.kwargs, "unit": self.unit}, sort_keys=True)

    @classmethod
    def load(cls, raw: str) -> Held:
        d = json.loads(raw)
        return cls(d["name"], d["kwargs"], d["unit"])


class Admission:
    """The admission state on a Redis client (decode_responses=True); `cap` >= 1 tasks per job and queue."""

    def __init__(self, client: Any, cap: int) -> None:
        if cap < 1:
            raise ConfigError("cap", f"must be >= 1 task per job and queue, got {cap}")
        self.r, self.cap = client, cap
        self._admit = client.register_script(ADMIT)
        self._started = client.register_script(STARTED)

    @mapped
    def admit(self, job_id: str, queue: str, task: Held) -> bool:
        """True: publish the task now (it counts as waiting); False: it is held until a slot frees."""
        return int(self._admit(keys=[_waiting(job_id, queue), _held(job_id, queue)],
                               args=[task.unit, task.dump(), self.cap])) == 1

    @mapped
    def started(self, job_id: str, queue: str, unit: str) -> list[Held]:
        """A worker took `unit`'s task: it waits no more; the held tasks to publish in its place."""
        raw = self._started(keys=[_waiting(job_id, queue), _held(job_id, queue), keys.job(job_id)],
                            args=[unit, self.cap])
        return [Held.load(p) for p in raw]

    @mapped
    def depth(self, job_id: str, queue: str) -> tuple[int, int]:
        """(waiting, held) tasks of the job for the queue."""
        pipe = self.r.pipeline(transaction=False)
        pipe.scard(_waiting(job_id, queue))
        pipe.llen(_held(job_id, queue))
        waiting, held = pipe.execute()
        return int(waiting), int(held)


@mapped
def held_units(client: Any, job_ids: Iterable[str], queues: Iterable[str]) -> set[tuple[str, str]]:
    """(job id, unit) of every task held for these jobs: not lost, only not yet published."""
    pairs = [(job_id, q) for job_id in job_ids for q in queues]
    pipe = client.pipeline(transaction=False)
    for job_id, q in pairs:
        pipe.lrange(_held(job_id, q), 0, -1)
    return {(job_id, Held.load(raw).unit) for (job_id, _), rows in zip(pairs, pipe.execute(), strict=True)
            for raw in rows}


def _waiting(job_id: str, queue: str) -> str:
    return keys.job(job_id, "waiting", check_id("queue", queue))


def _held(job_id: str, queue: str) -> str:
    return keys.job(job_id, "held", check_id("queue", queue))
