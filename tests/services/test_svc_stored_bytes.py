"""A job's ledger of stored objects on both backends (real Redis and in memory): each key counts
once at its latest size, a delete removes it, the ledger goes with the job, and a bad key or size is
refused naming the argument. (Fencing and unknown jobs: test_svc_state.py, with every other write.)"""

from __future__ import annotations

import uuid

import pytest

from dfusion_core.errors import ConfigError
from services.state import JobNotFound, JobStore


def _stored(store: JobStore, job_id: str) -> tuple[int, int]:
    rec = store.get_job(job_id)
    return rec.stored_bytes, rec.stored_objects


def test_each_object_counts_once_at_its_latest_size(store: JobStore, job: str) -> None:
    """Keyed by object: writing a key again (a redelivery, a rerun) replaces its entry, a delete
    removes it, and another job's objects are its own."""
    a, b = f"jobs/{job}/e0/images/a.png", f"jobs/{job}/e0/samples/b.safetensors"
    other = uuid.uuid4().hex
    store.create_job(other, "acme", {})
    assert _stored(store, job) == (0, 0)
    store.record_object(job, a, 100)
    store.record_object(job, b, 7)
    store.record_object(job, a, 100)  # a redelivery writes the same bytes again
    store.record_object(other, f"jobs/{other}/e0/images/a.png", 5)
    assert _stored(store, job) == (107, 2) and _stored(store, other) == (5, 1)
    store.record_object(job, a, 90)  # a rerun whose PNG compressed otherwise
    assert _stored(store, job) == (97, 2)
    store.forget_object(job, b)
    store.forget_object(job, b)  # gone already: nothing moves
    assert _stored(store, job) == (90, 1) and _stored(store, other) == (5, 1)
    assert {j.job_id: j.stored_bytes for j in store.list_jobs("acme")} == {job: 90, other: 5}


def test_a_batch_enters_each_key_as_one_write_of_it_would(store: JobStore, job: str) -> None:
    """`record_objects` (a task's batch of puts, one step): each key replaces its entry, one already
    in the ledger included, and the totals equal those of recording them one by one."""
    a, b, c = (f"jobs/{job}/e0/images/{n}.png" for n in "abc")
    store.record_object(job, a, 100)
    store.record_objects(job, {a: 40, b: 7, c: 0})
    assert _stored(store, job) == (47, 3)
    store.record_objects(job, {b: 9})  # a redelivery's batch, its PNG compressed otherwise
    store.record_objects(job, {})  # nothing landed: nothing moves
    assert _stored(store, job) == (49, 3)


def test_a_batch_with_a_bad_entry_records_none_of_it(store: JobStore, job: str) -> None:
    with pytest.raises(ConfigError) as info:
        store.record_objects(job, {f"jobs/{job}/a.png": 5, "jobs/other-job/b.png": 1})
    assert info.value.field == "key" and _stored(store, job) == (0, 0)
    with pytest.raises(JobNotFound):
        store.record_objects("nojob", {"jobs/nojob/a.png": 5})


def test_the_ledger_goes_with_the_job(store: JobStore, job: str) -> None:
    key = f"jobs/{job}/a.png"
    store.record_object(job, key, 10)
    store.delete_job(job)
    store.create_job(job, "acme", {})  # the id is free again: the old entry of `key` is gone too
    assert _stored(store, job) == (0, 0)
    store.record_object(job, key, 4)
    assert _stored(store, job) == (4, 1)


@pytest.mark.parametrize(("key", "size", "field"), [
    ("jobs/other-job/x.png", 1, "key"), ("jobs/{job}/", 1, "key"), ("x.png", 1, "key"),
    ("jobs/{job}/x.png", -1, "size"), ("jobs/{job}/x.png", 1.5, "size"),
])
def test_a_bad_key_or_size_names_the_argument(store: JobStore, job: str, key: str, size: int, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        store.record_object(job, key.format(job=job), size)
    assert info.value.field == field and _stored(store, job) == (0, 0)
