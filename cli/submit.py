"""dfusion submit PROMPTS.jsonl: send a job to the API; prints the job id (the only stdout line).

The server validates the spec (same JobSpec as the workers) and its limits; a rejected field
comes back as one line naming it. Follow the job with `dfusion watch JOB`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cli.client import Client, add_api_arguments
from cli.jobargs import add_job_flags, job_body, read_prompts


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompts", type=Path, help="JSONL: one {\"text\", \"items\", \"mask_thresholds\"} object per line")
    add_job_flags(p, model_help="a model name the workers know (default: tiny)",
                  steps_help="DDIM steps (default: the server's, 20)")
    p.add_argument("--eval-prompt", action="append", default=[], dest="eval_prompts", metavar="TEXT",
                   help="a held-out prompt (repeatable; default: the shipped test split)")
    p.add_argument("--eval-seeds", type=int, default=None, help="samples per held-out prompt (default: 2)")
    p.add_argument("--watch", action="store_true", help="then follow the job as `dfusion watch` does")
    add_api_arguments(p)


def submit_body(prompts: list[dict], args: argparse.Namespace) -> dict[str, Any]:
    """The shared job body plus the held-out evaluation flags only `submit` has."""
    body = job_body(prompts, args)
    if args.eval_prompts:
        body["eval_prompts"] = args.eval_prompts
    if args.eval_seeds is not None:
        body["eval_seeds"] = args.eval_seeds
    return body


def run(args: argparse.Namespace) -> int:
    body = submit_body(read_prompts(args.prompts), args)
    with Client.from_args(args) as client:
        created = client.post_json("/v1/jobs", body, "job")
    print(f"submitted job {created['id']} ({created['status']}); follow it with: dfusion watch {created['id']}",
          file=sys.stderr)
    print(created["id"])
    if args.watch:
        from cli.watch import watch

        return watch(args, created["id"])
    return 0
