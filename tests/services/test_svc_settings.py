"""Settings come from DFUSION_* or the plain compose-style names; secrets have no default."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.settings import Settings, get_settings


def test_defaults_have_no_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("S3_ACCESS_KEY", "S3_SECRET_KEY", "DFUSION_S3_ACCESS_KEY", "DFUSION_S3_SECRET_KEY", "S3_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    s = Settings()
    assert s.s3_access_key is None and s.s3_secret_key is None and s.s3_endpoint is None
    assert s.auth_required and s.max_body_bytes == 1 << 20 and s.model_names() == ["sim", "tiny", "tiny-sdxl", "toy"]


def test_env_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3_ENDPOINT", "127.0.0.1:9000")
    monkeypatch.setenv("DFUSION_S3_SECRET_KEY", "shh")
    monkeypatch.setenv("REDIS_URL", "redis://h:1/2")
    monkeypatch.setenv("DFUSION_API_PORT", "8123")
    monkeypatch.setenv("DFUSION_MODELS", '{"sd21": "/models/sd21"}')
    s = Settings()
    assert (s.s3_endpoint, s.s3_secret_key, s.redis_url, s.api_port) == ("127.0.0.1:9000", "shh", "redis://h:1/2", 8123)
    assert s.model_names() == ["sd21", "sim", "tiny", "tiny-sdxl", "toy"]
    assert "shh" not in repr(s)
    assert (s.retention_days, s.sim_denoiser_ms) == (None, 60.0)  # keep every job; the sim's 60 ms a call
    monkeypatch.setenv("DFUSION_RETENTION_DAYS", "30")
    monkeypatch.setenv("DFUSION_SIM_DENOISER_MS", "5")
    assert (Settings().retention_days, Settings().sim_denoiser_ms) == (30.0, 5.0)


def test_get_settings_cached() -> None:
    assert get_settings() is get_settings()


def test_worker_placement(monkeypatch: pytest.MonkeyPatch) -> None:
    """The local stack's per-stage placement: `stage=N,...` or a JSON object, as the other mappings."""
    monkeypatch.delenv("DFUSION_WORKER_CONCURRENCY", raising=False)
    monkeypatch.delenv("DFUSION_WORKER_THREADS", raising=False)
    assert (Settings().worker_concurrency, Settings().worker_threads) == ({}, {})  # one child, torch_threads
    monkeypatch.setenv("DFUSION_WORKER_CONCURRENCY", " sample=2, fuse=3,")
    monkeypatch.setenv("DFUSION_WORKER_THREADS", '{"train": 2}')
    s = Settings()
    assert (s.worker_concurrency, s.worker_threads) == ({"sample": 2, "fuse": 3}, {"train": 2})
    assert Settings(worker_concurrency="", worker_threads={"score": 1}).worker_threads == {"score": 1}


@pytest.mark.parametrize(("value", "loc", "message"), [
    ("smaple=2", (), "unknown stage(s) 'smaple'; the stages are sample, score, fuse, train"),
    ("sample=0", ("sample",), "greater than 0"),
    ("train=-1", ("train",), "greater than 0"),
    ("fuse=two", ("fuse",), "valid integer"),
    ("sample", (), "write stage=N once per stage"),
    ("sample=1,sample=2", (), "write stage=N once per stage"),
    ('{"score": 0}', ("score",), "greater than 0"),
])
@pytest.mark.parametrize("field", ["worker_concurrency", "worker_threads"])
def test_bad_worker_placement_names_the_field(monkeypatch: pytest.MonkeyPatch, field: str, value: str,
                                              loc: tuple[str, ...], message: str) -> None:
    monkeypatch.setenv(f"DFUSION_{field.upper()}", value)
    with pytest.raises(ValidationError) as info:
        Settings()
    [error] = info.value.errors()
    assert error["loc"] == (field, *loc) and message in error["msg"]
