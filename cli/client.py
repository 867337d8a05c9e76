"""The HTTP client the remote commands share (submit, watch, pairs, checkpoint, export); torch-free.

Base URL from `--api` or DFUSION_API_URL, token from `--token` or DFUSION_TOKEN. Every failure
becomes one `ApiError` whose message says what went wrong and what to do; `cli.main` prints it on
one line and exits 2. (httpx's own errors are wrapped here, as httpx wraps its transport's.)
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import httpx

from dfusion_core.errors import DFusionError

DEFAULT_API = "http://127.0.0.1:8000"


class ApiError(DFusionError):
    """A request to the dfusion API failed; `status` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        self.status = status
        super().__init__(message)


def add_api_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--api", default=None, metavar="URL",
                   help=f"API base URL (default: $DFUSION_API_URL or {DEFAULT_API})")
    p.add_argument("--token", default=None,
                   help="API token (default: $DFUSION_TOKEN); create one with `dfusion token create --tenant NAME`")


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200] or response.reason_phrase
    if isinstance(body, dict):
        if isinstance(body.get("error"), str):
            return body["error"]
        detail = body.get("detail")
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):
            return str(detail[0].get("msg", detail[0]))
        if detail is not None:
            return str(detail)
    return str(body)[:200]


class Client:
    """A few typed calls over httpx; use as a context manager."""

    def __init__(self, api: str | None = None, token: str | None = None, timeout_s: float = 30.0) -> None:
        self.api = (api or os.environ.get("DFUSION_API_URL") or DEFAULT_API).rstrip("/")
        token = token or os.environ.get("DFUSION_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.api, headers=headers, timeout=timeout_s)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Client:
        return cls(args.api, args.token)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def _request(self, method: str, path: str, what: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError:
            raise ApiError(f"cannot reach the dfusion API at {self.api} (connection refused); "
                           "start it (`dfusion stack up`) or pass --api / set DFUSION_API_URL") from None
        except httpx.TimeoutException:
            raise ApiError(f"the dfusion API at {self.api} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise ApiError(f"request to {self.api}{path} failed: {exc}") from None
        if response.is_success:
            return response
        code, detail = response.status_code, _detail(response)
        if code == 401:
            msg = f"not authenticated ({detail}): pass --token or set DFUSION_TOKEN"
        elif code == 404:
            msg = f"{what} not found (or it belongs to another tenant)"
        elif code == 422:
            msg = f"{what} rejected: {detail}"
        else:
            msg = f"{what}: HTTP {code}: {detail}"
        raise ApiError(msg, code)

    def get_json(self, path: str, what: str) -> dict[str, Any]:
        return self._request("GET", path, what).json()

    def post_json(self, path: str, body: dict[str, Any], what: str) -> dict[str, Any]:
        return self._request("POST", path, what, json=body).json()

    def get_bytes(self, url: str, what: str) -> bytes:
        """The bytes at `url` (a proxy path)."""
        return self._request("GET", url, what).content

    def delete_json(self, path: str, what: str, **params: Any) -> dict[str, Any]:
        return self._request("DELETE", path, what, params=params).json()

    def download(self, url: str, dest: Path, what: str) -> int:
        """Write the bytes at `url` (a proxy path) to `dest`; returns their size."""
        data = self._request("GET", url, what).content
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        return len(data)

    # --- typed calls ---
    def job(self, job_id: str) -> dict[str, Any]:
        return self.get_json(f"/v1/jobs/{_job_path(job_id)}", f"job {job_id}")

    def records(self, job_id: str, kind: str) -> list[dict[str, Any]]:
        return self.get_json(f"/v1/jobs/{_job_path(job_id)}/{kind}", f"job {job_id}")["data"]

    def compare(self, job_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Start a compare of the job's policy with its base: {"id", "status", "url"}."""
        return self.post_json(f"/v1/jobs/{_job_path(job_id)}/compare", body, f"compare for job {job_id}")


def _job_path(job_id: str) -> str:
    if not job_id or "/" in job_id or job_id.strip() != job_id:
        raise ApiError(f"{job_id!r} is not a job id (the id `dfusion submit` printed)")
    return job_id
