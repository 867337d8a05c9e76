"""dfusion purge JOB [JOB ...]: remove ended jobs' objects and keys through the API (your tenant's
jobs only; a queued or running job is refused with its status). `dfusion purge --expired`: purge
every tenant's jobs older than the retention period, straight against Redis and the object store
(an operator's command: it reads the service settings, DFUSION_REDIS_URL, S3_*, as the workers do).

Prints one line per job purged, with the objects and bytes it freed; exits 2 on the first job that
could not be purged.
"""

from __future__ import annotations

import argparse
import sys

from cli.client import Client, add_api_arguments
from reports.html import human_bytes


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("jobs", nargs="*", metavar="JOB", help="ids of succeeded, failed or cancelled jobs")
    p.add_argument("--expired", action="store_true",
                   help="purge every tenant's ended jobs older than --days (operators; needs Redis and S3 access)")
    p.add_argument("--days", type=float, default=None,
                   help="retention period for --expired, in days (default: DFUSION_RETENTION_DAYS)")
    add_api_arguments(p)


def run(args: argparse.Namespace) -> int:
    if args.expired == bool(args.jobs):
        print("dfusion purge: give job ids, or --expired (not both)", file=sys.stderr)
        return 2
    if args.expired:
        return _expired(args.days)
    with Client.from_args(args) as client:
        for job_id in args.jobs:
            out = client.delete_json(f"/v1/jobs/{job_id}", f"job {job_id}", purge="true")
            print(f"{out['id']} purged ({out['status']}, {out['objects']} objects, "
                  f"{human_bytes(out.get('stored_bytes', 0))})")
    return 0


def _expired(days: float | None) -> int:
    from services.retention import DAY_S, purge_expired
    from services.settings import get_settings
    from services.state.redis import open_state
    from services.storage import open_store
    from services.telemetry import Telemetry

    settings = get_settings()
    days = days if days is not None else settings.retention_days
    if days is None or days <= 0:
        print("dfusion purge --expired: give --days N or set DFUSION_RETENTION_DAYS", file=sys.stderr)
        return 2
    state = open_state(settings.redis_url)
    done = purge_expired(state, open_store(settings), days * DAY_S, forget=Telemetry(state.r).forget_job)
    for r in done:
        print(f"{r.job_id} purged ({r.tenant}, {r.status.value}, {r.objects} objects, {human_bytes(r.stored_bytes)})")
    print(f"{len(done)} jobs older than {days:g} days purged", file=sys.stderr)
    return 0
