"""One local stack and one finished tiny job shared by tests/ui, tests/cli and tests/export.

Each of those folders' conftest exposes `ui_stack` and `tiny_job` through `shared_stack` and
`shared_job`, which cache in this module, so a session running all three starts one stack and
runs one job (2 prompts x 4 samples x 1 epoch, 4 DDIM steps: about a minute on two cores).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from tests.integration.stack_helpers import Stack, running_stack

TINY_JOB: dict[str, Any] = {
    "prompts": [
        {"text": "a cat eating a sandwich", "items": ["cat", "sandwich"], "mask_thresholds": [0.03, 0.005]},
        {"text": "a red and woolen dog", "items": ["woolen", "dog"], "mask_thresholds": [0.02, 0.03]},
    ],
    "model": "tiny",
    "samples_per_prompt": 4,
    "epochs": 1,
    "sampling": {"num_steps": 4},
    "seed": 3,
    "eval_prompts": ["a horse driving a car"],
    "eval_seeds": 1,
}


@dataclass
class FinishedJob:
    id: str
    job: dict[str, Any]
    pairs: list[dict[str, Any]]
    samples: list[dict[str, Any]]
    checkpoints: list[dict[str, Any]]


_cache: dict[str, Any] = {}


def shared_stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    """The session's stack, started on first use and stopped when the first requester's scope ends."""
    if "stack" not in _cache:
        cm = running_stack(tmp_path_factory.mktemp("ui-stack"))
        _cache["stack"] = cm.__enter__()

        def stop() -> None:
            _cache.clear()
            cm.__exit__(None, None, None)

        request.addfinalizer(stop)
    return _cache["stack"]


def shared_job(stack: Stack) -> FinishedJob:
    if "job" not in _cache:
        with stack.client() as c:
            r = c.post("/v1/jobs", json=TINY_JOB)
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
            job = stack.wait_job(job_id, timeout_s=400)
            assert job["status"] == "succeeded", job
            data = {k: c.get(f"/v1/jobs/{job_id}/{k}").json()["data"] for k in ("pairs", "samples", "checkpoints")}
        _cache["job"] = FinishedJob(job_id, job, **data)
    return _cache["job"]
