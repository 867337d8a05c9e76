"""Object proxy: a job's stored bytes (images, masks, LoRA weights) behind the same tenant check.

Browsers cannot send the bearer header to a presigned S3 URL's host and the local-dir store has no
URLs at all, so the API serves objects itself. Only keys under `jobs/{id}/` of a job the caller owns
are served; anything else is the same 404 as a missing object, so nothing leaks about other keys.
"""

from __future__ import annotations

import mimetypes

from fastapi import APIRouter, Response

from api.deps import JobDep, StoreDep
from dfusion_core.errors import BlobNotFound, ConfigError
from dfusion_core.storage import check_key

router = APIRouter(prefix="/v1/jobs", tags=["objects"])


@router.get(
    "/{job_id}/objects/{key:path}",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}, "image/png": {}}, "description": "the object's bytes"}},
)
def get_object(job: JobDep, key: str, store: StoreDep) -> Response:
    # Control characters and over-long keys cannot name a stored object; S3 would reject them (a 503).
    if not key.startswith(f"jobs/{job.job_id}/") or len(key.encode()) > 1024 or not key.isprintable():
        raise BlobNotFound(key)
    try:
        check_key(key)
    except ConfigError:
        raise BlobNotFound(key) from None
    data = store.get(key)
    media_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
    headers = {"Cache-Control": "private, max-age=60", "X-Content-Type-Options": "nosniff"}
    return Response(content=data, media_type=media_type, headers=headers)
