"""Storage round trips on a real SeaweedFS and on a local dir, and error mapping."""

from __future__ import annotations

import hashlib
import urllib.request
import uuid

import pytest

from devstack.procs import free_port
from dfusion_core.errors import BlobNotFound, ConfigError, DFusionError
from dfusion_core.storage import BlobStore
from services.settings import Settings
from services.storage import (
    LocalStore,
    S3Store,
    StorageError,
    StorageRejected,
    StorageUnavailable,
    clear_store_cache,
    open_store,
    presigned_url,
)


@pytest.fixture
def s3_store(s3_settings: Settings) -> BlobStore:
    return open_store(s3_settings)


@pytest.fixture(params=["s3", "local"])
def store(request: pytest.FixtureRequest, tmp_path) -> BlobStore:
    if request.param == "s3":
        return request.getfixturevalue("s3_store")
    return open_store(Settings(storage_dir=tmp_path / "blobs"))


def test_round_trip(store: BlobStore) -> None:
    assert isinstance(store, BlobStore)
    prefix = f"jobs/{uuid.uuid4().hex}"
    payload = bytes(range(256)) * 100
    store.put(f"{prefix}/a/x.bin", payload)
    store.put(f"{prefix}/b.json", b"{}", content_type="application/json")
    assert store.get(f"{prefix}/a/x.bin") == payload
    assert store.exists(f"{prefix}/b.json")
    assert not store.exists(f"{prefix}/nope")
    assert store.list(prefix) == [f"{prefix}/a/x.bin", f"{prefix}/b.json"]
    store.put(f"{prefix}/b.json", b"[1]")  # overwrite: deterministic keys make retries idempotent
    assert store.get(f"{prefix}/b.json") == b"[1]"
    store.delete(f"{prefix}/b.json")
    store.delete(f"{prefix}/b.json")  # idempotent
    assert store.list(prefix) == [f"{prefix}/a/x.bin"]


