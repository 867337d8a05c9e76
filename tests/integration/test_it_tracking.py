"""report_to='tensorboard' through the real stack: the trainer worker leaves the job's event files
under the stack's DFUSION_TRACKING_DIR, with every optimizer step's loss, the epoch's scores and its
pairs as images, read back with TensorBoard's own EventAccumulator. The job is the session's tiny-sdxl
job (tests/integration/conftest.py), so this also covers SDXL's trainer."""

from __future__ import annotations

import json

import pytest

from workers import keys

pytestmark = pytest.mark.integration


def test_a_stack_job_leaves_tensorboard_step_and_epoch_curves(stack, xl_tracked_job) -> None:
    pytest.importorskip("tensorboard", reason="report_to='tensorboard' needs the tracking extra")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    job_id = xl_tracked_job.id
    logdir = stack.root / "tracking" / "tensorboard" / job_id
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
