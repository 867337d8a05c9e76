"""A `sim` job through the whole service: the stack's workers build the sim model by name and run
its sampling, fusion, scoring and LoRA training with their default waits (60 ms a denoiser call)."""

from __future__ import annotations

import pytest

from tests.integration.stack_helpers import finish_job

pytestmark = pytest.mark.integration

#: 1 prompt x 4 samples, 4 DDIM steps: about 50 denoiser calls, 3 s of waits.
SIM_JOB = {
    "model": "sim", "samples_per_prompt": 4, "epochs": 1, "sampling": {"num_steps": 4, "batch_size": 4},
    "prompts": [{"text": "a cat eating a sandwich", "items": ["cat", "sandwich"], "mask_thresholds": [0.5, 0.5]}],
    "eval_prompts": ["a dog"], "eval_seeds": 1, "training": {"pair_filter": "none"}, "seed": 5,
}


def test_a_sim_job_runs_on_the_stack(stack):
    done = finish_job(stack, SIM_JOB, timeout_s=300)
    assert done.job["counts"] == {"samples": 4, "scored": 4, "pairs": 2, "trained_steps": 1}
    spec = stack.state().get_job(done.id).spec
    assert (spec["preset"], spec["scorer"], spec["fusion"]["mask_mode"]) == ("sim", "sim", "quantile")
    assert [c["version"] for c in done.checkpoints] == [1]
    assert all(p["target_score"] is not None for p in done.pairs)
    keys = set(stack.store().list(f"jobs/{done.id}/"))
    assert len([k for k in keys if k.endswith(".targets.safetensors")]) == 1  # both pairs: one fuse chunk
    assert any(k.endswith("checkpoints/1/pytorch_lora_weights.safetensors") for k in keys)
