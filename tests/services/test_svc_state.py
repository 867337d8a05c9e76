"""The JobStore contract on both backends (real Redis and in memory): transitions, insert-once
records, fan-in, CAS, id checks, unknown jobs. Redis-only behaviour is in test_svc_state_redis.py."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import pytest

from dfusion_core.errors import ConfigError
from services.state import (
    InvalidTransition,
    JobExists,
    JobNotFound,
    JobStatus,
    JobStore,
    Lease,
    LeaseLost,
    StateError,
    TooManyJobs,
)
from services.telemetry import all_jobs, jobs_by_status

S = JobStatus


def test_create_and_get(store: JobStore, job: str) -> None:
    rec = store.get_job(job)
    assert (rec.job_id, rec.tenant, rec.status, rec.policy_version) == (job, "acme", S.QUEUED, 0)
    assert rec.spec == {"prompts": ["a cat"], "model": "tiny"}
    assert [j.job_id for j in store.list_jobs("acme")] == [job]
    assert store.list_jobs("other") == []
    with pytest.raises(JobExists):
        store.create_job(job, "acme", {})
    with pytest.raises(JobNotFound):
        store.get_job("nope")


def test_job_stamp_is_the_status_and_creation_time(store: JobStore, job: str) -> None:
    """What a worker reads each task instead of the whole job (it keeps specs by id and stamp)."""
    created = store.get_job(job).created_at
    assert store.job_stamp(job) == (S.QUEUED, created)
    store.set_status(job, S.RUNNING)
    assert store.job_stamp(job) == (S.RUNNING, created)
    with pytest.raises(JobNotFound):
        store.job_stamp("nope")


@pytest.mark.parametrize(
    "path",
    [
        [S.RUNNING, S.SUCCEEDED],
        [S.RUNNING, S.FAILED],
        [S.RUNNING, S.CANCELLED],
        [S.FAILED],
        [S.CANCELLED],
    ],
)
def test_allowed_transitions(store: JobStore, job: str, path: list[JobStatus]) -> None:
    for status in path:
        assert store.set_status(job, status, error="boom" if status is S.FAILED else None).status is status
    assert store.get_job(job).error == ("boom" if path[-1] is S.FAILED else None)
    assert store.is_cancelled(job) == (path[-1] is S.CANCELLED)
    assert store.active_jobs("acme") == 0


@pytest.mark.parametrize(
    "path, refused",
    [
        ([], S.SUCCEEDED),
        ([S.RUNNING], S.QUEUED),
        ([S.RUNNING, S.SUCCEEDED], S.RUNNING),
        ([S.RUNNING, S.SUCCEEDED], S.FAILED),
        ([S.CANCELLED], S.RUNNING),
        ([S.FAILED], S.SUCCEEDED),
    ],
)
def test_refused_transitions(store: JobStore, job: str, path: list[JobStatus], refused: JobStatus) -> None:
    for status in path:
        store.set_status(job, status)
    with pytest.raises(InvalidTransition) as info:
        store.set_status(job, refused)
    assert info.value.requested is refused
    assert store.get_job(job).status is (path[-1] if path else S.QUEUED)


def test_same_status_is_noop(store: JobStore, job: str) -> None:
    store.set_status(job, S.RUNNING)
    assert store.set_status(job, S.RUNNING).status is S.RUNNING


def test_concurrent_terminal_transitions_one_wins(store: JobStore, job: str) -> None:
    store.set_status(job, S.RUNNING)
    outcomes: list[str] = []

    def go(status: JobStatus) -> None:
        try:
            store.set_status(job, status)
            outcomes.append("ok")
        except InvalidTransition:
            outcomes.append("refused")

    threads = [threading.Thread(target=go, args=(s,)) for s in (S.SUCCEEDED, S.CANCELLED) * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = store.get_job(job).status
    assert final in (S.SUCCEEDED, S.CANCELLED)
    assert outcomes.count("ok") == 4  # the 4 calls that asked for `final` (same-status no-ops included)


def test_tenant_limit(store: JobStore) -> None:
    ids = [uuid.uuid4().hex for _ in range(3)]
    for job_id in ids[:2]:
        store.create_job(job_id, "t2", {}, max_active=2)
    with pytest.raises(TooManyJobs):
        store.create_job(ids[2], "t2", {}, max_active=2)
    store.set_status(ids[0], S.CANCELLED)
    store.create_job(ids[2], "t2", {}, max_active=2)
    assert store.active_jobs("t2") == 2 and store.active_job_ids("t2") == sorted(ids[1:])


def test_put_sample_idempotent(store: JobStore, job: str) -> None:
    assert store.put_sample(job, "s0", {"prompt": 0, "key": "a"})
    assert not store.put_sample(job, "s0", {"prompt": 0, "key": "CHANGED"})
    assert store.put_sample(job, "s1", {"prompt": 0})
    assert store.get_counts(job)["samples"] == 2
    assert store.list_samples(job)["s0"] == {"prompt": 0, "key": "a"}
    # first score bumps `scored`, later updates and duplicate scores do not
    assert store.update_sample(job, "s0", {"score": 0.123456789012345678})
    assert not store.update_sample(job, "s0", {"score": 0.5})
    assert not store.update_sample(job, "s1", {"note": "x"})
    assert store.update_sample(job, "s1", {"score": -1.0})
    assert store.get_counts(job) == {"samples": 2, "scored": 2, "pairs": 0, "trained_steps": 0}
    assert store.get_sample(job, "s0") == {"prompt": 0, "key": "a", "score": 0.5}
    with pytest.raises(JobNotFound):
        store.put_sample("nojob", "s0", {})


def test_batched_records_are_the_single_calls_in_one_step(store: JobStore, job: str) -> None:
    """A task writes its samples, scores and pairs in one call each (one round trip on Redis): each
    record as its single call would, counters moved by the number of first inserts / scores, and an
    update naming a missing record changes nothing."""
    assert store.put_samples(job, {}) == 0 and store.update_samples(job, {}) == 0
    assert store.put_sample(job, "s1", {"seed": 1, "key": "first"})
    assert store.put_samples(job, {"s0": {"seed": 0}, "s1": {"seed": 1, "key": "CHANGED"}, "s2": {"seed": 2}}) == 2
    assert store.list_samples(job) == {"s0": {"seed": 0}, "s1": {"seed": 1, "key": "first"}, "s2": {"seed": 2}}
    assert store.get_samples(job, ["s2", "nope", "s0"]) == [{"seed": 2}, None, {"seed": 0}]
    assert store.update_sample(job, "s0", {"score": 0.25})
    assert store.update_samples(job, {"s0": {"score": 0.5}, "s1": {"score": 0.1}, "s2": {"note": "x"}}) == 1
    with pytest.raises(StateError, match="nope"):
        store.update_samples(job, {"s2": {"score": 0.9}, "nope": {"score": 0.9}})
    assert store.get_samples(job, ["s0", "s1", "s2"]) == [{"seed": 0, "score": 0.5}, {"seed": 1, "key": "first", "score": 0.1},
                                                         {"seed": 2, "note": "x"}]
    assert store.put_pairs(job, {"p0": {"base": "s2"}, "p1": {"base": "s1"}}) == 2
    assert store.put_pairs(job, {"p1": {"base": "s0"}}) == 0
    assert store.update_pairs(job, {"p0": {"target_score": 0.7}, "p1": {"trained": True}}) == 1
    assert store.list_pairs(job) == {"p0": {"base": "s2", "target_score": 0.7}, "p1": {"base": "s1", "trained": True}}
    assert store.get_counts(job) == {"samples": 3, "scored": 2, "pairs": 2, "trained_steps": 0}
    with pytest.raises(JobNotFound):
        store.put_samples("nojob", {"s0": {}})


def test_put_sample_concurrent_duplicates(store: JobStore, job: str) -> None:
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(store.put_sample(job, "dup", {}))) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1
    assert store.get_counts(job)["samples"] == 1


def test_pairs_checkpoints_metrics(store: JobStore, job: str) -> None:
    assert store.put_pair(job, "p0", {"win": "s0", "lose": "s1"})
    assert not store.put_pair(job, "p0", {"win": "s1", "lose": "s0"})
    assert store.list_pairs(job) == {"p0": {"win": "s0", "lose": "s1"}}
    assert store.get_counts(job)["pairs"] == 1
    assert store.put_checkpoint(job, 2, {"key": "lora/2"})
    assert store.put_checkpoint(job, 1, {"key": "lora/1"})
    assert not store.put_checkpoint(job, 1, {"key": "other"})
    assert [c["key"] for c in store.list_checkpoints(job)] == ["lora/1", "lora/2"]
    store.append_metrics(job, {"epoch": 1, "reward": 0.5})
    store.append_metrics(job, {"epoch": 0, "reward": 0.1})
    store.append_metrics(job, {"epoch": 1, "reward": 0.6})  # redelivery overwrites
    assert store.get_metrics(job) == [{"epoch": 0, "reward": 0.1}, {"epoch": 1, "reward": 0.6}]
    assert store.incr_count(job, "trained_steps", 3) == 3
    with pytest.raises(ConfigError):
        store.incr_count(job, "bogus")
    with pytest.raises(ConfigError):
        store.append_metrics(job, {"reward": 1})


def test_mark_done_fires_once(store: JobStore, job: str) -> None:
    calls = ["a", "b", "a", "b", "c", "a", "c", "b"]
    fired = [store.mark_done(job, "prompt-0.scored", m, expected=3) for m in calls]
    assert fired.count(True) == 1 and fired.index(True) == 4  # the call adding "c" completes it
    assert not store.mark_done(job, "prompt-0.scored", "d", expected=3)
    assert store.done_count(job, "prompt-0.scored") == 4


def test_mark_done_concurrent(store: JobStore, job: str) -> None:
    expected, fired = 20, []
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        barrier.wait()
        for m in range(expected):  # every thread delivers every member: 8x redelivery
            if store.mark_done(job, "epoch-0", f"m{(m + i) % expected}", expected):
                fired.append(m)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fired) == 1


def test_advance_policy_cas(store: JobStore, job: str) -> None:
    assert store.policy_version(job) == 0
    assert store.advance_policy(job, expected=0, new=1)
    assert not store.advance_policy(job, expected=0, new=1)  # redelivered step
    assert store.policy_version(job) == 1
    assert store.advance_policy(job, expected=1, new=2)
    with pytest.raises(JobNotFound):
        store.advance_policy("nojob", 0, 1)


BAD_IDS = ["", "a b", "../x", "{x}", "x" * 200]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_bad_ids_rejected(store: JobStore, job: str, bad: str) -> None:
    calls = [
        lambda: store.create_job(bad, "acme", {}),
        lambda: store.create_job(uuid.uuid4().hex, bad, {}),
        lambda: store.get_job(bad),
        lambda: store.list_jobs(bad),
        lambda: store.put_sample(job, bad, {}),
        lambda: store.put_pair(job, bad, {}),
        lambda: store.mark_done(job, bad, "m", 1),
        lambda: store.done_count(job, bad),
        lambda: store.get_counts(bad),
    ]
    for call in calls:
        with pytest.raises(ConfigError):
            call()
    assert store.list_jobs("acme") == [store.get_job(job)]


def test_bad_arguments_name_the_field(store: JobStore, job: str) -> None:
    for call, field in [
        (lambda: store.incr_count(job, "bogus"), "name"),
        (lambda: store.append_metrics(job, {"reward": 1}), "metrics"),
        (lambda: store.append_metrics(job, {"epoch": -1}), "metrics"),
        (lambda: store.put_checkpoint(job, -1, {}), "version"),
        (lambda: store.mark_done(job, "scope", "m", 0), "expected"),
    ]:
        with pytest.raises(ConfigError) as info:
            call()
        assert info.value.field == field


def test_unknown_job(store: JobStore) -> None:
    """Header reads and record inserts raise JobNotFound (a StateError); per-job reads are empty."""
    for call in [
        lambda: store.get_job("nojob"),
        lambda: store.set_status("nojob", S.RUNNING),
        lambda: store.policy_version("nojob"),
        lambda: store.advance_policy("nojob", 0, 1),
        lambda: store.delete_job("nojob"),
        lambda: store.put_sample("nojob", "s0", {}),
        lambda: store.put_pair("nojob", "p0", {}),
        lambda: store.put_checkpoint("nojob", 1, {}),
        lambda: store.record_object("nojob", "jobs/nojob/x.png", 1),
    ]:
        with pytest.raises(JobNotFound) as info:
            call()
        assert isinstance(info.value, StateError)
    with pytest.raises(StateError):
        store.update_sample("nojob", "s0", {"score": 1.0})
    assert store.get_sample("nojob", "s0") is None
    assert store.list_samples("nojob") == {} and store.list_pairs("nojob") == {}
    assert store.list_checkpoints("nojob") == [] and store.get_metrics("nojob") == []
    assert store.get_counts("nojob") == {"samples": 0, "scored": 0, "pairs": 0, "trained_steps": 0}
    assert store.done_count("nojob", "x") == 0 and not store.is_cancelled("nojob")


def test_delete_job(store: JobStore, job: str) -> None:
    store.put_sample(job, "s0", {})
    store.append_metrics(job, {"epoch": 0})
    store.mark_done(job, "x", "a", 1)
    store.delete_job(job)
    with pytest.raises(JobNotFound):
        store.get_job(job)
    assert store.list_jobs("acme") == [] and store.active_jobs("acme") == 0 and "acme" not in store.list_tenants()
    assert store.list_samples(job) == {} and store.get_metrics(job) == [] and store.done_count(job, "x") == 0
    store.create_job(job, "acme", {})  # the id is free again, its fan-in too
    assert store.get_counts(job)["samples"] == 0 and store.mark_done(job, "x", "a", 1)


def test_one_set_holds_every_tenant_s_active_jobs(store: JobStore) -> None:
    """The redelivery sweep reads this one set instead of scanning Redis for tenants: a job is in
    it from its creation until it ends or is deleted, whatever its tenant."""
    a, b, c = (uuid.uuid4().hex for _ in range(3))
    store.create_job(a, "t1", {})
    store.create_job(b, "t2", {})
    store.create_job(c, "t2", {})
    assert {a, b, c} <= set(store.all_active_job_ids())
    store.set_status(a, S.RUNNING)
    store.set_status(a, S.SUCCEEDED)
    store.delete_job(b)
    assert a not in store.all_active_job_ids() and b not in store.all_active_job_ids()
    assert c in store.all_active_job_ids()
    store.commit_unit(c, "start_job")
    store.commit_unit(c, "sample-e0-p0-b0")
    assert store.committed_count(c) == 2 and store.committed_count(a) == 0


def test_list_jobs_newest_first_and_jobs_by_status(store: JobStore) -> None:
    ids = [uuid.uuid4().hex for _ in range(3)]
    for job_id in ids:
        store.create_job(job_id, "t1", {})
    store.create_job("other-job", "t2", {})
    store.set_status(ids[0], S.RUNNING)
    store.set_status(ids[1], S.CANCELLED)
    assert [j.job_id for j in store.list_jobs("t1")] == ids[::-1]
    assert {"t1", "t2"} <= set(store.list_tenants())
    tally = jobs_by_status(all_jobs(store))
    assert tally["running"] >= 1 and tally["cancelled"] >= 1 and tally["queued"] >= 2
    assert sum(tally.values()) == sum(len(store.list_jobs(t)) for t in store.list_tenants())


def test_records_come_back_as_stored_json(store: JobStore, job: str) -> None:
    """Both backends return what JSON round-trips (tuples as lists), never the caller's object."""
    record = {"shape": (1, 2), "nested": {"a": [1.5]}}
    store.put_sample(job, "s0", record)
    record["nested"]["a"].append(2.0)
    assert store.get_sample(job, "s0") == {"shape": [1, 2], "nested": {"a": [1.5]}}
    with pytest.raises(ValueError):
        store.put_sample(job, "s1", {"score": float("nan")})


