"""API tokens in Redis: only each token's sha256 is stored, mapped to its tenant."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

import redis

from services.state import keys
from services.state.redis import RedisJobStore, mapped, open_state
from services.state.types import check_id


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    def __init__(self, client: redis.Redis) -> None:
        self.r: Any = client  # built with decode_responses=True, as RedisJobStore's

    @classmethod
    def from_url(cls, url: str) -> TokenStore:
        return cls(RedisJobStore.from_url(url).r)

    @mapped
    def create(self, tenant: str) -> str:
        """A new token for `tenant`; the plain token exists only in the return value."""
        token = secrets.token_urlsafe(32)
        digest = hash_token(token)
        pipe = self.r.pipeline()
        pipe.set(keys.token(digest), check_id("tenant", tenant))
        pipe.sadd(keys.tenant(tenant, "tokens"), digest)
        pipe.execute()
        return token

    @mapped
    def tenant_for(self, token: str) -> str | None:
        """The tenant `token` stands for; None for an empty or unknown token."""
        if not token:
            return None
        return self.r.get(keys.token(hash_token(token)))

    @mapped
    def revoke(self, token: str) -> bool:
        digest = hash_token(token)
        tenant = self.r.getdel(keys.token(digest))
        if tenant is None:
            return False
        self.r.srem(keys.tenant(tenant, "tokens"), digest)
        return True


def open_tokens(redis_url: str) -> TokenStore:
    """Tokens on the process's connection pool for this Redis URL (the one open_state uses)."""
    return TokenStore(open_state(redis_url).r)
