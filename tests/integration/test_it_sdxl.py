"""A tiny SDXL job through the session's local stack (tests/integration/conftest.py), its checkpoint
downloaded over HTTP and loaded by stock `StableDiffusionXLPipeline`."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_tiny_sdxl_job_on_the_stack(stack, xl_tracked_job, tmp_path):
    done = xl_tracked_job
    assert done.job["counts"]["samples"] == 4 and done.job["counts"]["pairs"] == 2
    assert all(p["target_score"] is not None for p in done.pairs)
    assert [c["version"] for c in done.checkpoints] == [1]
    for s in done.samples:
        assert s["policy_version"] == 0
    with stack.client() as c:
        r = c.get(done.checkpoints[0]["url"])
    assert r.status_code == 200
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "pytorch_lora_weights.safetensors").write_bytes(r.content)

    from dfusion_core.sdxl import build_tiny_sdxl, to_sdxl_pipeline

    pipe = to_sdxl_pipeline(build_tiny_sdxl())
    pipe.load_lora_weights(str(tmp_path / "ckpt"))  # raises on keys that do not fit SDXL's UNet
    assert pipe.get_list_adapters() == {"unet": ["default_0"]}
