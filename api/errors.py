"""The one place domain errors become HTTP status codes.

Routes and services raise domain exceptions (JobNotFound, TooManyJobs, ConfigError, ...); the
handlers below map each to a status and a JSON body, so no route decides status codes for them and
nothing a client sends can surface as a 500. Validation errors name the offending field in a flat
`error` string ("prompts.0.text: ...") besides FastAPI's usual `detail` list.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from dfusion_core.errors import BlobNotFound, ConfigError, DFusionError
from services.compare import CompareNotFound, JobNotFinished, TooManyCompares
from services.retention import PurgeRefused
from services.state.types import (
    InvalidTransition,
    JobExists,
    JobNotFound,
    StateError,
    StateUnavailable,
    TooManyJobs,
)
from services.storage import StorageError

logger = logging.getLogger(__name__)


class QueueUnavailable(DFusionError):
    """The task broker could not take the message (the job was marked failed)."""


#: Most specific first: the first isinstance match wins.
STATUS_FOR: list[tuple[type[Exception], int]] = [
    (JobNotFound, 404),
    (CompareNotFound, 404),
    (JobNotFinished, 409),
    (TooManyCompares, 429),
    (PurgeRefused, 409),
    (BlobNotFound, 404),
    (TooManyJobs, 429),
    (InvalidTransition, 409),
    (JobExists, 409),
    (ConfigError, 422),
    (StateUnavailable, 503),
    (StorageError, 503),
    (QueueUnavailable, 503),
    (StateError, 500),
]


def field_path(loc: Sequence[Any]) -> str:
    """("body", "prompts", 0, "text") -> "prompts.0.text"; other sources keep their prefix ("query.x")."""
    parts = [str(p) for p in loc]
    if parts and parts[0] == "body" and len(parts) > 1:
        parts = parts[1:]
    return ".".join(parts) or "body"


def _summary(errors: Sequence[dict[str, Any]]) -> str:
    if not errors:
        return "request: invalid"
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"body: malformed JSON ({first.get('ctx', {}).get('error', 'decode error')})"
    msg = f"{field_path(first.get('loc', ()))}: {first.get('msg', 'invalid')}"
    return msg if len(errors) == 1 else f"{msg} (and {len(errors) - 1} more)"


async def validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    # ctx may hold the raised ValueError itself; keep only its message.
    for e in errors:
        if isinstance(e.get("ctx"), dict):
            e["ctx"] = {k: str(v) for k, v in e["ctx"].items()}
        e.pop("input", None)  # never echo (possibly huge) input back
        e.pop("url", None)
    return JSONResponse(status_code=422, content={"detail": jsonable_encoder(errors), "error": _summary(errors)})


async def http_handler(request: Request, exc: Exception) -> Response:
    """FastAPI's own HTTP errors, except an undecodable body (bad UTF-8), which is malformed JSON: 422."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
        errors = [{"type": "json_invalid", "loc": ["body"], "msg": "body is not UTF-8 JSON",
                   "ctx": {"error": str(exc.__cause__)}}]
        return JSONResponse(status_code=422, content={"detail": errors, "error": _summary(errors)})
    return await http_exception_handler(request, exc)


def status_for(exc: Exception) -> int:
    for cls, code in STATUS_FOR:
        if isinstance(exc, cls):
            return code
    return 500


async def domain_handler(request: Request, exc: Exception) -> JSONResponse:
    code = status_for(exc)
    if code >= 500:
        logger.warning("%s %s -> %d: %s", request.method, request.url.path, code, exc)
    content: dict[str, Any] = {"detail": str(exc)}
    if isinstance(exc, ConfigError):
        content = {
            "detail": [{"loc": ["body", exc.field], "msg": str(exc), "type": "value_error"}],
            "error": str(exc),
        }
    headers = {"Retry-After": "5"} if code in (429, 503) else None
    return JSONResponse(status_code=code, content=content, headers=headers)


async def unexpected_handler(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(status_code=500, content={"detail": "internal error"})


def install(app: FastAPI) -> None:
    """Register every handler on `app` (called once by create_app)."""
    app.add_exception_handler(RequestValidationError, validation_handler)
    app.add_exception_handler(StarletteHTTPException, http_handler)
    app.add_exception_handler(DFusionError, domain_handler)
    app.add_exception_handler(Exception, unexpected_handler)