def test_sizes_come_from_the_listing_without_reading_an_object(store: BlobStore,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = f"jobs/{uuid.uuid4().hex}"
    objects = {f"{prefix}/a/x.bin": bytes(range(256)) * 100, f"{prefix}/b.json": b"{}", f"{prefix}/empty": b""}
    for key, data in objects.items():
        store.put(key, data)
    store.put(f"{prefix}-other/c.bin", b"not under the prefix's folder")
    monkeypatch.setattr(store, "get", lambda key: pytest.fail(f"sizes read {key} back"))
    if isinstance(store, S3Store):  # nor a HEAD or GET per object behind the store's back
        for call in ("get_object", "stat_object"):
            monkeypatch.setattr(store._client, call, lambda *a, **k: pytest.fail(f"sizes sent {a}"))
    assert store.sizes(f"{prefix}/") == {k: len(v) for k, v in objects.items()}
    assert store.sizes(f"{prefix}/a/") == {f"{prefix}/a/x.bin": 25600}
    assert store.sizes(f"{prefix}/none/") == {}


def test_put_many_stores_every_object_and_raises_the_first_failure_after_the_rest(store: BlobStore) -> None:
    prefix = f"jobs/{uuid.uuid4().hex}"
    batch = [(f"{prefix}/o{i:02d}.bin", bytes([i]) * (1000 + i), "application/octet-stream") for i in range(20)]
    store.put_many(batch)
    assert store.list(prefix) == [k for k, _, _ in batch]
    assert all(store.get(k) == d for k, d, _ in batch)
    # a bad key in the middle: the batch's other objects still land, and the error names the field
    bad = [(f"{prefix}/p0.bin", b"a", "text/plain"), (f"{prefix}//p1.bin", b"b", "text/plain"),
           (f"{prefix}/p2.bin", b"c", "text/plain")]
    with pytest.raises(ConfigError, match="key"):
        store.put_many(bad)
    assert store.get(f"{prefix}/p0.bin") == b"a" and store.get(f"{prefix}/p2.bin") == b"c"


def test_missing_key_is_blob_not_found(store: BlobStore) -> None:
    with pytest.raises(BlobNotFound) as info:
        store.get(f"missing/{uuid.uuid4().hex}")
    assert isinstance(info.value, KeyError) and isinstance(info.value, DFusionError)


@pytest.mark.parametrize("key", ["../x", "/abs", "a//b", "a/./b", "", "a\\b", "a/b.safetensors#member"])
def test_bad_keys_rejected(store: BlobStore, key: str) -> None:
    with pytest.raises(ConfigError):
        store.put(key, b"x")
    with pytest.raises(ConfigError):
        store.get(key)


def test_an_object_over_one_part_is_stored_in_one_put(s3_store: S3Store) -> None:
    """minio-py splits an object over 5 MiB into parts unless told otherwise; S3 gives a multipart
    object an ETag ending in -<parts>, a single PUT the body's MD5."""
    key = f"big/{uuid.uuid4().hex}.bin"
    data = bytes(range(256)) * (6 * 1024 * 1024 // 256 + 7)  # 6 MiB and a bit
    s3_store.put(key, data)
    assert s3_store.get(key) == data
    url = presigned_url(s3_store, key, 60)
    assert url is not None
    with urllib.request.urlopen(url, timeout=60) as resp:  # a hang guard only, as below
        etag = resp.headers["ETag"].strip('"')
    assert "-" not in etag and etag == hashlib.md5(data).hexdigest()


def test_presigned_url_downloads(s3_store: S3Store) -> None:
    key = f"urls/{uuid.uuid4().hex}.txt"
    s3_store.put(key, b"hello")
    url = presigned_url(s3_store, key, 60)
    assert url is not None and url.startswith("http://")
    # a hang guard only: the local server answers in milliseconds, but not always on a loaded machine
    with urllib.request.urlopen(url, timeout=60) as resp:
        assert resp.read() == b"hello"


def test_local_store_has_no_url(tmp_path) -> None:
    store = open_store(Settings(storage_dir=tmp_path))
    assert isinstance(store, LocalStore)
    assert presigned_url(store, "a/b", 60) is None


def test_one_client_per_process(s3_settings: Settings, tmp_path) -> None:
    assert open_store(s3_settings) is open_store(s3_settings.model_copy())
    assert open_store(s3_settings) is not open_store(s3_settings.model_copy(update={"s3_bucket": "other"}))
    local = Settings(storage_dir=tmp_path)
    assert open_store(local) is open_store(local)


def test_s3_down_is_storage_unavailable() -> None:
    clear_store_cache()
    settings = Settings(s3_endpoint=f"127.0.0.1:{free_port()}", s3_access_key="k", s3_secret_key="s")
    with pytest.raises(StorageUnavailable) as info:
        open_store(settings)
    assert isinstance(info.value, StorageError)


def test_wrong_credentials_rejected(seaweed_server) -> None:
    with pytest.raises(StorageRejected):
        S3Store(seaweed_server.endpoint, seaweed_server.access_key, "wrong-secret", "dfusion-test")


def test_fan_out_reuses_its_threads_runs_nested_calls_in_place_and_keeps_the_order() -> None:
    """The process's I/O pool: a second call runs on threads the first started (none started a
    call); a call made from an I/O thread runs there instead of waiting on the pool (which could
    leave no thread for it); each item's result or error comes back in the items' order."""
    import threading

    from services.storage import IO_THREADS, each, fan_out

    def name(_: int) -> str:
        return threading.current_thread().name

    first = set(each(name, list(range(3 * IO_THREADS))))
    assert all(n.startswith("dfusion-io") for n in first) and len(first) <= IO_THREADS
    assert set(each(name, list(range(3 * IO_THREADS)))) <= {t.name for t in threading.enumerate()}
    nested = each(lambda i: each(lambda j: (i, j, name(j)), [0, 1]), list(range(IO_THREADS)))
    assert all(outer[0][2] == outer[1][2] for outer in nested)  # both inner items on the caller's thread
    assert [r[0][:2] for r in nested] == [(i, 0) for i in range(IO_THREADS)]

    def odd_fails(i: int) -> int:
        if i % 2:
            raise ValueError(f"item {i}")
        return i

    futures = fan_out(odd_fails, list(range(6)))
    assert [f.result() for f in futures[0::2]] == [0, 2, 4]
    assert [str(f.exception()) for f in futures[1::2]] == ["item 1", "item 3", "item 5"]
