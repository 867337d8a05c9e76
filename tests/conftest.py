"""Session-wide fixtures shared by every test package: real Redis and a real S3 server.

Kept light on purpose (no torch at import); other test packages add their own conftests.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# `tests.infra` must import however pytest was launched (`pytest` alone does not put the repo on sys.path).
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.infra import SeaweedServer, run_seaweed  # noqa: E402

#: Redis db reserved for tests on the machine's Redis; flushed when the session starts.
TEST_REDIS_DB = 13


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the machine's Redis (127.0.0.1:6379, db 13), flushed at session start.

    Override with DFUSION_TEST_REDIS_URL. Skips the test when no Redis answers.
    """
    import redis

    url = os.environ.get("DFUSION_TEST_REDIS_URL", f"redis://127.0.0.1:6379/{TEST_REDIS_DB}")
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.flushdb()
    except redis.exceptions.ConnectionError as e:
        pytest.skip(f"no Redis at {url}: {e}")
    finally:
        client.close()
    return url


@pytest.fixture(scope="session")
def seaweed_server() -> Iterator[SeaweedServer]:
    """One SeaweedFS (S3) per test session, in a temp dir, on free ports; killed at the end."""
    with run_seaweed() as server:
        yield server


@pytest.fixture(scope="session")
def s3_settings(seaweed_server: SeaweedServer, redis_url: str):
    """Settings pointing at the session's SeaweedFS and test Redis db."""
    return seaweed_server.settings(bucket="dfusion-test", redis_url=redis_url)
