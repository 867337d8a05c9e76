"""What only the Redis backend has: its key layout, its client, its failure mode, API tokens."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import redis

from devstack.procs import free_port
from dfusion_core.errors import ConfigError
from services.state import StateError, StateUnavailable
from services.state.redis import RedisJobStore
from services.state.tokens import TokenStore, hash_token
from tests.infra import run_redis


def test_every_key_is_under_the_prefix(redis_store: RedisJobStore) -> None:
    job = uuid.uuid4().hex
    redis_store.create_job(job, "acme", {})
    redis_store.put_sample(job, "s0", {})
    redis_store.mark_done(job, "x", "a", 1)
    # every key naming this job or tenant is ours (the session's Redis also holds other clients' keys,
    # e.g. the pidbox replies a Celery inspect elsewhere in the session leaves behind)
    mine = [k for k in redis_store.r.scan_iter(match="*") if job in k or "acme" in k]
    assert mine and all(k.startswith("dfusion:") for k in mine), mine


def test_tokens_stored_hashed(redis_store: RedisJobStore) -> None:
    tokens = TokenStore(redis_store.r)
    token = tokens.create("acme")
    assert tokens.tenant_for(token) == "acme"
    assert tokens.tenant_for(token + "x") is None
    assert tokens.tenant_for("") is None
    dump = [redis_store.r.dump(k) or b"" for k in redis_store.r.scan_iter(match="*")]
    keys = list(redis_store.r.scan_iter(match="*"))
    assert not any(token in k for k in keys)
    assert not any(token.encode() in d for d in dump)
    assert f"dfusion:token:{hash_token(token)}" in keys
    assert tokens.revoke(token) and tokens.tenant_for(token) is None
    with pytest.raises(ConfigError):
        tokens.create("a b")


def test_requires_decoded_client(redis_url: str) -> None:
    with pytest.raises(ConfigError):
        RedisJobStore(redis.Redis.from_url(redis_url))


def test_redis_down_is_state_unavailable() -> None:
    st = RedisJobStore.from_url(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(StateUnavailable):
        st.get_job("x")
    with pytest.raises(StateUnavailable):
        TokenStore(st.r).tenant_for("t")


def test_delete_job_removes_all_keys(redis_store: RedisJobStore) -> None:
    job = uuid.uuid4().hex
    redis_store.create_job(job, "acme", {})
    redis_store.put_sample(job, "s0", {})
    redis_store.mark_done(job, "x", "a", 1)
    redis_store.delete_job(job)
    assert not list(redis_store.r.scan_iter(match=f"*{job}*"))


def test_redis_errors_are_state_errors(tmp_path: Path) -> None:
    """What Redis answers with an error is ours too: READONLY (a replica after a failover) is
    transient, StateUnavailable; a key of the wrong type is a StateError, not worth retrying."""
    with run_redis(tmp_path) as url, redis.Redis.from_url(url) as admin:
        st = RedisJobStore.from_url(url)
        job = uuid.uuid4().hex
        st.create_job(job, "acme", {})
        admin.set(f"dfusion:job:{{{job}}}:counts", "not a hash")
        with pytest.raises(StateError) as info:
            st.incr_count(job, "samples")
        assert not isinstance(info.value, StateUnavailable) and "WRONGTYPE" in str(info.value)
        admin.replicaof("127.0.0.1", free_port())
        with pytest.raises(StateUnavailable, match="READONLY|read only"):
            st.put_sample(job, "s0", {})
        admin.execute_command("REPLICAOF", "NO", "ONE")
