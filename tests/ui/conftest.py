"""The shared local stack and finished tiny job (see tests/ui/tinyjob.py)."""

from __future__ import annotations

import pytest

from tests.ui.tinyjob import FinishedJob, Stack, shared_job, shared_stack


@pytest.fixture(scope="session")
def ui_stack(request, tmp_path_factory) -> Stack:
    return shared_stack(request, tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_job(ui_stack) -> FinishedJob:
    return shared_job(ui_stack)
