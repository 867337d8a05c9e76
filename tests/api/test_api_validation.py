"""Bad input is a 4xx naming the field, never a 500, and leaves the job store and queues untouched."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.state.redis import RedisJobStore
from tests.api.api_helpers import LIMITS, queue_len, valid_body


def _prompt(text: str = "a cat next to a red ball", items: Any = ("cat",), thresholds: Any = (0.5,)) -> dict:
    return {"text": text, "items": list(items), "mask_thresholds": list(thresholds)}


# (case id, body, field path expected at the start of `error`, words expected in it)
BAD_BODIES: list[tuple[str, Any, str, str]] = [
    ("empty prompt", valid_body(prompts=[_prompt(text="", items=(), thresholds=())]), "prompts.0.text", ""),
    ("blank prompt", valid_body(prompts=[_prompt(text="   ", items=(), thresholds=())]), "prompts.0.text", "blank"),
    ("overlong prompt", valid_body(prompts=[_prompt(text="cat " * 100)]), "prompts.0.text", "300"),
    ("item not in prompt", valid_body(prompts=[_prompt(items=("dog",))]), "prompts.0", "dog"),
    ("thresholds count", valid_body(prompts=[_prompt(thresholds=(0.5, 0.5))]), "prompts.0", "mask_thresholds"),
    ("threshold above 1", valid_body(prompts=[_prompt(thresholds=(1.5,))]), "prompts.0.mask_thresholds", "1.5"),
    ("threshold below 0", valid_body(prompts=[_prompt(thresholds=(-0.1,))]), "prompts.0.mask_thresholds", "-0.1"),
    ("no prompts", valid_body(prompts=[]), "prompts", ""),
    ("prompt without items", valid_body(prompts=[_prompt(items=(), thresholds=())]), "body", "items"),
    ("samples_per_prompt 6", valid_body(samples_per_prompt=6), "samples_per_prompt", "multiple of 4"),
    ("samples_per_prompt 0", valid_body(samples_per_prompt=0), "samples_per_prompt", ""),
    ("samples_per_prompt huge", valid_body(samples_per_prompt=10**12), "samples_per_prompt", ""),
    ("epochs huge", valid_body(epochs=10**6), "epochs", ""),
    ("too many prompts", valid_body(prompts=[_prompt()] * 300), "prompts", ""),
    ("over server sample budget", valid_body(prompts=[_prompt()] * 130), "samples_per_prompt", "512"),
    ("steps huge", valid_body(sampling={"num_steps": 10**9}), "sampling.num_steps", ""),
    ("unknown model", valid_body(model="sdxl-base"), "model", "sdxl-base"),
    ("path-like model", valid_body(model="../x"), "model", "no paths"),
    ("absolute model path", valid_body(model="/etc/passwd"), "model", ""),
    ("string for int", valid_body(samples_per_prompt="lots"), "samples_per_prompt", "integer"),
    ("float for int", valid_body(epochs=1.5), "epochs", ""),
    ("string for list", valid_body(prompts="a cat"), "prompts", ""),
    ("list for int", valid_body(seed=[]), "seed", ""),
    ("negative seed", valid_body(seed=-1), "seed", ""),
    ("unknown field", valid_body(gpus=8), "gpus", "xtra"),
    ("unknown algorithm", valid_body(training={"algorithm": "magic"}), "training.algorithm", ""),
    ("missing prompts", {"model": "tiny"}, "prompts", "required"),
    ("null body", None, "body", ""),
    ("list body", [valid_body()], "body", ""),
]


@pytest.fixture
def untouched(client: TestClient, acme: dict, state: RedisJobStore) -> Iterator[None]:
    """Asserts after the test that no job was recorded and nothing was enqueued."""
    yield
    assert state.list_jobs("acme") == []
    assert queue_len(state, "score") == 0


@pytest.mark.parametrize("body, field, words", [c[1:] for c in BAD_BODIES], ids=[c[0] for c in BAD_BODIES])
def test_bad_job_body_is_422_naming_the_field(
    client: TestClient, acme: dict, untouched: None, body: Any, field: str, words: str
) -> None:
    r = client.post("/v1/jobs", json=body, headers=acme)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error.startswith(field), error
    assert words in error, error
    assert isinstance(r.json()["detail"], list)


@pytest.mark.parametrize(
    "raw", [b"{", b'{"prompts": [}', b"\xff\xfe", b"\xb2\xe1]|\xe5", b"", b"nan", b'{"prompts": NaN}', b'{"seed": Infinity}'], ids=repr
)
def test_malformed_json_is_422(client: TestClient, acme: dict, untouched: None, raw: bytes) -> None:
    r = client.post("/v1/jobs", content=raw, headers={**acme, "Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["error"].split(".")[0].split(":")[0] in ("body", "prompts", "seed")


@pytest.mark.parametrize(
    "thresholds, training, field",
    [("[0.5]", '{"lora_alpha": Infinity}', "training.lora_alpha"),
     ("[0.5]", '{"max_grad_norm": Infinity}', "training.max_grad_norm"),
     ("[NaN]", "{}", "prompts.0.mask_thresholds")],
)
def test_non_finite_json_numbers_are_422(
    client: TestClient, acme: dict, untouched: None, thresholds: str, training: str, field: str
) -> None:
    """Python's json reads NaN/Infinity; they must not reach the store (strict JSON there) as a 500."""
    raw = f'{{"prompts": [{{"text": "a cat", "items": ["cat"], "mask_thresholds": {thresholds}}}], "training": {training}}}'
    r = client.post("/v1/jobs", content=raw.encode(), headers={**acme, "Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert field in r.json()["error"]


def test_oversized_body_is_413(client: TestClient, acme: dict, untouched: None) -> None:
    big = b'{"prompts": [], "x": "' + b"a" * LIMITS["max_body_bytes"] + b'"}'
    r = client.post("/v1/jobs", content=big, headers={**acme, "Content-Type": "application/json"})
    assert r.status_code == 413


def test_oversized_streamed_body_is_413(client: TestClient, acme: dict, untouched: None) -> None:
    """No Content-Length (chunked): the limit is enforced on the bytes as they arrive."""

    def chunks() -> Iterator[bytes]:
        yield b'{"prompts": [], "x": "'
        for _ in range(LIMITS["max_body_bytes"] // 1024 + 2):
            yield b"a" * 1024
        yield b'"}'

    r = client.post("/v1/jobs", content=chunks(), headers={**acme, "Content-Type": "application/json"})
    assert r.status_code == 413


def test_bad_query_and_paths_are_4xx(client: TestClient, acme: dict) -> None:
    job_id = client.post("/v1/jobs", json=valid_body(), headers=acme).json()["id"]
    r = client.get(f"/v1/jobs/{job_id}/samples?presign=maybe", headers=acme)
    assert r.status_code == 422 and r.json()["error"].startswith("query.presign")
    assert client.put(f"/v1/jobs/{job_id}", headers=acme).status_code == 405
    assert client.get("/v1/nothing", headers=acme).status_code == 404
