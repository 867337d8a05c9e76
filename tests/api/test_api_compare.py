"""POST /v1/jobs/{id}/compare and GET .../compare/{compare_id}: the request checked against its job
(bad input named by field, 409 while the job runs, 404 for other tenants), the queued record, and
the task enqueued by name on the sample queue (no worker here: tests/integration/test_it_compare.py
runs it)."""

from __future__ import annotations

import base64
import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.compare import MAX_ACTIVE_COMPARES, MAX_COMPARE_SEEDS, MAX_TENANT_COMPARES, CompareStatus
from services.records import CheckpointRecord
from services.state.compares import RedisCompareStore, set_status
from services.state.redis import RedisJobStore
from services.state.types import JobStatus
from tests.api.api_helpers import queue_len, valid_body

PROMPT = "a cat next to a red ball"


def _job(client: TestClient, headers: dict, state: RedisJobStore, status: JobStatus | None = JobStatus.SUCCEEDED,
         versions: tuple[int, ...] = (1, 2)) -> str:
    job_id = client.post("/v1/jobs", json=valid_body(), headers=headers).json()["id"]
    if status is not None:
        state.set_status(job_id, JobStatus.RUNNING)
        if status != JobStatus.RUNNING:
            state.set_status(job_id, status)
    for v in versions:
        state.put_checkpoint(job_id, v, CheckpointRecord(version=v, key=f"jobs/{job_id}/checkpoints/{v}/w", epoch=v - 1).dump())
    return job_id


def _messages(state: RedisJobStore) -> list[dict]:
    """The task messages waiting in the sample queue, as (task name, kwargs)."""
    out = []
    for raw in state.r.lrange("sample", 0, -1):
        msg = json.loads(raw)
        body = json.loads(base64.b64decode(msg["body"]))
        out.append({"task": msg["headers"]["task"], **body[1]})
    return out


def test_a_compare_is_queued_on_the_sample_queue_with_the_latest_version(
        client: TestClient, acme: dict, state: RedisJobStore) -> None:
    job_id = _job(client, acme, state)
    r = client.post(f"/v1/jobs/{job_id}/compare", json={"prompt": PROMPT, "items": ["cat"], "seeds": 3}, headers=acme)
    assert r.status_code == 202, r.text
    created = r.json()
    assert created["status"] == "queued" and created["url"] == f"/v1/jobs/{job_id}/compare/{created['id']}"
    assert _messages(state) == [{"task": "dfusion.compare", "job_id": job_id, "compare_id": created["id"]}]
    got = client.get(created["url"], headers=acme).json()
    assert (got["status"], got["version"], got["seeds"], got["items"]) == ("queued", 2, [0, 1, 2], ["cat"])
    assert got["mask_thresholds"] == [0.5]  # the job's threshold for the same word
    assert got["results"] == [] and got["base_mean_score"] is None
    listed = client.get(f"/v1/jobs/{job_id}/compare", headers=acme).json()
    assert listed["count"] == 1 and listed["data"][0]["id"] == created["id"]


def test_explicit_seeds_version_and_thresholds_are_kept(client: TestClient, acme: dict, state: RedisJobStore) -> None:
    job_id = _job(client, acme, state)
    body = {"prompt": PROMPT, "items": ["red ball"], "mask_thresholds": [0.2], "seeds": [7, 3], "version": 1}
    created = client.post(f"/v1/jobs/{job_id}/compare", json=body, headers=acme).json()
    got = client.get(created["url"], headers=acme).json()
    assert (got["version"], got["seeds"], got["mask_thresholds"]) == (1, [7, 3], [0.2])


