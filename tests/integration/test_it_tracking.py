"""report_to='tensorboard' through the real stack: the trainer worker leaves the job's event files,
with every optimizer step's loss, the epoch's scores and its pairs as images, read back with
TensorBoard's own EventAccumulator.

The session's shared stack sets no DFUSION_TRACKING_DIR, so its workers write to the default
`.dfusion/tracking` under their working directory, the repository root (devstack's supervisor runs
there); the test removes the job's folder afterwards.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import devstack
from workers import keys

pytestmark = pytest.mark.integration

#: 1 prompt x 4 samples x 1 epoch, 4 DDIM steps; both pairs trained in two optimizer steps.
JOB = {
    "prompts": [{"text": "a red and woolen dog", "items": ["woolen", "dog"], "mask_thresholds": [0.02, 0.03]}],
    "model": "tiny", "samples_per_prompt": 4, "epochs": 1, "sampling": {"num_steps": 4}, "seed": 3,
    "training": {"pair_filter": "none", "steps_per_epoch": 2},
    "eval_prompts": ["a horse"], "eval_seeds": 1, "report_to": "tensorboard",
}
TRACKING = Path(devstack.__file__).resolve().parent.parent / ".dfusion" / "tracking"


@pytest.fixture
def job_id(stack) -> Iterator[str]:
    pytest.importorskip("tensorboard", reason="report_to='tensorboard' needs the tracking extra")
    job_id = stack.submit(JOB)
    try:
        yield job_id
    finally:
        shutil.rmtree(TRACKING / "tensorboard" / job_id, ignore_errors=True)
        for folder in (TRACKING / "tensorboard", TRACKING, TRACKING.parent):  # only if nothing else is there
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def test_a_stack_job_leaves_tensorboard_step_and_epoch_curves(stack, job_id) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    job = stack.wait_job(job_id)
    assert job["status"] == "succeeded", job
    logdir = TRACKING / "tensorboard" / job_id
    assert list(logdir.glob("events.out.tfevents.*")), f"no event files in {logdir}"
    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0}).Reload()

    steps = json.loads(stack.store().get(f"{keys.trainer_state_prefix(job_id, 0)}/metrics.json"))
    assert [s["step"] for s in steps] == [1, 2]
    for name in ("loss", "margin", "grad_norm"):
        assert [(e.step, e.value) for e in events.Scalars(f"train/{name}")] == \
            [(s["step"], pytest.approx(s[name], rel=1e-5)) for s in steps]

    [metrics] = stack.state().get_metrics(job_id)
    for name in ("heldout_score", "heldout_score_base", "mean_sample_score", "target_win_rate", "loss"):
        [point] = events.Scalars(f"epoch/{name}")
        assert point.step == 0 and point.value == pytest.approx(metrics[name], rel=1e-5)
    assert sorted(events.Tags()["images"]) == ["pairs/0_0", "pairs/0_1"]  # both pairs, reference | base | target
    [image] = events.Images("pairs/0_0")
    assert image.step == 0 and image.width == 3 * image.height
