"""The dfusion HTTP API: `create_app(settings)` builds it; `app` is the process's instance for uvicorn.

Nothing here connects anywhere: Redis, the object store and the broker are opened on first use by
the dependencies in `api.deps`, so `import api.main` is cheap and safe (and torch-free).
Run: `uvicorn api.main:app` (settings from DFUSION_* environment variables).
"""

from __future__ import annotations

from fastapi import FastAPI

from api import errors, web, web_compare
from api.deps import settings_of
from api.metrics import ApiMetrics
from api.middleware import BodyLimitMiddleware, MetricsMiddleware
from api.routes import compare, health, jobs, objects
from services.settings import Settings

DESCRIPTION = """D-Fusion preference alignment for text-to-image diffusion, as a job queue.

Authenticate with `Authorization: Bearer <token>` (or the `dfusion_token` cookie); tokens come from
`dfusion token create --tenant NAME`. Jobs of other tenants are invisible (404).
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API; with `settings` None, the environment's settings are read on the first request."""
    app = FastAPI(title="dfusion", version="0.1.0", description=DESCRIPTION, docs_url="/docs")
    app.state.settings = settings
    app.state.celery = None  # built lazily from settings by api.deps.get_celery; tests may set their own
    app.state.metrics = ApiMetrics()
    errors.install(app)
    app.include_router(jobs.router)
    app.include_router(objects.router)
    app.include_router(compare.router)
    app.include_router(health.router)
    web.install(app)  # the web UI: /login, /, /jobs/{id}
    app.include_router(web_compare.router)  # /jobs/{id}/compare
    # Outermost last: metrics see every response, including the body limit's 413.
    app.add_middleware(BodyLimitMiddleware, max_bytes=lambda: settings_of(app).max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app


app = create_app()

__all__ = ["app", "create_app"]
