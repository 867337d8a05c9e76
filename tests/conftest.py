"""Session-wide fixtures shared by every test package: a real Redis and a real S3 server, both started
here on free ports; and one local stack with one finished tiny job, shared by the integration, UI,
CLI, export and most reliability tests (those kill a part and wait until it is back; the stack
tests and the reliability tests that need other settings or other hosts start their own).

Under pytest-xdist (`make test` runs `-n 2 --dist loadgroup`) the tests that use the shared stack
form one group that runs in one worker, in order, as in a serial run (the reliability tests kill
parts of that stack, so no other test may use it meanwhile); every other test file is a unit of its
own that either worker takes. The controller starts the shared stack while the workers collect and
hands it to the worker that runs the group (`_Handoff`).

Kept light on purpose (no torch at import); other test packages add their own conftests.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

# Torch's default is one thread per core in every process. Two xdist workers on two cores, each
# with two OpenMP threads, oversubscribe the cores: two golden checks side by side took 69.6 s
# with two threads each and 19.5 s with one (`time` of two `dfusion golden-check` in parallel).
# So each worker takes its share, before torch loads; subprocesses (the CLI, embedded runs)
# inherit it. Only workers set it (the controller's environment is what they inherit), and a
# value the user set wins.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _share = (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _share)))
    if "torch" in sys.modules:  # a plugin loaded it first: its pool has already read the environment
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# `tests.infra` must import however pytest was launched (`pytest` alone does not put the repo on sys.path).
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.infra import SeaweedServer, run_redis, run_seaweed  # noqa: E402

if TYPE_CHECKING:
    from devstack.harness import Stack
    from tests.integration.stack_helpers import FinishedJob


def _worker_db(url: str) -> str:
    """`url` with its db number moved by this xdist worker's index (gw1: db + 1)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    base, _, db = url.rstrip("/").rpartition("/")
    if not db.isdigit():
        base, db = url.rstrip("/"), "0"
    return f"{base}/{int(db) + int(worker.removeprefix('gw'))}"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a Redis for this test session: a private redis-server on a free loopback port, killed
    at the end, so the suite needs nothing listening on 6379.

    DFUSION_TEST_REDIS_URL uses that Redis instead; its db is flushed when the session starts
    (under xdist, worker gwN uses db + N, so the workers do not flush each other's keys).
    """
    url = os.environ.get("DFUSION_TEST_REDIS_URL")
    if url:
        import redis

        url = _worker_db(url)

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
    is raised by the `stack` fixture. Under xdist it runs in the controller, and `handoff` is
    where it leaves the started stack for the workers."""

    def __init__(self, root: Path, submit_tiny_job: bool, handoff: _Handoff | None = None) -> None:
        self.root, self.submit_tiny_job, self.handoff = root, submit_tiny_job, handoff
        self.stack: Stack | None = None
        self.tiny_job_id: str | None = None
        self.error: BaseException | None = None
        self._cm: contextlib.AbstractContextManager[Stack] | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._start, name="early-session-stack", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        from devstack.harness import TINY_JOB

        try:
            self._cm = _session_stack(self.root)
            self.stack = self._cm.__enter__()
            if self.submit_tiny_job:
                self.tiny_job_id = self.stack.submit(TINY_JOB)
        except BaseException as e:  # noqa: BLE001 - handed to the fixture, raised there
            self.error = e
        if self.handoff is not None:
            self.handoff.write(self.stack, self.tiny_job_id, self.error)

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


def _write_atomically(path: Path, data: bytes) -> None:
    """Readers in other processes see the whole file or none (a per-process temp file, renamed)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


class _Handoff:
    """A file through which the xdist controller hands its started session stack (and the tiny job's
    id) to the worker that runs the stack's tests: a `Stack` is plain data (its folder, settings,
    addresses, token), so the worker drives the same processes; the controller kills them when the
    whole run ends. Written once, atomically (rename), with the start's error instead if it failed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, stack: Stack | None, tiny_job_id: str | None, error: BaseException | None) -> None:
        _write_atomically(self.path, pickle.dumps({"stack": stack, "tiny_job_id": tiny_job_id,
                                                   "error": None if error is None else repr(error)}))

    def read(self, worker: str, timeout_s: float = 600) -> tuple[Stack, str | None]:
        """The handed-over stack, for `worker` alone: a second worker asking for it means the
        scheduler split the stack's tests, and they would kill parts of it under each other."""
        owner = self.path.with_suffix(".owner")
        try:
            with open(owner, "x") as f:
                f.write(worker)
        except FileExistsError:
            if (first := owner.read_text()) != worker:
                raise RuntimeError(f"the session stack's tests run in {first} and {worker}: they must "
                                   "stay in one worker (tests/conftest.py, _StackGroup)") from None
        deadline = time.monotonic() + timeout_s
        while not self.path.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the controller's session stack was not handed over within {timeout_s:.0f} s")
            time.sleep(0.2)
        got = pickle.loads(self.path.read_bytes())
        if got["error"] is not None:
            raise RuntimeError(f"the session stack did not start: {got['error']}")
        return got["stack"], got["tiny_job_id"]


_early: _EarlyStack | None = None
_STACK_FIXTURES = ("stack", "rstack", "tiny_job", "xl_tracked_job")
_STACK_GROUP = "session-stack"
_HANDOFF_KEY = "dfusion_session_stack"
_GROUP_KEY = "dfusion_session_stack_tests"


def _uses_stack(item: pytest.Item) -> bool:
    return any(name in _STACK_FIXTURES for name in getattr(item, "fixturenames", ()))


def _session_stack(root: Path) -> contextlib.AbstractContextManager[Stack]:
    from devstack.harness import running_stack
    from tests.integration.stack_helpers import BROKEN_MODELS

    return running_stack(root, env={"DFUSION_MODELS": json.dumps(BROKEN_MODELS)})


