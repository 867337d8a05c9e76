"""Fixtures of the CLI tests that talk to the session's stack."""

from __future__ import annotations

import pytest


@pytest.fixture
def api_env(stack, monkeypatch):
    """The CLI's environment pointed at the session's stack, as a user sets it."""
    monkeypatch.setenv("DFUSION_API_URL", stack.api)
    monkeypatch.setenv("DFUSION_TOKEN", stack.token)
    return stack