# --- units of work: commits and leases ---------------------------------------------------------
def _lease(unit: str = "train-e0", token: str = "t1") -> Lease:
    return Lease(unit=unit, worker="train@host:1", task_id="task-1", since=1.5, token=token)


def test_unit_commits_once(store: JobStore, job: str) -> None:
    assert not store.unit_committed(job, "sample-e0-p0-b0")
    assert store.commit_unit(job, "sample-e0-p0-b0") is True
    assert store.commit_unit(job, "sample-e0-p0-b0") is False
    assert store.unit_committed(job, "sample-e0-p0-b0") and not store.unit_committed(job, "sample-e0-p0-b1")
    store.commit_unit(job, "start_job")
    assert store.committed_units(job) == {"start_job", "sample-e0-p0-b0"}
    with pytest.raises(ConfigError):
        store.commit_unit(job, "bad unit")


def test_lease_excludes_a_second_holder_until_released(store: JobStore, job: str) -> None:
    mine, theirs = _lease(token="a"), _lease(token="b")
    assert store.acquire_lease(job, mine, 5) is None
    assert store.acquire_lease(job, mine, 5) is None  # ours already: taken again
    assert store.acquire_lease(job, theirs, 5) == mine
    assert store.leases(job) == [mine]
    assert store.renew_lease(job, mine, 5) and not store.renew_lease(job, theirs, 5)
    store.release_lease(job, theirs)  # not theirs to release
    assert store.leases(job) == [mine]
    store.release_lease(job, mine)
    assert store.leases(job) == []
    assert store.acquire_lease(job, theirs, 5) is None