def _start_early(config: pytest.Config, submit_tiny_job: bool, handoff: _Handoff | None = None) -> _EarlyStack:
    root = config._tmp_path_factory.mktemp("stack")  # type: ignore[attr-defined]  # = tmp_path_factory
    early = _EarlyStack(root, submit_tiny_job, handoff)
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


def _xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _xdist_controller(config: pytest.Config) -> bool:
    return config.pluginmanager.has_plugin("dsession")


@pytest.hookimpl(tryfirst=True)  # before xdist's own sessionstart starts the workers (pytest_configure_node)
def pytest_sessionstart(session: pytest.Session) -> None:
    global _early
    config = session.config
    if _early is None and not _xdist_worker(config) and _whole_suite(config):
        handoff = None
        if _xdist_controller(config):
            handoff = _Handoff(config._tmp_path_factory.getbasetemp() / "session-stack.pickle")  # type: ignore[attr-defined]
        _early = _start_early(config, submit_tiny_job=True, handoff=handoff)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:  # noqa: ANN001 - xdist's WorkerController
    """xdist (controller): tell each worker where the early stack will be handed over, and where to
    write which of its tests use the shared stack (`_StackGroup`)."""
    node.workerinput[_GROUP_KEY] = str(_StackGroup.path(node.config))
    if _early is not None and _early.handoff is not None:
        node.workerinput[_HANDOFF_KEY] = str(_early.handoff.path)


class _StackGroup:
    """The ids of the collected tests that use the shared stack, written by each xdist worker when it
    has collected (before it reports its collection) and read by the controller's scheduler.
    xdist's own channel for `xdist_group` (a suffix on the node id) is lost on pytest 9.2
    (pytest-xdist issue 1386: tests of one group then run in both workers at once), so the
    grouping here does not depend on it."""

    @staticmethod
    def path(config: pytest.Config) -> Path:
        return config._tmp_path_factory.getbasetemp() / "session-stack-tests.json"  # type: ignore[attr-defined]

    @staticmethod
    def write(path: Path, nodeids: list[str]) -> None:
        # every worker collects the same tests: the last writer wins, with the same content
        _write_atomically(path, json.dumps(nodeids).encode())

    @staticmethod
    def read(path: Path) -> set[str]:
        return set(json.loads(path.read_text())) if path.exists() else set()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):  # noqa: ANN001, ANN201 - xdist's types
    """`--dist loadgroup`: the session stack's tests are one unit; any other test file is one unit
    too, not each test, so a module's fixtures (an embedded run, a stack of its own) are built
    once, in one worker."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    group_file = _StackGroup.path(config)

    class FileOrGroupScheduling(LoadGroupScheduling):
        _stack_tests: set[str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self._stack_tests is None:  # first call: every worker has collected (and written)
                self._stack_tests = _StackGroup.read(group_file)
            if nodeid in self._stack_tests:
                return _STACK_GROUP
            group = super()._split_scope(nodeid)  # an xdist_group mark, where xdist still carries it
            return group if group != nodeid else nodeid.split("::", 1)[0]

    return FileOrGroupScheduling(config, log)


@pytest.hookimpl(trylast=True)  # after -k/-m deselection
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse tests that share a node id (pytest-xdist runs one of them, silently); under xdist, write
    which tests use the shared stack for the controller's scheduler."""
    twice = sorted(nodeid for nodeid, n in Counter(item.nodeid for item in items).items() if n > 1)
    if twice:
        raise pytest.UsageError(f"tests share a node id (pytest-xdist would run only one of each): {twice[:5]}")
    group_file = getattr(config, "workerinput", {}).get(_GROUP_KEY)
    if group_file:
        _StackGroup.write(Path(group_file), [item.nodeid for item in items if _uses_stack(item)])


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the stack now if a collected test will use it (and it was not started already); kill an
    early one that no collected test uses (e.g. all deselected). An xdist worker collects every
    test but runs only some: its stack, if it needs one, comes from the controller or, when the
    controller started none, from the `stack` fixture."""
    global _early
    if session.config.option.collectonly or _xdist_worker(session.config):
        return
    needed = any(_uses_stack(item) for item in session.items)
    if _early is not None and not needed:
        _early.close()
        _early = None
    elif _early is None and needed:
        reads_job = any("tiny_job" in getattr(item, "fixturenames", ()) for item in session.items)
        _early = _start_early(session.config, submit_tiny_job=reads_job)


_handed: tuple[Stack, str | None] | None = None


@pytest.fixture(scope="session")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The session's local stack (own Redis and SeaweedFS, the API, a Celery worker per queue),
    started once (early, in the background: `_EarlyStack`): one start for every test that submits
    jobs and reads them back, and for the reliability tests that kill a part of it and check that
    the supervisor brought it back (fixture `rstack`). It also knows a model that cannot be loaded
    (`BROKEN_MODELS`)."""
    global _handed
    handoff = getattr(request.config, "workerinput", {}).get(_HANDOFF_KEY)
    if handoff:
        _handed = _Handoff(Path(handoff)).read(os.environ.get("PYTEST_XDIST_WORKER", "?"))
        yield _handed[0]
        return
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
    """One finished tiny job (`devstack.harness.TINY_JOB`, 2 epochs) that the tests only read; submitted
    when the stack started, if the session knew by then that a test reads it."""
    from devstack.harness import TINY_JOB
    from tests.integration.stack_helpers import finish_job

    if _handed is not None:
        early_id = _handed[1]
    else:
        early_id = _early.tiny_job_id if _early is not None and _early.stack is stack else None
    return finish_job(stack, TINY_JOB, job_id=early_id)
