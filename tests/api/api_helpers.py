"""Helpers shared by the API tests (imported as `tests.api.api_helpers`; fixtures live in conftest)."""

from __future__ import annotations

from typing import Any

from services.state.redis import RedisJobStore

#: Small limits so the tests can hit them cheaply.
LIMITS: dict[str, Any] = {"max_concurrent_jobs_per_tenant": 3, "max_samples_per_job": 512, "max_body_bytes": 64 * 1024}


def valid_body(**overrides: Any) -> dict[str, Any]:
    """A job body the API accepts (fusion pairs need an item word per prompt)."""
    body: dict[str, Any] = {
        "prompts": [{"text": "a cat next to a red ball", "items": ["cat"], "mask_thresholds": [0.5]}],
        "model": "tiny",
        "samples_per_prompt": 4,
        "epochs": 1,
    }
    body.update(overrides)
    return body


def queue_len(state: RedisJobStore, queue: str = "score") -> int:
    """Messages waiting in a Celery queue (kombu's Redis transport: a list named after the queue)."""
    return int(state.r.llen(queue))
