"""Compare over HTTP on the local stack: the shared finished tiny job's trained policy beside its base,
computed by the stack's sample worker; the same seed is the same noise in every compare; bad input
is refused with the field named, a job still running with a 409."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from devstack.harness import TINY_JOB
from devstack.procs import wait_for
from services.compare import MAX_COMPARE_SEEDS

pytestmark = pytest.mark.integration

PROMPT = TINY_JOB["prompts"][0]["text"]  # "a cat eating a sandwich"


def _compare(stack, job_id: str, body: dict[str, Any]) -> dict[str, Any]:
    with stack.client() as c:
        r = c.post(f"/v1/jobs/{job_id}/compare", json=body)
        assert r.status_code == 202, r.text
        url = r.json()["url"]
        done = wait_for(lambda: (x := c.get(url).json())["status"] in ("succeeded", "failed") and x, 300,
                        f"compare {url}", poll_s=0.5)
    assert done["status"] == "succeeded", done
    return done


def _png(stack, url: str) -> np.ndarray:
    with stack.client() as c:
        r = c.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    return np.array(Image.open(io.BytesIO(r.content)))


def test_the_trained_policy_beside_its_base_on_the_same_noise(stack, tiny_job):
    first = _compare(stack, tiny_job.id, {"prompt": PROMPT, "items": ["cat", "sandwich"], "seeds": [0, 1]})
    assert (first["version"], first["seeds"], first["items"]) == (2, [0, 1], ["cat", "sandwich"])
    assert first["mask_thresholds"] == [0.03, 0.005]  # the job's own, for the same words
    differs = []
    for s in first["results"]:
        base, trained = _png(stack, s["base_image_url"]), _png(stack, s["trained_image_url"])
        assert base.shape == trained.shape == (64, 64, 3)
        differs.append(not np.array_equal(base, trained))
        assert [m["item"] for m in s["masks"]] == ["cat", "sandwich"]
        for m in s["masks"]:
            mask = _png(stack, m["url"])
            assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
    assert all(differs), "two epochs of training left the policy's images unchanged"
    assert first["base_mean_score"] == pytest.approx(np.mean([s["base_score"] for s in first["results"]]))

    # version 1 on seeds 1 and 2: seed 1 is the same noise, so the same base image and base score
    second = _compare(stack, tiny_job.id, {"prompt": PROMPT, "seeds": [1, 2], "version": 1})
    assert second["version"] == 1 and all(s["masks"] == [] for s in second["results"])
    assert np.array_equal(_png(stack, second["results"][0]["base_image_url"]),
                          _png(stack, first["results"][1]["base_image_url"]))
    assert second["results"][0]["base_score"] == first["results"][1]["base_score"]
    assert not np.array_equal(_png(stack, second["results"][1]["base_image_url"]),
                              _png(stack, first["results"][1]["base_image_url"]))
    with stack.client() as c:
        listed = c.get(f"/v1/jobs/{tiny_job.id}/compare").json()
        assert {first["id"], second["id"]} <= {x["id"] for x in listed["data"]}
        assert c.get(f"/v1/jobs/{tiny_job.id}").json()["status"] == "succeeded"  # a compare never moves its job


@pytest.mark.parametrize(("body", "error"), [
    ({"prompt": PROMPT, "version": 9}, "version: unknown version 9; job {job} has versions 1, 2"),
    ({"prompt": ""}, "prompt: String should have at least 1 character"),
    ({"prompt": PROMPT, "seeds": MAX_COMPARE_SEEDS + 1}, f"seeds: Value error, give 1 to {MAX_COMPARE_SEEDS} seeds"),
    ({"prompt": PROMPT, "items": ["dog"]}, "items: Value error, item 'dog' is not a word of the prompt"),
], ids=["unknown-version", "empty-prompt", "too-many-seeds", "item-not-in-prompt"])
def test_bad_input_names_its_field(stack, tiny_job, body, error):
    with stack.client() as c:
        r = c.post(f"/v1/jobs/{tiny_job.id}/compare", json=body)
    assert r.status_code == 422 and r.json()["error"].startswith(error.format(job=tiny_job.id)), r.text


def test_unknown_jobs_and_jobs_still_running(stack, tiny_job):
    with stack.client() as c:
        assert c.post("/v1/jobs/nosuchjob/compare", json={"prompt": PROMPT}).status_code == 404
        job_id = c.post("/v1/jobs", json={**TINY_JOB, "epochs": 1}).json()["id"]
        try:
            r = c.post(f"/v1/jobs/{job_id}/compare", json={"prompt": PROMPT})
            assert r.status_code == 409 and r.json()["detail"].startswith(f"job: {job_id} is "), r.text
            assert "compare needs a finished job" in r.json()["detail"]
        finally:
            c.delete(f"/v1/jobs/{job_id}")