def test_lease_expires_without_renewal(store: JobStore, job: str) -> None:
    dead, next_ = _lease(token="dead"), _lease(token="next")
    assert store.acquire_lease(job, dead, 0.15) is None
    assert store.acquire_lease(job, _lease("fuse-e0-p0-c0", "other"), 5) is None
    time.sleep(0.3)
    assert [lease.unit for lease in store.leases(job)] == ["fuse-e0-p0-c0"]
    assert not store.renew_lease(job, dead, 5)
    assert store.acquire_lease(job, next_, 5) is None
    assert store.leases(job)[1] == next_


def _fenced_writes(job: str, n: int) -> list[Callable[[JobStore], object]]:
    """One call of every write a stage makes, the n-th variant of each (n changes what it writes)."""
    return [
        lambda s: s.set_status(job, [S.RUNNING, S.SUCCEEDED][n]),
        lambda s: s.incr_count(job, "trained_steps", 1 + n),
        lambda s: s.append_metrics(job, {"epoch": 0, "loss": 1.0 + n}),
        lambda s: s.advance_policy(job, n, n + 1),
        lambda s: s.put_sample(job, f"s{n}", {"seed": n}),
        lambda s: s.update_sample(job, "s0", {"score": 0.5 + n}),
        lambda s: s.put_pair(job, f"k{n}", {"base": "s0"}),
        lambda s: s.update_pair(job, "k0", {"target_score": 0.25 + n}),
        lambda s: s.put_samples(job, {f"m{n}": {"seed": n}, f"m{n + 2}": {"seed": n}}),
        lambda s: s.update_samples(job, {"s0": {"note": n}, f"m{n}": {"score": 0.1 + n}}),
        lambda s: s.put_pairs(job, {f"q{n}": {"base": "s0"}}),
        lambda s: s.update_pairs(job, {"k0": {"trained": bool(n)}, f"q{n}": {"target_score": 0.5}}),
        lambda s: s.put_checkpoint(job, 1 + n, {"key": f"lora/{1 + n}"}),
        lambda s: s.mark_done(job, "e0-p000", f"b{n}", 2),
        lambda s: s.commit_unit(job, f"sample-e0-p0-b{n}"),
        lambda s: s.record_object(job, f"jobs/{job}/e0/images/s{n}.png", 10 + n),
        lambda s: s.record_objects(job, {f"jobs/{job}/e0/images/t{n}.png": 1, f"jobs/{job}/e0/samples/t.st": 2 + n}),
    ]


