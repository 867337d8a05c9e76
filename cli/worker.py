"""dfusion worker --queues sample,score,fuse,train [--device cuda:N|cpu]: one process per GPU."""

from __future__ import annotations

import argparse
import os

from services.queue import QUEUES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--queues", default=",".join(QUEUES), help=f"comma-separated subset of {','.join(QUEUES)}")
    p.add_argument("--device", default=None, help="cuda:N or cpu (default: the GPU if any)")
    p.add_argument("--loglevel", default="INFO")


def run(args: argparse.Namespace) -> int:
    from dfusion_core.errors import ConfigError

    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    bad = [q for q in queues if q not in QUEUES]
    if bad or not queues:
        raise ConfigError("queues", f"unknown queue(s) {bad}; choose from {', '.join(QUEUES)}")
    if args.device:
        os.environ["DFUSION_DEVICE"] = args.device  # read by Settings in the forked worker process
    from workers.celery_app import worker_main

    worker_main(queues, loglevel=args.loglevel)
    return 0
