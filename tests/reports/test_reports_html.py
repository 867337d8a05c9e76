"""The shared HTML pieces' text formatting."""

from __future__ import annotations

import pytest

from reports.html import human_bytes


@pytest.mark.parametrize(("n", "text"), [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (159_111, "155.4 KiB"),
                                         (5 * 1024**3, "5.0 GiB"), (3 * 1024**6, "3072.0 PiB")])
def test_human_bytes(n: int, text: str) -> None:
    assert human_bytes(n) == text
