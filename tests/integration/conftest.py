"""The integration tests' second shared job: one tiny-sdxl job with report_to='tensorboard', read by
tests/integration/test_it_sdxl.py (SDXL through the stack) and test_it_tracking.py (the trainer
worker's event files). One job for both: each is ~15-30 s of compute on the shared stack."""

from __future__ import annotations

import pytest

from tests.integration.stack_helpers import FinishedJob, finish_job

#: 1 prompt x 4 samples x 1 epoch, 4 DDIM steps; both pairs trained in two optimizer steps.
XL_TRACKED_JOB = {
    "prompts": [{"text": "a red and woolen dog", "items": ["woolen", "dog"], "mask_thresholds": [0.02, 0.03]}],
    "model": "tiny-sdxl", "samples_per_prompt": 4, "epochs": 1, "sampling": {"num_steps": 4, "batch_size": 4},
    "seed": 3, "training": {"pair_filter": "none", "steps_per_epoch": 2},
    "eval_prompts": ["a horse"], "eval_seeds": 1, "report_to": "tensorboard",
}


@pytest.fixture(scope="session")
def xl_tracked_job(stack) -> FinishedJob:
    return finish_job(stack, XL_TRACKED_JOB)
