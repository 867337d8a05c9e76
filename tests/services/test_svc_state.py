"""Job state on the real Redis: transitions, insert-once records, fan-in, CAS, tokens."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
import redis

from dfusion_core.errors import ConfigError
from services.procs import free_port
from services.state import (
    InvalidTransition,
    JobExists,
    JobNotFound,
    JobState,
    JobStatus,
    StateUnavailable,
    TooManyJobs,
    hash_token,
)

S = JobStatus


@pytest.fixture
def state(redis_url: str) -> Iterator[JobState]:
    st = JobState.from_url(redis_url)
    yield st
    for key in st.r.scan_iter(match="dfusion:*"):
        st.r.delete(key)
    st.r.close()


@pytest.fixture
def job(state: JobState) -> str:
    job_id = uuid.uuid4().hex
    state.create_job(job_id, "acme", {"prompts": ["a cat"], "model": "tiny"})
    return job_id


def test_create_and_get(state: JobState, job: str) -> None:
    rec = state.get_job(job)
    assert (rec.job_id, rec.tenant, rec.status, rec.policy_version) == (job, "acme", S.QUEUED, 0)
    assert rec.spec == {"prompts": ["a cat"], "model": "tiny"}
    assert [j.job_id for j in state.list_jobs("acme")] == [job]
    assert state.list_jobs("other") == []
    with pytest.raises(JobExists):
        state.create_job(job, "acme", {})
    with pytest.raises(JobNotFound):
        state.get_job("nope")
    # every key naming this job or tenant is ours (the session's Redis also holds other clients' keys,
    # e.g. the pidbox replies a Celery inspect elsewhere in the session leaves behind)
    mine = [k for k in state.r.scan_iter(match="*") if job in k or "acme" in k]
    assert mine and all(k.startswith("dfusion:") for k in mine), mine


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
def test_allowed_transitions(state: JobState, job: str, path: list[JobStatus]) -> None:
    for status in path:
        assert state.set_status(job, status, error="boom" if status is S.FAILED else None).status is status
    assert state.get_job(job).error == ("boom" if path[-1] is S.FAILED else None)
    assert state.is_cancelled(job) == (path[-1] is S.CANCELLED)
    assert state.active_jobs("acme") == 0


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
def test_refused_transitions(state: JobState, job: str, path: list[JobStatus], refused: JobStatus) -> None:
    for status in path:
        state.set_status(job, status)
    with pytest.raises(InvalidTransition) as info:
        state.set_status(job, refused)
    assert info.value.requested is refused
    assert state.get_job(job).status is (path[-1] if path else S.QUEUED)


def test_same_status_is_noop(state: JobState, job: str) -> None:
    state.set_status(job, S.RUNNING)
    assert state.set_status(job, S.RUNNING).status is S.RUNNING


def test_concurrent_terminal_transitions_one_wins(state: JobState, job: str) -> None:
    state.set_status(job, S.RUNNING)
    outcomes: list[str] = []

    def go(status: JobStatus) -> None:
        try:
            state.set_status(job, status)
            outcomes.append("ok")
        except InvalidTransition:
            outcomes.append("refused")

    threads = [threading.Thread(target=go, args=(s,)) for s in (S.SUCCEEDED, S.CANCELLED) * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = state.get_job(job).status
    assert final in (S.SUCCEEDED, S.CANCELLED)
    assert outcomes.count("ok") == 4  # the 4 calls that asked for `final` (same-status no-ops included)


def test_tenant_limit(state: JobState) -> None:
    ids = [uuid.uuid4().hex for _ in range(3)]
    for job_id in ids[:2]:
        state.create_job(job_id, "t2", {}, max_active=2)
    with pytest.raises(TooManyJobs):
        state.create_job(ids[2], "t2", {}, max_active=2)
    state.set_status(ids[0], S.CANCELLED)
    state.create_job(ids[2], "t2", {}, max_active=2)
    assert state.active_jobs("t2") == 2


def test_put_sample_idempotent(state: JobState, job: str) -> None:
    assert state.put_sample(job, "s0", {"prompt": 0, "key": "a"})
    assert not state.put_sample(job, "s0", {"prompt": 0, "key": "CHANGED"})
    assert state.put_sample(job, "s1", {"prompt": 0})
    assert state.get_counts(job)["samples"] == 2
    assert state.list_samples(job)["s0"] == {"prompt": 0, "key": "a"}
    # first score bumps `scored`, later updates and duplicate scores do not
    assert state.update_sample(job, "s0", {"score": 0.123456789012345678})
    assert not state.update_sample(job, "s0", {"score": 0.5})
    assert not state.update_sample(job, "s1", {"note": "x"})
    assert state.update_sample(job, "s1", {"score": -1.0})
    assert state.get_counts(job) == {"samples": 2, "scored": 2, "pairs": 0, "trained_steps": 0}
    assert state.get_sample(job, "s0") == {"prompt": 0, "key": "a", "score": 0.5}
    with pytest.raises(JobNotFound):
        state.put_sample("nojob", "s0", {})


def test_put_sample_concurrent_duplicates(state: JobState, job: str) -> None:
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(state.put_sample(job, "dup", {}))) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1
    assert state.get_counts(job)["samples"] == 1


def test_pairs_checkpoints_metrics(state: JobState, job: str) -> None:
    assert state.put_pair(job, "p0", {"win": "s0", "lose": "s1"})
    assert not state.put_pair(job, "p0", {"win": "s1", "lose": "s0"})
    assert state.list_pairs(job) == {"p0": {"win": "s0", "lose": "s1"}}
    assert state.get_counts(job)["pairs"] == 1
    assert state.put_checkpoint(job, 2, {"key": "lora/2"})
    assert state.put_checkpoint(job, 1, {"key": "lora/1"})
    assert not state.put_checkpoint(job, 1, {"key": "other"})
    assert [c["key"] for c in state.list_checkpoints(job)] == ["lora/1", "lora/2"]
    state.append_metrics(job, {"epoch": 1, "reward": 0.5})
    state.append_metrics(job, {"epoch": 0, "reward": 0.1})
    state.append_metrics(job, {"epoch": 1, "reward": 0.6})  # redelivery overwrites
    assert state.get_metrics(job) == [{"epoch": 0, "reward": 0.1}, {"epoch": 1, "reward": 0.6}]
    assert state.incr_count(job, "trained_steps", 3) == 3
    with pytest.raises(ConfigError):
        state.incr_count(job, "bogus")
    with pytest.raises(ConfigError):
        state.append_metrics(job, {"reward": 1})


def test_mark_done_fires_once(state: JobState, job: str) -> None:
    calls = ["a", "b", "a", "b", "c", "a", "c", "b"]
    fired = [state.mark_done(job, "prompt-0.scored", m, expected=3) for m in calls]
    assert fired.count(True) == 1 and fired.index(True) == 4  # the call adding "c" completes it
    assert not state.mark_done(job, "prompt-0.scored", "d", expected=3)
    assert state.done_count(job, "prompt-0.scored") == 4


def test_mark_done_concurrent(state: JobState, job: str) -> None:
    expected, fired = 20, []
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        barrier.wait()
        for m in range(expected):  # every thread delivers every member: 8x redelivery
            if state.mark_done(job, "epoch-0", f"m{(m + i) % expected}", expected):
                fired.append(m)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fired) == 1


def test_advance_policy_cas(state: JobState, job: str) -> None:
    assert state.policy_version(job) == 0
    assert state.advance_policy(job, expected=0, new=1)
    assert not state.advance_policy(job, expected=0, new=1)  # redelivered step
    assert state.policy_version(job) == 1
    assert state.advance_policy(job, expected=1, new=2)
    with pytest.raises(JobNotFound):
        state.advance_policy("nojob", 0, 1)


def test_tokens_stored_hashed(state: JobState) -> None:
    token = state.create_token("acme")
    assert state.tenant_for_token(token) == "acme"
    assert state.tenant_for_token(token + "x") is None
    assert state.tenant_for_token("") is None
    dump = [state.r.dump(k) or b"" for k in state.r.scan_iter(match="*")]
    keys = list(state.r.scan_iter(match="*"))
    assert not any(token in k for k in keys)
    assert not any(token.encode() in d for d in dump)
    assert f"dfusion:token:{hash_token(token)}" in keys
    assert state.revoke_token(token) and state.tenant_for_token(token) is None


def test_bad_ids_rejected(state: JobState) -> None:
    for bad in ["", "a b", "../x", "{x}", "x" * 200]:
        with pytest.raises(ConfigError):
            state.create_job(bad, "acme", {})


def test_requires_decoded_client(redis_url: str) -> None:
    with pytest.raises(ConfigError):
        JobState(redis.Redis.from_url(redis_url))


def test_redis_down_is_state_unavailable() -> None:
    st = JobState.from_url(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(StateUnavailable):
        st.get_job("x")


def test_delete_job_removes_all_keys(state: JobState, job: str) -> None:
    state.put_sample(job, "s0", {})
    state.mark_done(job, "x", "a", 1)
    state.delete_job(job)
    assert not list(state.r.scan_iter(match=f"*{job}*"))
    assert state.list_jobs("acme") == [] and state.active_jobs("acme") == 0
