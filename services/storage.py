"""Object storage for dfusion: S3 (MinIO SDK) behind dfusion_core's `BlobStore` protocol.

Workers and the API move bytes through a `BlobStore`; which backend serves it is decided once, by
`open_store(settings)`. The MinIO SDK's and urllib3's exceptions never leave this module: they are
mapped to the small `StorageError` hierarchy below (httpx-style), so callers (and Celery's
`autoretry_for`) can tell a transient outage (`StorageUnavailable`) from a rejected request
(`StorageRejected`) or a missing object (`dfusion_core.errors.BlobNotFound`).
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import urllib3
from minio import Minio
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError
from minio.helpers import MAX_PART_SIZE, MIN_PART_SIZE

from dfusion_core.errors import BlobNotFound, DFusionError
from dfusion_core.storage import BlobStore, LocalDirStore, check_key
from services.settings import Settings

logger = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchObject", "ResourceNotFound"})
_BUCKET_RACE_CODES = frozenset({"BucketAlreadyOwnedByYou", "BucketAlreadyExists"})


class StorageError(DFusionError):
    """The object store failed; the message names the operation and key."""


class StorageUnavailable(StorageError):
    """The store could not be reached or answered 5xx: transient, worth retrying."""


class StorageRejected(StorageError):
    """The store refused the request (credentials, bucket, malformed request): retrying won't help."""


#: Seconds this thread spent in object-store calls (telemetry: a task's storage overhead).
_io = threading.local()


def io_seconds() -> float:
    return float(getattr(_io, "seconds", 0.0))


@contextmanager
def io_timer() -> Iterator[None]:
    """Count the block's wall time as this thread's storage time (for I/O fanned out to a pool,
    whose threads keep their own, uncounted totals)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        _io.seconds = io_seconds() + time.perf_counter() - started


#: Object-store calls a task keeps in flight at once: each is a round trip, and a task has a dozen.
IO_THREADS = 8

#: One pool per process for every caller (threads of a worker, the API's requests): starting 8
#: threads for each task's dozen calls cost about 1 ms of CPU a task, more than some of the calls.
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_POOL_THREADS = 4 * IO_THREADS
_POOL_PREFIX = "dfusion-io"


def _io_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_POOL_THREADS, thread_name_prefix=_POOL_PREFIX)
        return _pool


def _forget_pool() -> None:
    """In a forked child (Celery's prefork pool): the parent's threads did not come along."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


def fan_out(call: Callable[[T], R], items: Sequence[T]) -> list[Future[R]]:
    """`call` on every item, IO_THREADS at a time, in the items' order; returns once all have ended
    (none is abandoned halfway when another fails), their futures in the items' order."""
    futures: list[Future[R]] = [Future() for _ in items]
    # One call is not worth a thread hop; a call from an I/O thread runs in place, as waiting there
    # on the same pool could leave no thread to run what it waits for.
    if len(items) == 1 or threading.current_thread().name.startswith(_POOL_PREFIX):
        for item, future in zip(items, futures, strict=True):
            _settle(future, call, item)
        return futures
    todo, todo_lock = iter(enumerate(items)), threading.Lock()

    def drain() -> None:  # one of the call's IO_THREADS lanes: the next item not yet taken, until none
        while True:
            with todo_lock:
                nxt = next(todo, None)
            if nxt is None:
                return
            _settle(futures[nxt[0]], call, nxt[1])

    pool = _io_pool()
    wait([pool.submit(drain) for _ in range(min(IO_THREADS, len(items)))])
    return futures


def _settle(future: Future[R], call: Callable[[T], R], item: T) -> None:
    try:
        future.set_result(call(item))
    except BaseException as exc:  # noqa: BLE001 - handed over in the future, as a pool's work item
        future.set_exception(exc)  # does: a future left unset would block its caller's result()


def each(call: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """`fan_out`'s results in the items' order; the first item's error that failed, once all ended."""
    return [f.result() for f in fan_out(call, items)]


@contextmanager
def _mapped(op: str, key: str | None = None) -> Iterator[None]:
    """Translate SDK / transport exceptions raised inside the block into our hierarchy."""
    what = f"{op} {key!r}" if key is not None else op
    started = time.perf_counter()
    try:
        yield
    except S3Error as e:
        if e.code in _NOT_FOUND_CODES and key is not None:
            raise BlobNotFound(key) from None
        raise StorageRejected(f"{what}: S3 error {e.code}: {e.message}") from e
    except ServerError as e:
        raise StorageUnavailable(f"{what}: server error {e.status_code}") from e
    except InvalidResponseError as e:
        raise StorageUnavailable(f"{what}: invalid response: {e}") from e
    except (urllib3.exceptions.HTTPError, OSError) as e:
        raise StorageUnavailable(f"{what}: cannot reach the object store: {e}") from e
    except MinioException as e:
        raise StorageError(f"{what}: {e}") from e
    finally:
        _io.seconds = io_seconds() + time.perf_counter() - started


def _http_client() -> urllib3.PoolManager:
    """Short timeouts and few retries: a dead store must fail in seconds, the task retries later."""
    retry = urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504))
    timeout = urllib3.Timeout(connect=3.0, read=60.0)
    return urllib3.PoolManager(timeout=timeout, retries=retry, maxsize=10)


