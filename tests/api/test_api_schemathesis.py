"""Property-based fuzzing of the whole OpenAPI schema: whatever schemathesis sends, no 5xx.

Runs in-process against the ASGI app (real Redis and SeaweedFS behind it), authenticated as one
tenant, with a bounded number of examples per operation so the whole file stays well under a minute.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest

schemathesis = pytest.importorskip("schemathesis")  # in the `test` extras

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from api.main import create_app  # noqa: E402
from services.state.redis import RedisJobStore  # noqa: E402
from services.state.tokens import TokenStore  # noqa: E402
from tests.api.api_helpers import valid_body  # noqa: E402

pytestmark = pytest.mark.slow


# Built at import without settings (the schema needs none); the fixture below points it at the
# test Redis/SeaweedFS before any request. (schemathesis' from_fixture breaks on pytest 9: no `_nodeid`.)
APP = create_app()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
# One test per operation, parametrized here rather than by `schema.parametrize()`: on pytest 9.2 its
# items all share one node id, and pytest-xdist (`make test`) runs one test per id, so ten of the
# eleven operations were never fuzzed.
OPERATIONS = [result.ok() for result in schema.get_all_operations()]


@pytest.fixture(autouse=True)
def _app_settings(api_settings, state: RedisJobStore):
    # High job cap: schemathesis creates many jobs; a 429 is fine but would hide deeper paths.
    APP.state.settings = api_settings.model_copy(update={"max_concurrent_jobs_per_tenant": 1000})
    APP.state.celery = None
    yield
    APP.state.settings = None


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: op.label)
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(data=st.data())
def test_no_server_errors(operation, data: st.DataObject, tokens: TokenStore) -> None:
    case = data.draw(operation.as_strategy())
    token = tokens.create("fuzz")
    response = case.call(headers={"Authorization": f"Bearer {token}"})
    assert response.status_code < 500, f"{case.method} {case.path} -> {response.status_code}: {response.text[:500]}"


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(key=st.text(max_size=60) | st.builds(lambda tail: f"jobs/JOB/{tail}", st.text(max_size=40)))
def test_object_keys_of_an_existing_job_never_5xx(client, acme, key: str) -> None:
    """Random keys under a real job's proxy (schemathesis only reaches unknown job ids): 200/404, never 5xx."""
    job_id = _job_for(client, acme)
    r = client.get(f"/v1/jobs/{job_id}/objects/" + quote(key.replace("JOB", job_id), safe="/"), headers=acme)
    assert r.status_code in (404, 405) or (r.status_code == 200 and key.startswith("jobs/")), (key, r.status_code)


_jobs: dict[int, str] = {}


def _job_for(client, acme) -> str:
    """One job per client (hypothesis reruns the body many times within one fixture instance)."""
    if id(client) not in _jobs:
        _jobs[id(client)] = client.post("/v1/jobs", json=valid_body(), headers=acme).json()["id"]
    return _jobs[id(client)]
