"""Session-wide fixtures shared by every test package: a real Redis and a real S3 server, both started
here on free ports; and one local stack with one finished tiny job, shared by the integration, UI,
CLI, export and most reliability tests (those kill a part and wait until it is back; the stack
tests and the reliability tests that need other settings or other hosts start their own).

Kept light on purpose (no torch at import); other test packages add their own conftests.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

# `tests.infra` must import however pytest was launched (`pytest` alone does not put the repo on sys.path).
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.infra import SeaweedServer, run_redis, run_seaweed  # noqa: E402

if TYPE_CHECKING:
    from tests.integration.stack_helpers import FinishedJob, Stack


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a Redis for this test session: a private redis-server on a free loopback port, killed
    at the end, so the suite needs nothing listening on 6379.

    DFUSION_TEST_REDIS_URL uses that Redis instead; its db is flushed when the session starts.
    """
    url = os.environ.get("DFUSION_TEST_REDIS_URL")
    if url:
        import redis

        with redis.Redis.from_url(url, socket_connect_timeout=2) as client:
            client.flushdb()
        yield url
        return
    with run_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="session")
def seaweed_server() -> Iterator[SeaweedServer]:
    """One SeaweedFS (S3) per test session, in a temp dir, on free ports; killed at the end."""
    with run_seaweed() as server:
        yield server


@pytest.fixture(scope="session")
def s3_settings(seaweed_server: SeaweedServer, redis_url: str):
    """Settings pointing at the session's SeaweedFS and test Redis db."""
    return seaweed_server.settings(bucket="dfusion-test", redis_url=redis_url)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The session's local stack (own Redis and SeaweedFS, the API, a Celery worker per queue),
    started on first use: one start for every test that submits jobs and reads them back, and for
    the reliability tests that kill a part of it and check that the supervisor brought it back
    (fixture `rstack`). It also knows a model that cannot be loaded (`BROKEN_MODELS`)."""
    from tests.integration.stack_helpers import BROKEN_MODELS, running_stack

    with running_stack(tmp_path_factory.mktemp("stack"), env={"DFUSION_MODELS": json.dumps(BROKEN_MODELS)}) as s:
        yield s


@pytest.fixture(scope="session")
def tiny_job(stack: Stack) -> FinishedJob:
    """One finished tiny job (`stack_helpers.TINY_JOB`, 2 epochs) that the tests only read."""
    from tests.integration.stack_helpers import TINY_JOB, finish_job

    return finish_job(stack, TINY_JOB)
