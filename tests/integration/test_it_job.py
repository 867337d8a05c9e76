"""The whole service: the session's tiny job (2 prompts x 4 samples x 2 epochs) over HTTP on the
local stack; the same spec run embedded selects the same pairs."""

from __future__ import annotations

import pytest

from devstack.harness import TINY_JOB
from services.jobspec import JobSpec
from workers.keys import split_ref

pytestmark = pytest.mark.integration


def test_job_succeeds_with_every_object_stored(stack, tiny_job):
    job_id, job = tiny_job.id, tiny_job.job
    assert TINY_JOB["epochs"] == 2 and len(TINY_JOB["prompts"]) * TINY_JOB["samples_per_prompt"] == 8
    assert job["status"] == "succeeded", job
    assert job["counts"]["samples"] == 16 and job["counts"]["pairs"] == 8
    assert job["policy_version"] == 2
    with stack.client() as c:
        samples = c.get(f"/v1/jobs/{job_id}/samples").json()["data"]
        pairs = c.get(f"/v1/jobs/{job_id}/pairs").json()["data"]
        checkpoints = c.get(f"/v1/jobs/{job_id}/checkpoints").json()["data"]
    assert len(samples) == 16 and len(pairs) == 8
    assert {s["policy_version"] for s in samples if s["epoch"] == 1} == {1}
    assert {s["policy_version"] for s in samples if s["epoch"] == 0} == {0}
    assert [c["version"] for c in checkpoints] == [1, 2]
    metrics = stack.state().get_metrics(job_id)
    assert [m["epoch"] for m in metrics] == [0, 1]
    # the untrained model is scored once and every epoch carries it, so the last epoch compares to it
    assert metrics[0]["heldout_score_base"] is not None
    assert metrics[1]["heldout_score_base"] == metrics[0]["heldout_score_base"]

    store, state = stack.store(), stack.state()
    keys = set(store.list(f"jobs/{job_id}/"))
    for rec in state.list_samples(job_id).values():
        assert {split_ref(rec["trajectory_key"])[0], rec["image_key"]} <= keys
    for rec in state.list_pairs(job_id).values():
        assert {split_ref(rec["target_key"])[0], rec["target_image_key"], rec["mask_key"]} <= keys
    for rec in state.list_checkpoints(job_id):
        assert rec["key"] in keys
    # nothing stored twice: a trajectory bundle per sample task (one batch of 4 per prompt and epoch)
    # and a PNG per sample; a target bundle per fuse chunk (one per prompt and epoch), two PNGs per pair
    assert len([k for k in keys if "/samples/" in k]) == 4
    assert len([k for k in keys if "/images/" in k]) == 16
    assert len([k for k in keys if "/pairs/" in k]) == 4 + 8 * 2


def test_embedded_run_selects_the_same_pairs(stack, tiny_job, tmp_path):
    import torch

    from workers.embedded import run_embedded

    job_id = tiny_job.id
    remote = {p["id"]: (p["reference"], p["base"]) for p in stack.state().list_pairs(job_id).values()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the stack's workers: same kernels, same bits
    try:
        result = run_embedded(JobSpec.model_validate({**TINY_JOB, "epochs": 1}), tmp_path / "run")
    finally:
        torch.set_num_threads(threads)
    assert result.status == "succeeded"
    local = {pid: (p["reference"], p["base"]) for pid, p in _pairs(tmp_path / "run").items()}
    assert local and local == {pid: v for pid, v in remote.items() if pid.startswith("e0-")}


def _pairs(run_dir):
    import json

    return {p["id"]: p for p in json.loads((run_dir / "pairs.json").read_text())}
