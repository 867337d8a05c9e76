"""Purge through the service with two tenants: `DELETE /v1/jobs/{id}?purge=true` and `dfusion purge`
remove one ended job's objects and keys and leave every other job's, of either tenant, byte for
byte; a job still queued or running is refused with 409 naming its status; another tenant's job
is not found. Each job's `stored_bytes` (the job list, the job, /metrics) is what its objects take
in the store, and leaves with it. Small `sim` jobs on the session's stack."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from cli.main import main
from devstack.harness import Stack
from devstack.procs import wait_for
from tests.integration.test_it_sim import SIM_JOB

pytestmark = pytest.mark.integration


def _settled(stack: Stack, job_id: str) -> str:
    """The job's status once it has ended and its last unit has returned (its commit is the last write)."""
    state = stack.state()
    wait_for(lambda: state.get_job(job_id).status.terminal and not state.leases(job_id), 300,
             f"job {job_id} to end", poll_s=0.5)
    return state.get_job(job_id).status.value


def _footprint(stack: Stack, job_id: str) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The job's Redis keys (DUMP bytes) and its objects (bytes)."""
    with redis.Redis.from_url(stack.facts["redis_url"]) as raw:
        keys = {k.decode(): raw.dump(k) for k in raw.scan_iter(match=f"*{{{job_id}}}*", count=1000)}
    store = stack.store()
    return keys, {k: store.get(k) for k in store.list(f"jobs/{job_id}/")}


def _stored_gauges(stack: Stack) -> dict[str, float]:
    """`dfusion_job_stored_bytes` by job id, as /metrics exports it."""
    text = httpx.get(f"{stack.api}/metrics", timeout=30).text
    return {sample.labels["job_id"]: sample.value for family in text_string_to_metric_families(text)
            if family.name == "dfusion_job_stored_bytes" for sample in family.samples}


def _stored(stack: Stack, token: str, job_id: str) -> tuple[int, int]:
    """The job's (stored_bytes, stored_objects) in GET /v1/jobs/{id}, checked equal to its row in GET /v1/jobs."""
    with stack.client(token) as c:
        job = c.get(f"/v1/jobs/{job_id}").json()
        row = next(j for j in c.get("/v1/jobs", params={"limit": 500}).json()["data"] if j["id"] == job_id)
    assert (row["stored_bytes"], row["stored_objects"]) == (job["stored_bytes"], job["stored_objects"])
    return job["stored_bytes"], job["stored_objects"]


def test_purge_removes_one_job_and_leaves_both_tenants_other_jobs(stack: Stack, tmp_path) -> None:
    bob = stack.tokens().create("bob")
    purged, kept = stack.submit({**SIM_JOB, "seed": 21}), stack.submit({**SIM_JOB, "seed": 22})
    with stack.client(bob) as c:
        r = c.post("/v1/jobs", json={**SIM_JOB, "seed": 23})
        assert r.status_code == 202, r.text
        bobs = r.json()["id"]
    assert [_settled(stack, j) for j in (purged, kept, bobs)] == ["succeeded"] * 3
    others = {j: _footprint(stack, j) for j in (kept, bobs)}
    assert all(keys and objects for keys, objects in others.values())
    assert _footprint(stack, purged)[1]

    # each job's stored bytes are its own objects' sizes as the store lists them, in the API and /metrics
    footprints = {purged: _footprint(stack, purged), **others}
    listed = {j: (sum(map(len, objects.values())), len(objects)) for j, (_, objects) in footprints.items()}
    owners = {purged: stack.token, kept: stack.token, bobs: bob}
    assert {j: _stored(stack, owners[j], j) for j in owners} == listed
    gauges = _stored_gauges(stack)
    assert {j: gauges.get(j) for j in owners} == {j: float(size) for j, (size, _) in listed.items()}

    with stack.client(bob) as c:  # bob cannot see, let alone purge, alice's job
        assert c.delete(f"/v1/jobs/{purged}", params={"purge": "true"}).status_code == 404
    assert main(["purge", purged, "--api", stack.api, "--token", stack.token]) == 0

    assert _footprint(stack, purged) == ({}, {})
    with stack.client() as c:
        assert c.get(f"/v1/jobs/{purged}").status_code == 404
        assert purged not in {j["id"] for j in c.get("/v1/jobs").json()["data"]}
    assert {j: _footprint(stack, j) for j in (kept, bobs)} == others
    with stack.client(bob) as c:
        assert [j["id"] for j in c.get("/v1/jobs").json()["data"]] == [bobs]
    gauges = _stored_gauges(stack)  # the purged job's line is gone with it; the others' stay as they were
    assert purged not in gauges and {j: gauges.get(j) for j in (kept, bobs)} == {
        j: float(listed[j][0]) for j in (kept, bobs)}


def test_a_running_job_is_refused_then_purged_once_cancelled(stack: Stack) -> None:
    job_id = stack.submit({**SIM_JOB, "samples_per_prompt": 8, "sampling": {"num_steps": 20, "batch_size": 4}})
    with stack.client() as c:
        r = c.delete(f"/v1/jobs/{job_id}", params={"purge": "true"})
        assert r.status_code == 409, r.text
        status = c.get(f"/v1/jobs/{job_id}").json()["status"]
        assert status in ("queued", "running")
        assert r.json()["detail"].startswith(f"job {job_id} is "), r.json()
        assert " is queued; " in r.json()["detail"] or " is running; " in r.json()["detail"]
        assert c.delete(f"/v1/jobs/{job_id}").status_code == 202  # cancel

        def purge() -> dict[str, Any] | None:  # 409 while a unit started before the cancel still runs
            r = c.delete(f"/v1/jobs/{job_id}", params={"purge": "true"})
            assert r.status_code in (200, 409), r.text
            return r.json() if r.status_code == 200 else None

        done = wait_for(purge, 120, f"purge of cancelled job {job_id}", poll_s=0.5)
        assert (done["id"], done["status"], done["purged"]) == (job_id, "cancelled", True)
        assert c.get(f"/v1/jobs/{job_id}").status_code == 404
    assert stack.store().list(f"jobs/{job_id}/") == []