def test_a_failed_job_with_a_version_can_be_compared(client: TestClient, acme: dict, state: RedisJobStore) -> None:
    job_id = _job(client, acme, state, status=JobStatus.FAILED, versions=(1,))
    assert client.post(f"/v1/jobs/{job_id}/compare", json={"prompt": PROMPT}, headers=acme).status_code == 202


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"prompt": ""}, "prompt", "at least 1 character"),
    ({"prompt": "   "}, "prompt", "blank"),
    ({"prompt": PROMPT, "seeds": MAX_COMPARE_SEEDS + 1}, "seeds", f"1 to {MAX_COMPARE_SEEDS} seeds"),
    ({"prompt": PROMPT, "seeds": list(range(MAX_COMPARE_SEEDS + 1))}, "seeds", f"1 to {MAX_COMPARE_SEEDS} seeds"),
    ({"prompt": PROMPT, "seeds": 0}, "seeds", "1 to"),
    ({"prompt": PROMPT, "seeds": [1, 1]}, "seeds", "distinct"),
    ({"prompt": PROMPT, "items": ["dog"]}, "items", "not a word of the prompt"),
    ({"prompt": PROMPT, "items": ["cat"], "mask_thresholds": [0.1, 0.2]}, "mask_thresholds", "one per item"),
    ({"prompt": PROMPT, "version": 0}, "version", "greater than or equal to 1"),
], ids=["empty-prompt", "blank-prompt", "too-many-seeds", "too-many-seed-list", "no-seeds", "repeated-seeds",
        "item-not-in-prompt", "thresholds-count", "version-0"])
def test_bad_input_is_a_422_naming_the_field(client: TestClient, acme: dict, state: RedisJobStore, body: dict,
                                             field: str, words: str) -> None:
    job_id = _job(client, acme, state)
    r = client.post(f"/v1/jobs/{job_id}/compare", json=body, headers=acme)
    assert r.status_code == 422, r.text
    assert r.json()["error"].startswith(f"{field}") and words in r.json()["error"], r.json()["error"]
    assert queue_len(state, "sample") == 0


def test_an_unknown_version_is_a_422_listing_the_versions(client: TestClient, acme: dict, state: RedisJobStore) -> None:
    job_id = _job(client, acme, state)
    r = client.post(f"/v1/jobs/{job_id}/compare", json={"prompt": PROMPT, "version": 7}, headers=acme)
    assert r.status_code == 422
    assert r.json()["error"] == f"version: unknown version 7; job {job_id} has versions 1, 2"


def test_a_job_without_a_version_has_nothing_to_compare(client: TestClient, acme: dict, state: RedisJobStore) -> None:
    job_id = _job(client, acme, state, status=JobStatus.CANCELLED, versions=())
    r = client.post(f"/v1/jobs/{job_id}/compare", json={"prompt": PROMPT}, headers=acme)
    assert r.status_code == 422 and r.json()["error"].startswith("version: ") and "no trained policy" in r.text


@pytest.mark.parametrize("status", [None, JobStatus.RUNNING], ids=["queued", "running"])
def test_a_job_still_running_is_a_409(client: TestClient, acme: dict, state: RedisJobStore,
                                      status: JobStatus | None) -> None:
    job_id = _job(client, acme, state, status=status, versions=(1,) if status else ())
    r = client.post(f"/v1/jobs/{job_id}/compare", json={"prompt": PROMPT}, headers=acme)
    assert r.status_code == 409
    assert r.json()["detail"].startswith(f"job: {job_id} is {(status or JobStatus.QUEUED).value}")
    assert queue_len(state, "sample") == 0


def test_unknown_jobs_compares_and_other_tenants_are_404(client: TestClient, acme: dict, globex: dict,
                                                        state: RedisJobStore) -> None:
    job_id = _job(client, acme, state)
    assert client.post("/v1/jobs/" + "0" * 32 + "/compare", json={"prompt": PROMPT}, headers=acme).status_code == 404
    assert client.post(f"/v1/jobs/{job_id}/compare", json={"prompt": PROMPT}, headers=globex).status_code == 404
    r = client.get(f"/v1/jobs/{job_id}/compare/" + "f" * 32, headers=acme)
    assert r.status_code == 404 and "compare not found" in r.json()["detail"]
    created = client.post(f"/v1/jobs/{job_id}/compare", json={"prompt": PROMPT}, headers=acme).json()
    assert client.get(created["url"], headers=globex).status_code == 404
    assert client.post(f"/v1/jobs/{job_id}/compare", json={"prompt": PROMPT}).status_code == 401


