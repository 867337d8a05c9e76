"""The reliability tests' shared stack. Faults are injected into real processes of a real stack
(own Redis with AOF, SeaweedFS, API, one Celery worker per queue under the stack supervisor);
nothing is mocked. Helpers (small jobs, task events, kills, exact outputs) are in stack_helpers.
"""

from __future__ import annotations

import json

import pytest

from tests.integration.stack_helpers import BROKEN_MODELS, Stack, running_stack


@pytest.fixture(scope="session")
def rstack(tmp_path_factory) -> Stack:
    """One stack shared by the reliability tests that leave it healthy (each test uses its own job)."""
    with running_stack(tmp_path_factory.mktemp("rstack"), env={"DFUSION_MODELS": json.dumps(BROKEN_MODELS)}) as s:
        yield s
