from __future__ import annotations

import pytest

from tests.integration.stack_helpers import running_stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """One local stack per test session, shared by the integration tests."""
    with running_stack(tmp_path_factory.mktemp("stack")) as s:
        yield s