def test_a_job_has_at_most_a_few_compares_queued_at_once(client: TestClient, acme: dict,
                                                          state: RedisJobStore) -> None:
    job_id = _job(client, acme, state)
    urls = [client.post(f"/v1/jobs/{job_id}/compare", json={"prompt": PROMPT}, headers=acme).json()["url"]
            for _ in range(MAX_ACTIVE_COMPARES)]
    r = client.post(f"/v1/jobs/{job_id}/compare", json={"prompt": PROMPT}, headers=acme)
    assert r.status_code == 429 and r.headers["Retry-After"] == "5"
    assert r.json()["detail"] == f"job {job_id} already has {MAX_ACTIVE_COMPARES} compares queued or running; " \
                                 "wait for one to finish"
    compares = RedisCompareStore(state.r)
    set_status(compares, job_id, urls[0].rsplit("/", 1)[1], CompareStatus.SUCCEEDED)
    assert client.post(f"/v1/jobs/{job_id}/compare", json={"prompt": PROMPT}, headers=acme).status_code == 202


def test_a_tenant_has_at_most_a_few_compares_queued_over_all_its_jobs(client: TestClient, acme: dict, globex: dict,
                                                                      state: RedisJobStore) -> None:
    """Compares skip the stages' fair admission (docs/fairness.md), so finished jobs, which the
    tenant's job limit does not count, must not let one tenant fill the sample queue with them."""
    per_job = MAX_ACTIVE_COMPARES - 1
    # finished, they free the tenant's job slots: it may have more of them than it may run at once
    jobs = [_job(client, acme, state) for _ in range(-(-MAX_TENANT_COMPARES // per_job) + 1)]
    posted = [client.post(f"/v1/jobs/{job_id}/compare", json={"prompt": PROMPT}, headers=acme)
              for job_id in jobs for _ in range(per_job)]
    assert [r.status_code for r in posted] == [202] * MAX_TENANT_COMPARES + [429] * (len(posted) - MAX_TENANT_COMPARES)
    assert posted[-1].json()["detail"] == f"tenant acme already has {MAX_TENANT_COMPARES} compares queued or " \
                                          "running over its jobs; wait for one to finish"
    assert len(_messages(state)) == MAX_TENANT_COMPARES
    assert sum(len(RedisCompareStore(state.r).list(j)) for j in jobs) == MAX_TENANT_COMPARES
    other = _job(client, globex, state)
    assert client.post(f"/v1/jobs/{other}/compare", json={"prompt": PROMPT}, headers=globex).status_code == 202
    first = posted[0].json()["url"].rsplit("/", 1)[1]
    set_status(RedisCompareStore(state.r), jobs[0], first, CompareStatus.SUCCEEDED)
    assert client.post(f"/v1/jobs/{jobs[-1]}/compare", json={"prompt": PROMPT}, headers=acme).status_code == 202


_BODIES = st.fixed_dictionaries({}, optional={
    "prompt": st.text(max_size=40), "items": st.lists(st.text(max_size=12), max_size=3),
    "mask_thresholds": st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=3) | st.none(),
    "seeds": st.integers(-3, 12) | st.lists(st.integers(-2, 2**32), max_size=10) | st.text(max_size=3),
    "version": st.integers(-1, 4) | st.none(),
})


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(body=_BODIES)
def test_random_bodies_on_a_finished_job_are_202_or_4xx(client: TestClient, acme: dict, state: RedisJobStore,
                                                        body: dict) -> None:
    """Schemathesis only reaches unknown job ids; here a real, finished job gets random bodies."""
    job_id = _finished.setdefault(id(client), _job(client, acme, state))
    r = client.post(f"/v1/jobs/{job_id}/compare", json=body, headers=acme)
    assert r.status_code in (202, 422, 429), (body, r.status_code, r.text)  # 429: MAX_ACTIVE_COMPARES queued
    if r.status_code == 422:
        assert r.json()["error"].split(":")[0] in ("prompt", "items", "mask_thresholds", "seeds", "version", "body")


_finished: dict[int, str] = {}
