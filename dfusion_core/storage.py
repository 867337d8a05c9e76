"""The byte-store interface core writes checkpoints and trajectories through.

Core only defines the interface and a local-directory implementation; the service
implements it over S3 (services/storage.py). Keys are '/'-separated relative paths.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from dfusion_core.errors import BlobNotFound, ConfigError


@runtime_checkable
class BlobStore(Protocol):
    """Minimal object-store contract: whole-object put/get, existence, prefix listing."""

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...

    def put_many(self, objects: Sequence[tuple[str, bytes, str]]) -> None:
        """Put every (key, data, content type); a store may send them concurrently. Once the batch
        has begun, every put is tried and then the first failure is raised; a store that refuses the
        whole batch (a fenced one whose lease is lost) raises before any."""
        ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> list[str]: ...

    def sizes(self, prefix: str = "") -> dict[str, int]:
        """Key -> size in bytes of every object under `prefix`, as the listing gives it: no object is
        read (an audit of a job's stored bytes would otherwise move every byte the job stored)."""
        ...

    def delete(self, key: str) -> None: ...


def check_key(key: str) -> str:
    """Reject keys that could escape a store's root or that S3 would treat oddly, and keys holding
    '#': a trajectory ref is `key#member` (workers.keys.member_ref), so its first '#' must end the key
    (and a URL would cut the key there anyway)."""
    if not key or key.startswith("/") or "\\" in key:
        raise ConfigError("key", f"object key must be a non-empty relative path, got {key!r}")
    if "#" in key:
        raise ConfigError("key", f"object key must not contain '#' (it separates a key from a bundle member): {key!r}")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ConfigError("key", f"object key has an empty, '.' or '..' segment: {key!r}")
    return key


class LocalDirStore:
    """BlobStore over a local directory; writes are atomic (temp file + rename)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_many(self, objects: Sequence[tuple[str, bytes, str]]) -> None:
        # a local write is a syscall or two, not a round trip: nothing to gain from threads
        errors = []
        for obj in objects:
            try:
                self.put(*obj)
            except Exception as exc:  # noqa: BLE001 - the others still go out, as the protocol says
                errors.append(exc)
        if errors:
            raise errors[0]

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def _walk(self, prefix: str) -> Iterator[str]:
        for path in self.root.rglob("*"):
            if path.is_file() and not path.name.startswith(".tmp-"):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    yield key

    def list(self, prefix: str = "") -> list[str]:
        return sorted(self._walk(prefix))

    def sizes(self, prefix: str = "") -> dict[str, int]:
        out = {}
        for key in self.list(prefix):
            try:
                out[key] = self._path(key).stat().st_size
            except FileNotFoundError:  # deleted since the walk: no longer stored
                continue
        return out

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
