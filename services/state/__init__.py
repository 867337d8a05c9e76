"""Job state: one contract (`protocol.JobStore`), two backends, API tokens.

- `types`: errors, JobStatus and its transitions, JobRecord, the argument checks both backends apply.
- `protocol`: the JobStore Protocol the workers and the API are typed with.
- `redis`: the service's backend (`RedisJobStore`, `open_state`); `keys` and `scripts` are its
  key layout and Lua scripts.
- `memory`: the embedded runner's backend (`MemoryJobStore`).
- `tokens`: API tokens (Redis only).

Importing this package loads no Redis client: the names below are the Redis-free ones.
"""

from services.state.protocol import JobStore
from services.state.types import (
    COUNTER_NAMES,
    TRANSITIONS,
    InvalidTransition,
    JobExists,
    JobNotFound,
    JobRecord,
    JobStatus,
    Lease,
    LeaseLost,
    StateError,
    StateUnavailable,
    TooManyJobs,
)

__all__ = [
    "COUNTER_NAMES", "TRANSITIONS", "InvalidTransition", "JobExists", "JobNotFound", "JobRecord", "JobStatus",
    "JobStore", "Lease", "LeaseLost", "StateError", "StateUnavailable", "TooManyJobs",
]
