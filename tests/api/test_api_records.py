"""Samples, pairs, checkpoints and the object proxy; /metrics and /healthz; the token CLI."""

from __future__ import annotations

import argparse

import pytest
from fastapi.testclient import TestClient

from services.records import CheckpointRecord, PairRecord, SampleRecord
from services.settings import Settings
from services.state.redis import RedisJobStore
from services.storage import open_store
from tests.api.api_helpers import valid_body

PNG = b"\x89PNG\r\n\x1a\n fake image bytes"


@pytest.fixture
def job_id(client: TestClient, acme: dict) -> str:
    return client.post("/v1/jobs", json=valid_body(), headers=acme).json()["id"]


def _store_records(state: RedisJobStore, settings: Settings, job_id: str) -> dict[str, str]:
    """Write what the workers would: objects in the store, records in state. Returns name -> key."""
    store = open_store(settings)
    keys = {
        name: f"jobs/{job_id}/e0/{name}"
        for name in ("s0.png", "s1.png", "target.png", "mask.png", "lora/v1/pytorch_lora_weights.safetensors")
    }
    for key in keys.values():
        store.put(key, PNG + key.encode())
    for i, sid in enumerate(("e0-p0-s0", "e0-p0-s1")):
        state.put_sample(job_id, sid, SampleRecord(
            id=sid, epoch=0, prompt_index=0, index=i, seed=i, policy_version=0, prompt="a cat next to a red ball",
            trajectory_key=f"jobs/{job_id}/e0/t{i}.safetensors", image_key=keys[f"s{i}.png"],
        ).dump())
    state.update_sample(job_id, "e0-p0-s0", {"score": 0.75})
    state.put_pair(job_id, "e0-p0-0", PairRecord(
        id="e0-p0-0", epoch=0, prompt_index=0, index=0, prompt="a cat next to a red ball", policy_version=0,
        reference="e0-p0-s0", base="e0-p0-s1", reference_score=0.75, base_score=0.25,
        target_key=f"jobs/{job_id}/e0/target.safetensors", target_image_key=keys["target.png"],
        mask_key=keys["mask.png"], base_image_key=keys["s1.png"], reference_image_key=keys["s0.png"],
        base_trajectory_key=f"jobs/{job_id}/e0/t1.safetensors",
    ).dump())
    state.update_pair(job_id, "e0-p0-0", {"target_score": 0.5})
    state.update_pair(job_id, "e0-p0-0", {"trained": True})
    state.put_checkpoint(job_id, 1, CheckpointRecord(
        version=1, key=keys["lora/v1/pytorch_lora_weights.safetensors"], epoch=0).dump())
    return keys


def test_records_link_to_proxied_objects(
    client: TestClient, acme: dict, state: RedisJobStore, api_settings: Settings, job_id: str
) -> None:
    keys = _store_records(state, api_settings, job_id)
    samples = client.get(f"/v1/jobs/{job_id}/samples", headers=acme).json()
    assert samples["count"] == 2
    s0 = samples["data"][0]
    assert (s0["id"], s0["epoch"], s0["policy_version"], s0["score"]) == ("e0-p0-s0", 0, 0, 0.75)
    assert s0["prompt"] == "a cat next to a red ball" and s0["image_direct_url"] is None
    assert samples["data"][1]["score"] is None
    image = client.get(s0["image_url"], headers=acme)
    assert image.status_code == 200 and image.content == PNG + keys["s0.png"].encode()
    assert image.headers["content-type"] == "image/png"

    [pair] = client.get(f"/v1/jobs/{job_id}/pairs", headers=acme).json()["data"]
    assert (pair["reference"], pair["base"], pair["reference_score"], pair["base_score"]) == (
        "e0-p0-s0", "e0-p0-s1", 0.75, 0.25)
    assert (pair["target_score"], pair["trained"]) == (0.5, True)  # the target's own score, kept by the filter
    for field, name in (("target_image_url", "target.png"), ("mask_url", "mask.png"), ("base_image_url", "s1.png")):
        assert client.get(pair[field], headers=acme).content == PNG + keys[name].encode()

    [ckpt] = client.get(f"/v1/jobs/{job_id}/checkpoints", headers=acme).json()["data"]
    assert ckpt["version"] == 1 and ckpt["url"].endswith("pytorch_lora_weights.safetensors")
    assert client.get(ckpt["url"], headers=acme).status_code == 200


def test_presigned_urls_on_request(client: TestClient, acme: dict, state: RedisJobStore, api_settings, job_id) -> None:
    import httpx

    _store_records(state, api_settings, job_id)
    s0 = client.get(f"/v1/jobs/{job_id}/samples?presign=true", headers=acme).json()["data"][0]
    assert s0["image_direct_url"].startswith("http")
    assert httpx.get(s0["image_direct_url"], timeout=10).content.startswith(PNG)  # straight from SeaweedFS


def test_object_proxy_refuses_other_keys(
    client: TestClient, acme: dict, globex: dict, state: RedisJobStore, api_settings: Settings, job_id: str
) -> None:
    other = client.post("/v1/jobs", json=valid_body(), headers=globex).json()["id"]
    store = open_store(api_settings)
    store.put(f"jobs/{other}/secret.png", b"theirs")
    store.put("outside.txt", b"not a job's")
    store.put(f"jobs/{job_id}/mine.png", b"mine")
    base = f"/v1/jobs/{job_id}/objects"
    assert client.get(f"{base}/jobs/{job_id}/mine.png", headers=acme).content == b"mine"
    for key in (f"jobs/{other}/secret.png", "outside.txt", f"jobs/{job_id}/%2e%2e/{other}/secret.png",
                f"jobs/{job_id}/missing.png", f"jobs/{job_id}//mine.png", f"jobs/{job_id}",
                f"jobs/{job_id}/%00", f"jobs/{job_id}/a%0Ab", f"jobs/{job_id}/" + "x" * 2000):
        assert client.get(f"{base}/{key}", headers=acme).status_code == 404, key
    assert client.get(f"/v1/jobs/{other}/objects/jobs/{other}/secret.png", headers=acme).status_code == 404
    assert client.get(f"{base}/jobs/{job_id}/mine.png").status_code == 401


def test_metrics_show_queue_depth_jobs_and_requests(client: TestClient, acme: dict, job_id: str) -> None:
    text = client.get("/metrics").text
    assert 'dfusion_queue_depth{queue="score"} 1.0' in text
    assert 'dfusion_queue_depth{queue="train"} 0.0' in text
    assert 'dfusion_jobs{status="queued"} 1.0' in text
    assert 'dfusion_api_requests_total{method="POST",route="/v1/jobs",status="202"} 1.0' in text
    assert "dfusion_redis_up 1.0" in text


def test_healthz_ok(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "redis": "ok", "storage": "ok"}


def test_openapi_docs_served(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/healthz", "/metrics"} <= set(paths)


def test_token_cli_creates_a_working_token(
    client: TestClient, api_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from cli import token
    from services.settings import get_settings

    monkeypatch.setenv("DFUSION_REDIS_URL", api_settings.redis_url)
    get_settings.cache_clear()
    try:
        parser = argparse.ArgumentParser()
        token.add_arguments(parser)
        assert token.run(parser.parse_args(["create", "--tenant", "initech"])) == 0
    finally:
        get_settings.cache_clear()
    minted = capsys.readouterr().out.strip().splitlines()[-1]
    assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {minted}"}).status_code == 200
    with pytest.raises(SystemExit):
        parser.parse_args(["create"])  # --tenant is required