def _job_state(store: JobStore, job: str) -> tuple:
    return (store.get_job(job), store.get_counts(job), store.get_metrics(job), store.list_samples(job),
            store.list_pairs(job), store.list_checkpoints(job), store.done_count(job, "e0-p000"),
            store.committed_units(job))


@pytest.mark.parametrize("loss", ["taken over", "lapsed"])
def test_fenced_writes_only_while_the_lease_is_held(store: JobStore, job: str, loss: str) -> None:
    """A stage's store, fenced by its task's lease: every write goes through while the lease is the
    task's; once it lapsed or another delivery took it, each raises LeaseLost and changes nothing."""
    mine = _lease(token="mine")
    assert store.acquire_lease(job, mine, 0.5 if loss == "lapsed" else 5) is None
    fenced = store.fenced(job, mine)
    for write in _fenced_writes(job, 0):
        write(fenced)
    assert fenced.get_job(job).policy_version == 1 and fenced.leases(job) == [mine]
    if loss == "lapsed":
        time.sleep(0.7)
    else:
        store.release_lease(job, mine)
        assert store.acquire_lease(job, _lease(token="theirs"), 5) is None
    before = _job_state(store, job)
    for write in _fenced_writes(job, 1):
        with pytest.raises(LeaseLost):
            write(fenced)
    assert _job_state(store, job) == before
    store.commit_unit(job, "sample-e0-p0-b1")  # the store it was made from is not fenced
