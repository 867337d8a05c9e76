"""Operational endpoints: /healthz/live, /healthz (ready) and /metrics (Prometheus text).

Live means the process serves requests; ready means it can do its work: Redis and the object store
answer. A live API that is not ready answers /healthz with 503 and says which dependency is down,
so a probe tells "restart me" (no answer) from "wait for my dependencies" (503). `dfusion stack up`
and compose's healthcheck wait on /healthz.

Unauthenticated by design: they reveal no job data, and probes/scrapers carry no tokens.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from api.deps import SettingsDep, StateDep
from api.schemas import Health
from services.storage import open_store

router = APIRouter(tags=["ops"])

#: Health.status of a live API whose dependencies are not all reachable (HTTP 503).
NOT_READY = "live, not ready"


@router.get("/healthz/live")
def live() -> dict[str, str]:
    """Liveness: answers while the process serves, whatever Redis and the object store do."""
    return {"status": "live"}


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
def healthz(settings: SettingsDep, state: StateDep) -> JSONResponse:
    """Readiness: 200 when Redis and the object store are reachable, else 503 naming the one down."""
    redis_ok = storage_ok = "ok"
    try:
        state.r.ping()
    except Exception as e:  # noqa: BLE001 - any failure means "down"
        redis_ok = f"down: {type(e).__name__}"
    try:
        open_store(settings).exists("healthz/probe")
    except Exception as e:  # noqa: BLE001
        storage_ok = f"down: {type(e).__name__}"
    ready = redis_ok == "ok" and storage_ok == "ok"
    body = Health(status="ok" if ready else NOT_READY, redis=redis_ok, storage=storage_ok)
    return JSONResponse(status_code=200 if ready else 503, content=body.model_dump())


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(request: Request, state: StateDep) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(content=request.app.state.metrics.render(state), media_type=CONTENT_TYPE_LATEST)