def _single_part(size: int) -> int:
    """A part as large as the object (within S3's 5 MiB..5 GiB part limits), so that a bundle over
    5 MiB (a sample task's at SD sizes: 8 x 21 latents of 4x64x64 float32, 11 MB) is one PUT, not a
    multipart upload of three requests on a pool of its own: the body is in memory already, and on
    SeaweedFS a 6 MB put took 14-15 ms of client CPU as multipart, 6.8 as one."""
    return min(max(size, MIN_PART_SIZE), MAX_PART_SIZE)


class S3Store:
    """`BlobStore` over one S3 bucket; the bucket is created at construction if missing."""

    def __init__(
        self,
        endpoint: str,
        access_key: str | None,
        secret_key: str | None,
        bucket: str,
        secure: bool = False,
    ) -> None:
        self.bucket = bucket
        self.endpoint = endpoint
        self._client = Minio(
            endpoint, access_key=access_key, secret_key=secret_key, secure=secure, http_client=_http_client()
        )
        self._ensure_bucket()

    def _ensure_bucket(self) -> None:
        with _mapped("create bucket", None):
            if self._client.bucket_exists(self.bucket):
                return
            try:
                self._client.make_bucket(self.bucket)
                logger.info("created bucket %s on %s", self.bucket, self.endpoint)
            except S3Error as e:  # another process created it between our check and make
                if e.code not in _BUCKET_RACE_CODES:
                    raise

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        check_key(key)
        with _mapped("put", key):
            self._client.put_object(self.bucket, key, io.BytesIO(data), len(data), content_type=content_type,
                                    part_size=_single_part(len(data)))
        logger.debug("put %s (%d bytes)", key, len(data))

    def put_many(self, objects: Sequence[tuple[str, bytes, str]]) -> None:
        """The puts concurrently (each is a round trip), IO_THREADS at a time."""
        each(lambda obj: self.put(*obj), objects)

    def get(self, key: str) -> bytes:
        check_key(key)
        with _mapped("get", key):
            response = self._client.get_object(self.bucket, key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

    def exists(self, key: str) -> bool:
        check_key(key)
        try:
            with _mapped("stat", key):
                self._client.stat_object(self.bucket, key)
        except BlobNotFound:
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        with _mapped("list", prefix):
            objects = self._client.list_objects(self.bucket, prefix=prefix or None, recursive=True)
            return sorted(o.object_name for o in objects if o.object_name and not o.is_dir)

    def sizes(self, prefix: str = "") -> dict[str, int]:
        """One listing (S3 returns each key's size with it, a thousand keys a request): no HEAD or GET per object."""
        with _mapped("list", prefix):
            objects = self._client.list_objects(self.bucket, prefix=prefix or None, recursive=True)
            return {o.object_name: int(o.size or 0) for o in objects if o.object_name and not o.is_dir}

    def delete(self, key: str) -> None:
        """Remove `key`; deleting a missing key is not an error (S3 semantics, same as LocalDirStore)."""
        check_key(key)
        with _mapped("delete", key):
            self._client.remove_object(self.bucket, key)

    def presigned_get_url(self, key: str, expires_s: int) -> str:
        """A URL that lets a client download `key` directly for `expires_s` seconds."""
        check_key(key)
        with _mapped("presign", key):
            return self._client.presigned_get_object(self.bucket, key, expires=timedelta(seconds=expires_s))


class LocalStore(LocalDirStore):
    """LocalDirStore that answers the URL question: no direct URL exists, the API proxies bytes."""

    def presigned_get_url(self, key: str, expires_s: int) -> str | None:
        check_key(key)
        return None


def presigned_url(store: BlobStore, key: str, expires_s: int) -> str | None:
    """Direct download URL for `key` when the backend has one, else None (serve through the API)."""
    presign = getattr(store, "presigned_get_url", None)
    return presign(key, expires_s) if presign is not None else None


_stores: dict[tuple[object, ...], BlobStore] = {}
_lock = threading.Lock()


def open_store(settings: Settings) -> BlobStore:
    """The process's store for these settings: S3 when `s3_endpoint` is set, else a local dir.

    Cached per (pid, backend parameters) so each process, including each forked worker, owns
    exactly one client and its connection pool.
    """
    if settings.s3_endpoint:
        key: tuple[object, ...] = (
            os.getpid(), "s3", settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key,
            settings.s3_bucket, settings.s3_secure,
        )
    else:
        key = (os.getpid(), "dir", str(Path(settings.storage_dir).resolve()))
    with _lock:
        store = _stores.get(key)
        if store is None:
            if settings.s3_endpoint:
                store = S3Store(
                    settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key,
                    settings.s3_bucket, settings.s3_secure,
                )
            else:
                store = LocalStore(settings.storage_dir)
            _stores[key] = store
        return store


def clear_store_cache() -> None:
    """Forget cached clients (tests that restart servers or switch settings)."""
    with _lock:
        _stores.clear()
