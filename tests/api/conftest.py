"""Fixtures for the API tests: an app on the test Redis db and the session's SeaweedFS, two tenants.

Every test starts from an empty job store and empty queue lists, so enqueue checks can LLEN exactly.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from api.main import create_app
from services.queue import QUEUES
from services.settings import Settings
from services.state.redis import RedisJobStore, open_state
from services.state.tokens import TokenStore, open_tokens
from tests.api.api_helpers import LIMITS


def _clean(url: str) -> None:
    r = redis.Redis.from_url(url)
    try:
        keys = list(r.scan_iter(match="dfusion:*", count=1000))
        if keys:
            r.delete(*keys)
        r.delete(*QUEUES)
    finally:
        r.close()


@pytest.fixture
def api_settings(s3_settings: Settings) -> Settings:
    return s3_settings.model_copy(update=LIMITS)


@pytest.fixture
def state(api_settings: Settings) -> Iterator[RedisJobStore]:
    _clean(api_settings.redis_url)
    yield open_state(api_settings.redis_url)
    _clean(api_settings.redis_url)


@pytest.fixture
def client(api_settings: Settings, state: RedisJobStore) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def tokens(state: RedisJobStore, api_settings: Settings) -> TokenStore:
    """API tokens on the same Redis (after `state` has cleaned it)."""
    return open_tokens(api_settings.redis_url)


@pytest.fixture
def acme(tokens: TokenStore) -> dict[str, str]:
    """Auth headers of tenant 'acme'."""
    return {"Authorization": f"Bearer {tokens.create('acme')}"}


@pytest.fixture
def globex(tokens: TokenStore) -> dict[str, str]:
    """Auth headers of another tenant, 'globex'."""
    return {"Authorization": f"Bearer {tokens.create('globex')}"}
