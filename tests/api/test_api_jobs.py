"""Jobs over HTTP: create enqueues START_JOB on the real broker, list/get/cancel, limits, tenant isolation."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from api.deps import get_enqueue
from api.errors import QueueUnavailable
from services.state import JobStatus, Lease
from services.state.redis import RedisJobStore
from services.state.tokens import TokenStore
from tests.api.api_helpers import queue_len, valid_body


def test_create_returns_202_and_enqueues_start_job(client: TestClient, acme: dict, state: RedisJobStore) -> None:
    r = client.post("/v1/jobs", json=valid_body(), headers=acme)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert r.json()["status"] == "queued" and len(job_id) == 32
    assert queue_len(state, "score") == 1
    message = json.loads(state.r.lindex("score", 0))
    assert message["headers"]["task"] == "dfusion.start_job"
    assert f"'job_id': '{job_id}'" in message["headers"]["kwargsrepr"]
    job = state.get_job(job_id)
    assert job.tenant == "acme" and job.spec["samples_per_prompt"] == 4


def test_list_and_get(client: TestClient, acme: dict, state: RedisJobStore) -> None:
    ids = [client.post("/v1/jobs", json=valid_body(), headers=acme).json()["id"] for _ in range(2)]
    listed = client.get("/v1/jobs", headers=acme).json()
    assert listed["count"] == 2 and {j["id"] for j in listed["data"]} == set(ids)
    state.incr_count(ids[0], "samples", 3)
    state.append_metrics(ids[0], {"epoch": 0, "mean_score": 0.25})
    got = client.get(f"/v1/jobs/{ids[0]}", headers=acme).json()
    assert got["status"] == "queued" and got["policy_version"] == 0 and got["error"] is None
    assert got["counts"] == {"samples": 3, "scored": 0, "pairs": 0, "trained_steps": 0}
    assert got["metrics"] == [{"epoch": 0, "mean_score": 0.25}]
    assert got["spec"]["model"] == "tiny" and got["spec"]["total_samples"] == 4
    assert got["spec"]["prompts"] == ["a cat next to a red ball"]
    assert got["created_at"] > 0
    assert got["running"] == []


def test_get_shows_running_units_from_their_leases(client: TestClient, acme: dict, state: RedisJobStore) -> None:
    job_id = client.post("/v1/jobs", json=valid_body(), headers=acme).json()["id"]
    lease = Lease(unit="train-e0", worker="train@gpu1:42", task_id="t-1", since=1700000000.0, token="abc")
    assert state.acquire_lease(job_id, lease, 30) is None
    assert client.get(f"/v1/jobs/{job_id}", headers=acme).json()["running"] == [
        {"unit": "train-e0", "worker": "train@gpu1:42", "task_id": "t-1", "since": 1700000000.0}]
    state.release_lease(job_id, lease)
    assert client.get(f"/v1/jobs/{job_id}", headers=acme).json()["running"] == []


def test_missing_or_unknown_token_is_401(client: TestClient, acme: dict) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
        r = client.get("/v1/jobs", headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert client.post("/v1/jobs", json=valid_body()).status_code == 401


def test_cookie_token_is_accepted(client: TestClient, tokens: TokenStore) -> None:
    client.cookies.set("dfusion_token", tokens.create("acme"))
    assert client.get("/v1/jobs").status_code == 200


def test_auth_not_required_uses_default_tenant(api_settings, state: RedisJobStore) -> None:
    from api.main import create_app

    with TestClient(create_app(api_settings.model_copy(update={"auth_required": False}))) as c:
        job_id = c.post("/v1/jobs", json=valid_body()).json()["id"]
        assert state.get_job(job_id).tenant == "default"
        assert c.get(f"/v1/jobs/{job_id}").status_code == 200


def test_other_tenant_sees_404_everywhere(client: TestClient, acme: dict, globex: dict, state: RedisJobStore) -> None:
    job_id = client.post("/v1/jobs", json=valid_body(), headers=acme).json()["id"]
    assert client.get("/v1/jobs", headers=globex).json() == {"data": [], "count": 0, "total": 0, "next_offset": None}
    for path in ("", "/samples", "/pairs", "/checkpoints", f"/objects/jobs/{job_id}/x.png"):
        r = client.get(f"/v1/jobs/{job_id}{path}", headers=globex)
        assert r.status_code == 404, path
    assert client.delete(f"/v1/jobs/{job_id}", headers=globex).status_code == 404
    assert state.get_job(job_id).status is JobStatus.QUEUED
    # A job that does not exist at all looks the same, as does a malformed id.
    for bad in ("0" * 32, "..", "a%20b", "x" * 300):
        assert client.get(f"/v1/jobs/{bad}", headers=globex).status_code == 404, bad


def test_cancel(client: TestClient, acme: dict, state: RedisJobStore) -> None:
    job_id = client.post("/v1/jobs", json=valid_body(), headers=acme).json()["id"]
    r = client.delete(f"/v1/jobs/{job_id}", headers=acme)
    assert r.status_code == 202 and r.json() == {"id": job_id, "status": "cancelled"}
    assert state.is_cancelled(job_id)
    again = client.delete(f"/v1/jobs/{job_id}", headers=acme)
    assert again.status_code == 409 and "cancelled" in again.json()["detail"]
    assert client.get(f"/v1/jobs/{job_id}", headers=acme).json()["status"] == "cancelled"


def test_too_many_active_jobs_is_429_until_one_ends(client: TestClient, acme: dict, globex: dict) -> None:
    ids = [client.post("/v1/jobs", json=valid_body(), headers=acme).json()["id"] for _ in range(3)]
    r = client.post("/v1/jobs", json=valid_body(), headers=acme)
    assert r.status_code == 429 and "active jobs" in r.json()["detail"]
    assert client.post("/v1/jobs", json=valid_body(), headers=globex).status_code == 202  # per tenant
    client.delete(f"/v1/jobs/{ids[0]}", headers=acme)
    assert client.post("/v1/jobs", json=valid_body(), headers=acme).status_code == 202


def test_broker_down_gives_503_and_frees_the_slot(client: TestClient, acme: dict, state: RedisJobStore) -> None:
    def broken(job_id: str) -> None:
        raise QueueUnavailable("broker gone")

    client.app.dependency_overrides[get_enqueue] = lambda: broken
    r = client.post("/v1/jobs", json=valid_body(), headers=acme)
    assert r.status_code == 503 and "broker gone" in r.json()["detail"]
    [job] = state.list_jobs("acme")
    assert job.status is JobStatus.FAILED and "could not enqueue" in (job.error or "")
    assert state.active_jobs("acme") == 0


def test_redis_down_is_503(tmp_path, api_settings) -> None:
    from api.main import create_app
    from devstack.procs import free_port

    dead = api_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0", "auth_required": False,
                                           "s3_endpoint": None, "storage_dir": tmp_path})
    with TestClient(create_app(dead), raise_server_exceptions=False) as c:
        assert c.get("/v1/jobs").status_code == 503
        assert c.post("/v1/jobs", json=valid_body()).status_code == 503
        health = c.get("/healthz")
        assert health.status_code == 503 and health.json()["redis"].startswith("down")
        assert health.json()["storage"] == "ok"


def test_each_algorithm_gets_its_own_beta_over_http(client: TestClient, acme: dict, state: RedisJobStore) -> None:
    """A job that names an algorithm but no beta runs with that algorithm's beta; an explicit one wins;
    a bad one is a 422 naming the field."""
    ids = {}
    for name, training in (("dpo", {"algorithm": "diffusion_dpo"}), ("traj", {}),
                           ("explicit", {"algorithm": "diffusion_dpo", "beta": 300.0})):
        r = client.post("/v1/jobs", json={**valid_body(), "training": training}, headers=acme)
        assert r.status_code == 202, r.text
        ids[name] = r.json()["id"]
    betas = {name: state.get_job(job_id).spec["training"]["beta"] for name, job_id in ids.items()}
    assert betas == {"dpo": 2500.0, "traj": 0.1, "explicit": 300.0}
    r = client.post("/v1/jobs", json={**valid_body(), "training": {"beta": -1}}, headers=acme)
    assert r.status_code == 422 and "beta" in r.text


def test_a_toy_job_shows_its_preset_and_the_values_used(client: TestClient, acme: dict, state: RedisJobStore) -> None:
    """A `toy` job gets the toy preset under its own values; the job view names the preset and shows
    the settings used (the stored spec holds them, so the workers run the same)."""
    from dfusion_core.config import FusionConfig, TrainingConfig
    from dfusion_core.toy import world

    body = valid_body(model="toy", prompts=[{"text": "a red striped square above a blue dotted square",
                                             "items": ["striped", "dotted"], "mask_thresholds": [0.5, 0.5]}],
                      fusion={"skip_first_steps": 3}, training={"lora_rank": 2})
    job_id = client.post("/v1/jobs", json=body, headers=acme).json()["id"]
    spec = client.get(f"/v1/jobs/{job_id}", headers=acme).json()["spec"]
    assert spec["preset"] == "toy" and spec["scorer"] == "toy" and spec["train_eval_seeds"] > 0
    assert spec["fusion"] == FusionConfig(**{**world.TOY_FUSION, "skip_first_steps": 3}).model_dump(mode="json")
    assert spec["training"] == TrainingConfig(**{**world.TOY_TRAINING, "lora_rank": 2}).model_dump(mode="json")
    assert state.get_job(job_id).spec["fusion"] == spec["fusion"]
    tiny = client.post("/v1/jobs", json=valid_body(), headers=acme).json()["id"]
    spec = client.get(f"/v1/jobs/{tiny}", headers=acme).json()["spec"]
    assert (spec["preset"], spec["scorer"], spec["train_eval_seeds"]) == (None, "tiny", 0)
    assert spec["fusion"] == FusionConfig().model_dump(mode="json")
    bad = client.post("/v1/jobs", json=valid_body(preset="toy"), headers=acme)
    assert bad.status_code == 422 and "preset" in bad.text


def test_the_job_list_comes_a_page_at_a_time(client: TestClient, acme: dict, state: RedisJobStore) -> None:
    """bench/load.py found GET /v1/jobs returning every job the tenant ever ran, each with its spec
    validated: its cost grew with the tenant's history. Pages are bounded; following next_offset
    visits every job exactly once, newest first."""
    from api.routes.jobs import OFFSET_MAX, PAGE_DEFAULT, PAGE_MAX
    from services.jobspec import JobSpec

    spec = JobSpec.model_validate(valid_body()).model_dump(mode="json")
    made = [f"{k:032x}" for k in range(PAGE_DEFAULT + 3)]
    for job_id in made:
        state.create_job(job_id, "acme", spec)
    first = client.get("/v1/jobs", headers=acme).json()
    assert first["count"] == PAGE_DEFAULT and first["total"] == len(made) and first["next_offset"] == PAGE_DEFAULT
    seen, offset = [], 0
    while offset is not None:
        page = client.get(f"/v1/jobs?limit=7&offset={offset}", headers=acme).json()
        assert page["count"] == len(page["data"]) <= 7
        seen += [j["id"] for j in page["data"]]
        offset = page["next_offset"]
    assert seen == [j.job_id for j in state.list_jobs("acme")] and sorted(seen) == made
    assert client.get(f"/v1/jobs?offset={len(made)}", headers=acme).json() == {
        "data": [], "count": 0, "total": len(made), "next_offset": None}
    assert client.get(f"/v1/jobs?offset={OFFSET_MAX}", headers=acme).json()["count"] == 0
    # past Redis's 64-bit ranks the store would fail: a 422 naming the field, not a 500
    for bad in (f"limit={PAGE_MAX + 1}", "limit=0", "offset=-1", f"offset={OFFSET_MAX + 1}", f"offset={2**64}"):
        r = client.get(f"/v1/jobs?{bad}", headers=acme)
        assert r.status_code == 422 and bad.split("=")[0] in r.text, bad
