"""The audit's check of a job's stored objects (workers.audit.assert_stored) against its ledger of
stored bytes, on the stores a job writes through: sizes from the listing, no object read back."""

from __future__ import annotations

from pathlib import Path

import pytest

from dfusion_core.storage import LocalDirStore
from services.state.memory import MemoryJobStore
from workers.audit import assert_stored
from workers.embedded import JobDirStore

OBJECTS = {"jobs/j1/e0/images/a.png": b"12345", "jobs/j1/e0/samples/a.st": b"x" * 300, "jobs/j1/checkpoints/1/w": b""}


class Unreadable(LocalDirStore):
    """A store whose objects cannot be read back: the audit must not need their bodies."""

    def get(self, key: str) -> bytes:
        raise AssertionError(f"the audit read {key} back")


def _job(ledger: dict[str, int]) -> MemoryJobStore:
    state = MemoryJobStore()
    state.create_job("j1", "acme", {})
    state.record_objects("j1", ledger)
    return state


def _store(tmp_path: Path) -> Unreadable:
    store = Unreadable(tmp_path)
    for key, data in OBJECTS.items():
        store.put(key, data)
    store.put("jobs/j2/e0/images/a.png", b"another job's")
    return store


def test_the_ledger_is_checked_against_the_listing_sizes_without_reading_an_object(tmp_path: Path) -> None:
    state, store = _job({k: len(v) for k, v in OBJECTS.items()}), _store(tmp_path)
    assert store.sizes("jobs/j1/") == {k: len(v) for k, v in OBJECTS.items()}
    assert_stored(state, store, "j1", set(OBJECTS))


@pytest.mark.parametrize("ledger", [
    {**{k: len(v) for k, v in OBJECTS.items()}, "jobs/j1/e0/images/a.png": 4},  # a size off by one byte
    {k: len(v) for k, v in list(OBJECTS.items())[1:]},  # an object never entered
    {k: len(v) for k, v in OBJECTS.items()} | {"jobs/j1/e0/images/b.png": 1},  # one entered, never stored
], ids=["size", "missing-entry", "extra-entry"])
def test_a_ledger_that_differs_from_the_store_fails(tmp_path: Path, ledger: dict[str, int]) -> None:
    with pytest.raises(AssertionError):
        assert_stored(_job(ledger), _store(tmp_path), "j1", set(OBJECTS))


def test_an_object_missing_or_extra_in_the_store_fails_naming_it(tmp_path: Path) -> None:
    state, store = _job({k: len(v) for k, v in OBJECTS.items()}), _store(tmp_path)
    with pytest.raises(AssertionError, match="jobs/j1/e0/images/b.png"):
        assert_stored(state, store, "j1", {*OBJECTS, "jobs/j1/e0/images/b.png"})
    with pytest.raises(AssertionError, match="jobs/j1/checkpoints/1/w"):
        assert_stored(state, store, "j1", set(OBJECTS) - {"jobs/j1/checkpoints/1/w"})


def test_a_run_folder_lists_sizes_under_the_job_s_keys(tmp_path: Path) -> None:
    store = JobDirStore(tmp_path, "j1")
    for key, data in OBJECTS.items():
        store.put(key, data)
    assert (tmp_path / "e0" / "images" / "a.png").stat().st_size == 5
    assert store.sizes("jobs/j1/e0/") == {k: len(v) for k, v in OBJECTS.items() if k.startswith("jobs/j1/e0/")}
