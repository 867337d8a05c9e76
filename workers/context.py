"""What a stage function runs against: the job store, the object store, how to enqueue a task,
and the worker's runtime (models, scorers). The Celery tasks and the embedded runner build one each.

Kept below `workers.stages` so the modules the stages call (`workers.publish`) can name it
without importing the stages back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dfusion_core.storage import BlobStore
from services.state import JobStore
from workers.runtime import Runtime

Dispatch = Callable[..., None]  # dispatch(task_name, **kwargs)


@dataclass
class Context:
    state: JobStore  # RedisJobStore in the Celery workers, MemoryJobStore in the embedded runner
    store: BlobStore
    dispatch: Dispatch
    runtime: Runtime
