"""Operational endpoints: /healthz (Redis and object store reachable) and /metrics (Prometheus text).

Unauthenticated by design: they reveal no job data, and probes/scrapers carry no tokens.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from api.deps import SettingsDep, StateDep
from api.schemas import Health
from services.storage import open_store

router = APIRouter(tags=["ops"])


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
def healthz(settings: SettingsDep, state: StateDep) -> JSONResponse:
    redis_ok = storage_ok = "ok"
    try:
        state.r.ping()
    except Exception as e:  # noqa: BLE001 - any failure means "down"
        redis_ok = f"down: {type(e).__name__}"
    try:
        open_store(settings).exists("healthz/probe")
    except Exception as e:  # noqa: BLE001
        storage_ok = f"down: {type(e).__name__}"
    up = redis_ok == "ok" and storage_ok == "ok"
    body = Health(status="ok" if up else "down", redis=redis_ok, storage=storage_ok)
    return JSONResponse(status_code=200 if up else 503, content=body.model_dump())


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(request: Request, state: StateDep) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(content=request.app.state.metrics.render(state), media_type=CONTENT_TYPE_LATEST)
