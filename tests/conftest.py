"""Session-wide fixtures shared by every test package: a real Redis and a real S3 server, both started
here on free ports; and one local stack with one finished tiny job, shared by the integration, UI,
CLI, export and most reliability tests (those kill a part and wait until it is back; the stack
tests and the reliability tests that need other settings or other hosts start their own).

Kept light on purpose (no torch at import); other test packages add their own conftests.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
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


class _EarlyStack:
    """The session's stack, started in a background thread before collection for the whole suite,
    else as soon as collection shows that a test will use it, with the shared tiny job submitted
    right away when a test will read it: collection, the API tests and the first CLI tests run
    meanwhile, instead of the session waiting ~40 s (worker start and the job's compute) at the
    first `tiny_job`. The fixtures below wait for it; nothing is checked here, and a failed start
    is raised by the `stack` fixture."""

    def __init__(self, root: Path, submit_tiny_job: bool) -> None:
        self.root, self.submit_tiny_job = root, submit_tiny_job
        self.stack: Stack | None = None
        self.tiny_job_id: str | None = None
        self.error: BaseException | None = None
        self._cm: contextlib.AbstractContextManager[Stack] | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._start, name="early-session-stack", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        from tests.integration.stack_helpers import TINY_JOB

        try:
            self._cm = _session_stack(self.root)
            self.stack = self._cm.__enter__()
            if self.submit_tiny_job:
                self.tiny_job_id = self.stack.submit(TINY_JOB)
        except BaseException as e:  # noqa: BLE001 - handed to the fixture, raised there
            self.error = e

    def wait(self) -> Stack:
        self._thread.join()
        if self.error is not None:
            raise RuntimeError(f"the session stack did not start: {self.error!r}") from self.error
        assert self.stack is not None
        return self.stack

    def close(self) -> None:
        """Kill the stack (idempotent; also at session end when no test ended up using it)."""
        if self._closed:
            return
        self._closed = True
        self._thread.join()
        if self._cm is not None and self.stack is not None:
            self._cm.__exit__(None, None, None)


_early: _EarlyStack | None = None


def _session_stack(root: Path) -> contextlib.AbstractContextManager[Stack]:
    from tests.integration.stack_helpers import BROKEN_MODELS, running_stack

    return running_stack(root, env={"DFUSION_MODELS": json.dumps(BROKEN_MODELS)})


def _start_early(config: pytest.Config, submit_tiny_job: bool) -> _EarlyStack:
    root = config._tmp_path_factory.mktemp("stack")  # type: ignore[attr-defined]  # = tmp_path_factory
    early = _EarlyStack(root, submit_tiny_job)
    config.add_cleanup(early.close)
    return early


def _whole_suite(config: pytest.Config) -> bool:
    """This run is the whole suite (`make test`: only the tests folder or the repository as paths, no
    -k): it will need the session's stack and job, and collecting (~12 s of imports) can overlap
    their start."""
    if config.option.collectonly or config.option.keyword:
        return False
    tests_dir = Path(__file__).resolve().parent
    args = config.args or [str(config.rootpath)]
    return all((config.invocation_params.dir / a).resolve() in (tests_dir, tests_dir.parent) for a in args)


def pytest_sessionstart(session: pytest.Session) -> None:
    global _early
    if _early is None and _whole_suite(session.config):
        _early = _start_early(session.config, submit_tiny_job=True)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the stack now if a collected test will use it (and it was not started already); kill an
    early one that no collected test uses (e.g. all deselected)."""
    global _early
    if session.config.option.collectonly:
        return
    names = {name for item in session.items for name in getattr(item, "fixturenames", ())}
    needed = "stack" in names or "rstack" in names or "tiny_job" in names
    if _early is not None and not needed:
        _early.close()
        _early = None
    elif _early is None and needed:
        _early = _start_early(session.config, submit_tiny_job="tiny_job" in names)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The session's local stack (own Redis and SeaweedFS, the API, a Celery worker per queue),
    started once (early, in the background: `_EarlyStack`): one start for every test that submits
    jobs and reads them back, and for the reliability tests that kill a part of it and check that
    the supervisor brought it back (fixture `rstack`). It also knows a model that cannot be loaded
    (`BROKEN_MODELS`)."""
    if _early is not None:
        try:
            yield _early.wait()
        finally:
            _early.close()
        return
    with _session_stack(tmp_path_factory.mktemp("stack")) as s:
        yield s


@pytest.fixture(scope="session")
def tiny_job(stack: Stack) -> FinishedJob:
    """One finished tiny job (`stack_helpers.TINY_JOB`, 2 epochs) that the tests only read; submitted
    when the stack started, if the session knew by then that a test reads it."""
    from tests.integration.stack_helpers import TINY_JOB, finish_job

    early_id = _early.tiny_job_id if _early is not None and _early.stack is stack else None
    return finish_job(stack, TINY_JOB, job_id=early_id)
