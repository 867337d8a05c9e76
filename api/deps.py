"""Dependencies as `Annotated[..., Depends(...)]` aliases: settings, state, tokens, store, queue, tenant, job.

Everything is resolved per request from `app.state` and built lazily, so importing `api.main`
connects to nothing, and tests swap any piece (settings, the Celery app) without monkeypatching.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from celery import Celery
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from api.errors import QueueUnavailable
from dfusion_core.errors import ConfigError
from dfusion_core.storage import BlobStore
from services import queue
from services.settings import Settings, get_settings
from services.state.redis import RedisJobStore, open_state
from services.state.tokens import TokenStore, open_tokens
from services.state.types import JobNotFound, JobRecord
from services.storage import open_store

#: Name of the cookie the web UI stores the bearer token in.
TOKEN_COOKIE = "dfusion_token"
#: Tenant of every request when `settings.auth_required` is False (embedded / dev).
DEFAULT_TENANT = "default"

_bearer = HTTPBearer(auto_error=False, description="token from `dfusion token create --tenant NAME`")
_cookie = APIKeyCookie(name=TOKEN_COOKIE, auto_error=False, description="same token, for browsers")


def settings_of(app: FastAPI) -> Settings:
    """The settings given to create_app, else the process's environment settings (read on first use)."""
    settings = getattr(app.state, "settings", None)
    if settings is None:
        settings = app.state.settings = get_settings()
    return settings


def get_app_settings(request: Request) -> Settings:
    return settings_of(request.app)


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def get_state(settings: SettingsDep) -> RedisJobStore:
    return open_state(settings.redis_url)


StateDep = Annotated[RedisJobStore, Depends(get_state)]


def get_tokens(settings: SettingsDep) -> TokenStore:
    return open_tokens(settings.redis_url)


TokensDep = Annotated[TokenStore, Depends(get_tokens)]


def get_store(settings: SettingsDep) -> BlobStore:
    """Opened on first use: S3Store checks its bucket at construction (StorageError -> 503)."""
    return open_store(settings)


StoreDep = Annotated[BlobStore, Depends(get_store)]


def get_store_factory(settings: SettingsDep) -> Callable[[], BlobStore]:
    """For routes that touch the store only sometimes (presigned URLs on request)."""
    return lambda: open_store(settings)


StoreFactoryDep = Annotated[Callable[[], BlobStore], Depends(get_store_factory)]

Enqueue = Callable[[str], None]


def get_celery(request: Request, settings: SettingsDep) -> Celery:
    """The Celery app whose broker is `settings.redis_url` (configuration only; no task bodies here)."""
    app = getattr(request.app.state, "celery", None)
    if app is None:
        app = request.app.state.celery = queue.make_app(settings)
    return app


def get_enqueue(celery: Annotated[Celery, Depends(get_celery)]) -> Enqueue:
    """A function that starts a job by sending START_JOB; broker failures become QueueUnavailable."""

    def enqueue(job_id: str) -> None:
        try:
            queue.send(celery, queue.START_JOB, job_id=job_id)
        except Exception as e:  # kombu/redis raise many types; all mean "broker did not take it"
            raise QueueUnavailable(f"could not enqueue job {job_id}: {e}") from e

    return enqueue


EnqueueDep = Annotated[Enqueue, Depends(get_enqueue)]


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": 'Bearer realm="dfusion"'})


def get_tenant(
    settings: SettingsDep,
    tokens: TokensDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    cookie: Annotated[str | None, Depends(_cookie)],
) -> str:
    """The caller's tenant from `Authorization: Bearer` or the `dfusion_token` cookie (hash lookup)."""
    if bearer is None and not cookie and settings.auth_required:
        raise _unauthorized("missing token: send 'Authorization: Bearer <token>'")
    tenant = resolve_tenant(settings, tokens, bearer, cookie)
    if tenant is None:
        raise _unauthorized("unknown token")
    return tenant


def resolve_tenant(settings: Settings, tokens: TokenStore, bearer: HTTPAuthorizationCredentials | None,
                   cookie: str | None) -> str | None:
    """The tenant a bearer token or cookie stands for (the bearer wins); None when neither is valid."""
    if not settings.auth_required:
        return DEFAULT_TENANT
    token = bearer.credentials if bearer is not None else cookie
    return tokens.tenant_for(token) if token and len(token) <= 512 else None


TenantDep = Annotated[str, Depends(get_tenant)]


def get_owned_job(job_id: str, tenant: TenantDep, state: StateDep) -> JobRecord:
    """The job if it belongs to the caller; any other case (malformed id, other tenant) is a 404."""
    try:
        job = state.get_job(job_id)
    except ConfigError:
        raise JobNotFound(job_id) from None
    if job.tenant != tenant:
        raise JobNotFound(job_id)
    return job


JobDep = Annotated[JobRecord, Depends(get_owned_job)]
