"""The reliability tests' stack. Faults are injected into real processes of a real stack
(own Redis with AOF, SeaweedFS, API, one Celery worker per queue under the stack supervisor);
nothing is mocked there. test_rel_fanin.py and test_rel_retry.py are the exceptions: no stack, a
stand-in broker or task (their docstrings say what they check). Helpers (small jobs, task events,
kills) are in stack_helpers, the exact-output check in workers.audit.
"""

from __future__ import annotations

import pytest

from devstack.harness import Stack


@pytest.fixture(scope="session")
def rstack(stack: Stack) -> Stack:
    """The session's stack (tests/conftest.py), shared by the reliability tests that leave it healthy:
    each uses its own job, and what one kills (a worker, Redis, SeaweedFS) the supervisor restarts,
    and the test waits for that (its job can only succeed once it is back). One stack start less,
    and no second idle stack beside it; the tests after them still find the session's job."""
    return stack
