"""The vendored chart scripts are served by the API itself, offline, and nothing else is."""

from __future__ import annotations

from fastapi.testclient import TestClient

from reports import charts


def test_the_chart_scripts_are_served_and_nothing_beside_them() -> None:
    from api.main import app

    with TestClient(app) as client:
        for name in charts.VENDOR_FILES:
            r = client.get(f"{charts.VENDOR_URL}/{name}")
            assert r.status_code == 200 and "javascript" in r.headers["content-type"]
            assert r.content == (charts.vendor_dir() / name).read_bytes()
        assert client.get(f"{charts.VENDOR_URL}/../charts.py").status_code == 404
        assert client.get(f"{charts.VENDOR_URL}/missing.js").status_code == 404
